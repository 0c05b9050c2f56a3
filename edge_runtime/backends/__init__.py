"""Inference backends and the choice between them.

Chosen from an explicit table, in order of preference for ``auto``: the Akida board when one is
attached, else our simulator. ``akida`` insists on the board (an error if there is none), ``onnx``
runs the bundle's ONNX graph. The simulator is also every other backend's fallback at runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Bundle
from ..energy import DeviceProfile
from ..errors import BackendError, ConfigError
from ..simulator import Simulator
from .akida_board import AkidaBoardBackend, find_device
from .base import BACKEND_NAMES, ENERGY_SOURCES, LAYER_SOURCES, Backend, BatchResult, EnergyReport, LayerStats
from .onnx import OnnxBackend
from .sampling import Sampler
from .simulator_backend import SimulatorBackend

__all__ = [
    "BACKEND_NAMES",
    "ENERGY_SOURCES",
    "LAYER_SOURCES",
    "Backend",
    "BackendSettings",
    "BatchResult",
    "Board",
    "EnergyReport",
    "LayerStats",
    "open_backend",
    "sources_reported",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Board:
    """How to reach an Akida board; the defaults are akida's own. Tests pass a fake device here."""

    devices: Callable[[], list[Any]] | None = None  # None: akida.devices
    load_model: Callable[[Path], Any] | None = None  # None: akida.Model


@dataclass(frozen=True)
class BackendSettings:
    kind: str  # "auto" | one of BACKEND_NAMES
    sample_every: int  # board/onnx: simulator on 1 frame in N for per-layer counters
    power_window_s: float
    onnx_threads: int


def _simulator(bundle: Bundle, energy: DeviceProfile, settings: BackendSettings, board: Board) -> Backend:
    mapping = bundle.manifest.mappings.get(energy.device)
    if mapping is None:
        raise ConfigError(
            f"the bundle records no mapping on {energy.device.upper()} (it has "
            f"{', '.join(bundle.manifest.mappings) or 'none'}): set inference.device to one of "
            "those, or re-export the bundle"
        )
    return SimulatorBackend(Simulator(bundle.model), energy.bind(mapping))


def _onnx(bundle: Bundle, energy: DeviceProfile, settings: BackendSettings, board: Board) -> Backend:
    sampler = Sampler(Simulator(bundle.model), settings.sample_every)
    return OnnxBackend(bundle.onnx_path, sampler, settings.onnx_threads)


def _akida(bundle: Bundle, energy: DeviceProfile, settings: BackendSettings, board: Board) -> Backend:
    device = find_device(board.devices)
    sampler = Sampler(Simulator(bundle.model), settings.sample_every)
    extra: dict[str, Any] = {} if board.load_model is None else {"load_model": board.load_model}
    return AkidaBoardBackend(bundle.fbz_path, device, sampler, power_window_s=settings.power_window_s, **extra)


_FACTORIES = {"akida": _akida, "simulator": _simulator, "onnx": _onnx}


def open_backend(bundle: Bundle, energy: DeviceProfile, settings: BackendSettings, board: Board) -> Backend:
    """The backend ``settings.kind`` asks for; ``auto`` falls back from the board to the simulator."""
    if settings.kind == "auto":
        try:
            return _akida(bundle, energy, settings, board)
        except BackendError as error:
            log.info("%s; using the simulator", error)
            return _simulator(bundle, energy, settings, board)
    try:
        factory = _FACTORIES[settings.kind]
    except KeyError:
        raise ConfigError(f"unknown backend {settings.kind!r} (choose auto, {', '.join(BACKEND_NAMES)})") from None
    return factory(bundle, energy, settings, board)


def sources_reported(backend: str, sample_every: int) -> tuple[list[str], list[str]]:
    """(energy sources, layer sources) the backend reports, so their series can exist from the start."""
    energy = {"akida": ["power_meter"], "simulator": ["model"], "onnx": []}[backend]
    if backend == "simulator":
        return energy, ["simulator"]
    return energy, (["simulator_sample"] if sample_every else [])
