"""``edge-runtime serve`` configuration: frozen dataclasses loaded from a commented TOML file.

Why frozen dataclasses: a typo in a key fails at start (and at SIGHUP, before anything changes) with
the list of allowed keys, instead of being silently ignored in production. Every problem in a file
is collected and reported in one line with the file path. Command-line flags override single keys
for quick use; the result is validated exactly like a file. The shipped, commented example is
``config/edge-runtime.toml`` (for an edge host) and ``config/local.toml`` (from a clone).

Relative paths in a file are relative to that file, not to the directory the daemon was started
in: a config means the same whoever starts it (systemd starts units in /). Paths given as flags are
relative to the current directory, as on any command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .energy import DEVICES
from .errors import ConfigError
from .sources import parse_source_spec
from .sources.spec import MNIST_TEST
from .tomlconfig import read_toml, validate

BACKENDS = ("auto", "akida", "simulator", "onnx")
# The Akida board's power sensor updates every 140.8 ms; averaging over fewer than three updates
# would let one reading dominate the energy attributed to a window's inferences.
POWER_METER_PERIOD_S = 0.1408
MIN_POWER_WINDOW_S = 3 * POWER_METER_PERIOD_S
DEFAULT_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True)
class ModelSection:
    bundle: str = ""  # bundle directory (manifest + model.fbz + model.onnx); required


@dataclass(frozen=True)
class SourceSection:
    spec: str = ""  # serial:PORT_OR_URL[?baud=N] or replay:PATH[?rate=HZ&loop=1]; required
    queue_size: int = 64  # frames between reader and inference; when full the oldest is dropped


@dataclass(frozen=True)
class InferenceSection:
    backend: str = "auto"  # one of BACKENDS; auto = the Akida board if present, else the simulator
    max_batch: int = 64  # at most this many queued frames per backend call (micro-batching; only when backlogged)
    sample_every: int = 10  # board/onnx: run the simulator on 1 frame in N for per-layer sparsity (0 = off)
    power_window_s: float = 2.0  # board: energy per inference = mean power over >= this / inferences in it
    onnx_threads: int = 1  # onnxruntime intra-op threads
    blas_threads: int = 1  # NumPy's BLAS worker threads (the simulator); more only pays on many idle cores
    device: str = "akd1000"  # the energy model's device profile: akd1000 (PCIe board) or akd1500
    device_profile: str = ""  # profile JSON (from `edge-runtime calibrate`) replacing the packaged one; "" = packaged


@dataclass(frozen=True)
class MetricsSection:
    listen: str = DEFAULT_LISTEN  # HOST:PORT for /metrics, /healthz, /readyz ([::1]:9464 for IPv6)


@dataclass(frozen=True)
class PredictionsSection:
    path: str = ""  # JSON-lines log of every inference ("" = off)
    max_bytes: int = 16 << 20  # rotate the log when it would grow past this
    keep: int = 5  # rotated files kept (path.1 .. path.N)
    stdout: bool = False  # also print one JSON object per inference on stdout (flushed)


@dataclass(frozen=True)
class ServeConfig:
    model: ModelSection = field(default_factory=ModelSection)
    source: SourceSection = field(default_factory=SourceSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    predictions: PredictionsSection = field(default_factory=PredictionsSection)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); port 0 asks the OS for a free one (tests)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"bad listen address {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _check(config: ServeConfig) -> list[str]:
    """Cross-field and range checks; each failing rule gives one message."""
    inf, pred = config.inference, config.predictions
    errors = [
        message
        for ok, message in [
            (bool(config.model.bundle), "model.bundle is required (set it or pass --model)"),
            (bool(config.source.spec), "source.spec is required (set it or pass --source)"),
            (config.source.queue_size >= 1, "source.queue_size must be >= 1"),
            (inf.backend in BACKENDS, f"inference.backend must be one of {', '.join(BACKENDS)}"),
            (inf.max_batch >= 1, "inference.max_batch must be >= 1"),
            (inf.sample_every >= 0, "inference.sample_every must be >= 0 (0 = off)"),
            (
                inf.power_window_s >= MIN_POWER_WINDOW_S,
                f"inference.power_window_s must be >= {MIN_POWER_WINDOW_S:.4f} "
                f"(three {POWER_METER_PERIOD_S * 1000:.1f} ms power-meter updates)",
            ),
            (inf.onnx_threads >= 1, "inference.onnx_threads must be >= 1"),
            (inf.blas_threads >= 1, "inference.blas_threads must be >= 1"),
            (inf.device in DEVICES, f"inference.device must be one of {', '.join(DEVICES)}"),
            (pred.max_bytes >= 4096, "predictions.max_bytes must be >= 4096"),
            (pred.keep >= 1, "predictions.keep must be >= 1"),
        ]
        if not ok
    ]
    for check, value in ((parse_source_spec, config.source.spec), (parse_listen, config.metrics.listen)):
        if value:
            try:
                check(value)
            except ConfigError as error:
                errors.append(str(error))
    return errors


def config_from_dict(raw: Mapping[str, Any], origin: str = "<config>") -> ServeConfig:
    """Validate a parsed TOML document; raises one ConfigError listing every problem."""
    return validate(ServeConfig, raw, origin, _check)


# Keys whose value is a path ("" = unset), as (section, key).
PATH_KEYS = (("model", "bundle"), ("inference", "device_profile"), ("predictions", "path"))


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the file's relative paths (and a ``replay:`` file in source.spec) relative to ``base``."""
    for section, key in PATH_KEYS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = str(base / table[key])  # an absolute value stays as it is
    source = raw.get("source")
    spec = source.get("spec") if isinstance(source, dict) else None
    if isinstance(spec, str) and spec.startswith("replay:"):
        target, query = spec.removeprefix("replay:"), ""
        if "?" in target:
            target, query = target.split("?", 1)
            query = "?" + query
        if target and target != MNIST_TEST:
            source["spec"] = f"replay:{base / target}{query}"  # type: ignore[index]  # source is a dict here


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> ServeConfig:
    """Read ``path`` (or start from defaults), apply ``{"section.key": value}`` overrides, validate.

    Overrides are merged into the raw document before validation, so a flag is checked exactly like
    the key it replaces and the error names that key.
    """
    raw = read_toml(path) if path is not None else {}
    if path is not None:
        resolve_paths(raw, path.absolute().parent)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    origin = str(path) if path is not None else "command line"
    return config_from_dict(raw, origin)
