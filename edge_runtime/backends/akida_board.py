"""Inference on an Akida board, with energy from the board's own power meter.

Written against akida 2.19.3's API: ``akida.devices()``, ``Model(path)``, ``model.map(device)``,
``model.forward(uint8 NXYC)``, ``device.soc.power_measurement_enabled``, ``device.soc.power_meter``
(``floor`` in mW, ``events()`` -> ``PowerEvent(ts ms, power mW, ...)``) and ``model.power_events``.
``akida`` is imported only when a board is asked for, so hosts and tests without it never load it.

Energy. The meter updates every 140.8 ms (``PowerMeter::ina_period_ms`` in akida's headers), so a
batch of a few milliseconds sees no reading of its own, and ``model.statistics`` (which averages
the readings inside one ``forward``) has nothing to report for it. :class:`PowerWindow` therefore
averages the readings over a window of several meter periods and attributes the energy to the
inferences of that window. Idle time between frames is not the inferences' doing: the floor
power (``power_meter.floor``, the board at rest) during it is subtracted, so the figure is the
same quantity ``model.statistics`` and our energy model report (board power while inferring x
inference time / frames). When inference is back to back, the idle time is zero and this is the
plain "mean board power x window / inferences in it".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError
from .base import BatchResult, EnergyReport
from .sampling import Sampler

log = logging.getLogger(__name__)

MW = 1e-3


@dataclass(frozen=True)
class Reading:
    """One power-meter reading: board time in ms and power in watts."""

    ts_ms: int
    watts: float


@dataclass(frozen=True)
class WindowEnergy:
    """A closed window: energy per inference (J), mean board power (W) and how many inferences."""

    per_inference: float
    board_watts: float
    inferences: int


class PowerWindow:
    """Turns meter readings, inference counts and busy time into energy per inference.

    Pure bookkeeping (times are passed in) so the arithmetic is tested without a board. Readings
    are de-duplicated by timestamp, so it does not matter whether the meter hands out each reading
    once or keeps returning a backlog, nor whether a reading is seen through both the meter and the
    model's copy of the events logged during an inference.
    """

    def __init__(self, window_s: float, started: float) -> None:
        self._window_s = window_s
        self._start = started
        self._last_ts: int | None = None
        self._watts: list[float] = []
        self._inferences = 0
        self._busy_s = 0.0
        self.last: WindowEnergy | None = None

    def add(
        self, readings: Iterable[Reading], inferences: int, busy_s: float, now: float, floor_watts: float
    ) -> WindowEnergy | None:
        """Record a batch; return the window's result when it has lasted ``window_s``, else None.

        A window without readings stays open (the meter has not updated yet); one without
        inferences is discarded (nothing to attribute an idle board to).
        """
        for reading in sorted(readings, key=lambda r: r.ts_ms):
            if self._last_ts is None or reading.ts_ms > self._last_ts:
                self._last_ts = reading.ts_ms
                self._watts.append(reading.watts)
        self._inferences += inferences
        self._busy_s += busy_s
        elapsed = now - self._start
        if elapsed < self._window_s or not self._watts:
            return None
        result = None
        if self._inferences:
            board_watts = sum(self._watts) / len(self._watts)
            idle_s = max(0.0, elapsed - self._busy_s)
            joules = max(0.0, board_watts * elapsed - floor_watts * idle_s)
            result = WindowEnergy(joules / self._inferences, board_watts, self._inferences)
            self.last = result
        self._start, self._watts, self._inferences, self._busy_s = now, [], 0, 0.0
        return result


def _readings(events: Iterable[Any]) -> list[Reading]:
    return [Reading(int(e.ts), float(e.power) * MW) for e in events]


def find_device(devices: Callable[[], list[Any]] | None = None) -> Any:
    """The first Akida device; BackendError (one line) if there is none or the driver fails."""
    if devices is None:
        import akida  # lazy: hosts without a board never load the engine for this

        devices = akida.devices
    try:
        found = list(devices())
    except Exception as error:  # the driver raises RuntimeError with its own message
        raise BackendError(f"cannot list Akida devices: {error}") from None
    if not found:
        raise BackendError("no Akida device found (akida.devices() is empty)")
    return found[0]


def _load_akida_model(path: Path) -> Any:
    import akida

    return akida.Model(str(path))


class AkidaBoardBackend:
    """Runs the bundle's ``model.fbz`` on an Akida device.

    ``load_model`` and ``device`` default to akida's own; tests pass a fake device (and a model
    whose ``map`` accepts it), the only place in the project where a fake stands in for hardware.
    Any exception from the engine becomes a BackendError, so the pipeline can fall back.
    """

    name = "akida"

    def __init__(
        self,
        fbz: Path,
        device: Any,
        sampler: Sampler,
        *,
        power_window_s: float,
        load_model: Callable[[Path], Any] = _load_akida_model,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._sampler = sampler
        self._device = device
        try:
            self._model = load_model(fbz)
            self._model.map(device)
        except Exception as error:
            raise BackendError(f"cannot map {fbz} on Akida device {_describe(device)}: {error}") from None
        self._meter = self._enable_power_meter(device)
        self._window = PowerWindow(power_window_s, clock())
        log.info(
            "mapped %s on Akida device %s (power meter %s)",
            fbz,
            _describe(device),
            "on" if self._meter is not None else "unavailable",
        )

    @staticmethod
    def _enable_power_meter(device: Any) -> Any:
        """Turn measurement on where the device has a SoC driver; None where it cannot measure."""
        soc = getattr(device, "soc", None)
        if soc is None:
            return None
        try:
            soc.power_measurement_enabled = True
            return soc.power_meter
        except Exception as error:
            log.warning("Akida power measurement unavailable (%s); no measured energy", error)
            return None

    def infer(self, images: np.ndarray) -> BatchResult:
        start = self._clock()
        try:
            outputs = np.asarray(self._model.forward(images))
            events = [] if self._meter is None else [*self._meter.events(), *self._model.power_events]
            floor_watts = 0.0 if self._meter is None else float(self._meter.floor) * MW
        except Exception as error:
            raise BackendError(f"Akida device {_describe(self._device)}: {error}") from None
        now = self._clock()
        scores = outputs.reshape(len(images), -1)
        layers = self._sampler.sample(images)
        if self._meter is None:
            return BatchResult(scores, layers=layers)
        closed = self._window.add(_readings(events), len(images), now - start, now, floor_watts)
        report = None
        if closed is not None:
            per_inference = np.full(closed.inferences, closed.per_inference)
            report = EnergyReport(per_inference, "power_meter", closed.board_watts)
        last = self._window.last
        frame_energy = np.full(len(images), math.nan if last is None else last.per_inference)
        return BatchResult(scores, report, frame_energy, "power_meter", layers)

    def close(self) -> None:
        """Leave the device to the next model (a reload maps its own); drop our references."""
        self._model = None


def _describe(device: Any) -> str:
    try:
        return str(device.desc)
    except Exception:
        return repr(device)
