"""Parse source SPEC strings (``serial:...``, ``replay:...``) into typed settings.

Parsing is separate from opening so a config can be validated (on start and on reload) without
touching a port or loading a data set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from ..errors import ConfigError

# 8N1 at 115200 is what any UART speaks without configuration; ~14 MNIST frames/s. Raise it with
# ?baud= (921600 gives ~110 frames/s); USB CDC-ACM sensors ignore it.
DEFAULT_BAUD = 115200
MNIST_TEST = "mnist-test"
VALID_FORMS = (
    "serial:PORT_OR_PYSERIAL_URL[?baud=N&rate=HZ] (e.g. serial:/dev/ttyUSB0?baud=921600&rate=30,"
    " serial:socket://HOST:PORT)"
    f" or replay:FRAMES.npy|{MNIST_TEST}[?rate=HZ&loop=1]"
)


@dataclass(frozen=True)
class SerialSpec:
    url: str  # a device path or any pyserial URL (loop://, socket://, rfc2217://...)
    baudrate: int = DEFAULT_BAUD
    rate: float | None = None  # frames per second the sensor sends; None: unknown (staleness not judged)


@dataclass(frozen=True)
class ReplaySpec:
    path: str  # an .npy file of uint8 (N, H, W[, C]) frames, or MNIST_TEST
    rate: float | None = None  # frames per second; None: as fast as the consumer takes them
    loop: bool = False


SourceSpec = SerialSpec | ReplaySpec


def parse_source_spec(spec: str) -> SourceSpec:
    """Parse ``spec``; raises ConfigError naming the valid forms."""
    kind, sep, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    if not sep or not target or kind not in _PARSERS:
        raise _bad(spec, "")
    try:
        params = _params(query)
    except ValueError as error:
        raise _bad(spec, f"{error}; ") from None
    return _PARSERS[kind](spec, target, params)


def _parse_serial(spec: str, target: str, params: dict[str, str]) -> SerialSpec:
    baud = params.pop("baud", str(DEFAULT_BAUD))
    if not baud.isdigit() or int(baud) <= 0:
        raise _bad(spec, f"baud must be a positive integer, got {baud!r}; ")
    rate = _rate(spec, params.pop("rate")) if "rate" in params else None
    if params:
        if "://" not in target:
            raise _bad(spec, f"unknown option(s) {', '.join(sorted(params))} (serial takes baud, rate); ")
        # Other options belong to the pyserial URL handler (e.g. socket://h:p?logging=debug).
        target = f"{target}?{urlencode(params)}"
    return SerialSpec(target, int(baud), rate)


def _parse_replay(spec: str, target: str, params: dict[str, str]) -> ReplaySpec:
    unknown = set(params) - {"rate", "loop"}
    if unknown:
        raise _bad(spec, f"unknown option(s) {', '.join(sorted(unknown))} (replay takes rate, loop); ")
    if target != MNIST_TEST and not target.endswith(".npy"):
        raise _bad(spec, f"replay needs an .npy file or {MNIST_TEST}, got {target!r}; ")
    rate = _rate(spec, params["rate"]) if "rate" in params else None
    loop = params.get("loop", "0")
    if loop not in ("0", "1"):
        raise _bad(spec, f"loop must be 0 or 1, got {loop!r}; ")
    return ReplaySpec(target, rate, loop == "1")


def _rate(spec: str, text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise _bad(spec, f"rate must be a positive number of frames per second, got {text!r}; ")
    return rate


def _params(query: str) -> dict[str, str]:
    """``a=1&b=2`` -> dict; a repeated key is a mistake, not something to pick a winner for."""
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("repeated option")
    return dict(pairs)


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(f"bad source {spec!r}: {why}valid forms: {VALID_FORMS}")


_PARSERS: dict[str, Callable[[str, str, dict[str, str]], SourceSpec]] = {
    "serial": _parse_serial,
    "replay": _parse_replay,
}
