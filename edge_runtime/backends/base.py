"""What every inference backend takes and returns.

A backend turns a batch of frames into class scores plus whatever it knows about cost: energy per
inference and per-layer activity. Where each number comes from differs (the board's power meter,
our energy model, a simulator run on a sample of frames), so every number carries its source and
the metrics label it; a dashboard never mixes a measurement with an estimate unknowingly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

BACKEND_NAMES = ("akida", "simulator", "onnx")
# Where energy numbers come from: the board's power meter, or our energy model over simulator counters.
ENERGY_SOURCES = ("power_meter", "model")
# Where per-layer counters come from: the simulator on every frame, or on a sample of frames.
LAYER_SOURCES = ("simulator", "simulator_sample")


@dataclass(frozen=True)
class EnergyReport:
    """Energy to account now: one value per inference it covers (joules), and its source.

    On the board a report covers the inferences of a whole power-meter window, which may span
    several batches, so the number of values need not match the batch.
    """

    per_inference: np.ndarray  # float64 (K,), joules: total, floor included (model.statistics convention)
    source: str  # one of ENERGY_SOURCES
    board_watts: float | None = None  # mean board power over the measurement window (power meter only)
    profile: str = "board"  # the device profile behind modelled figures ("board": measured by the meter)
    dynamic: np.ndarray | None = None  # (K,) joules above the floor, where known
    chip_s: np.ndarray | None = None  # (K,) modelled on-chip latency, where known


@dataclass(frozen=True)
class LayerStats:
    """Per-layer activity for some frames of a batch (all of them, or a sample)."""

    frames: np.ndarray  # (M,) indices into the batch
    events: dict[str, np.ndarray]  # layer -> (M,) non-zero activations the layer emitted
    sparsity: dict[str, np.ndarray]  # layer -> (M,) fraction of the layer's activations that are zero
    source: str  # one of LAYER_SOURCES


@dataclass(frozen=True)
class BatchResult:
    scores: np.ndarray  # (N, classes) the model's outputs, flattened per frame
    energy: EnergyReport | None = None  # energy to account now (None: nothing measured yet)
    frame_energy: np.ndarray | None = None  # (N,) joules per frame for the prediction log; NaN unknown
    energy_source: str | None = None  # where frame_energy comes from (one of ENERGY_SOURCES)
    layers: LayerStats | None = None
    frame_dynamic: np.ndarray | None = None  # (N,) joules above the floor per frame (modelled), or None
    frame_chip_s: np.ndarray | None = None  # (N,) modelled on-chip latency per frame, or None
    energy_profile: str | None = None  # the device profile behind modelled per-frame figures


class Backend(Protocol):
    name: str  # one of BACKEND_NAMES

    def infer(self, images: np.ndarray) -> BatchResult:
        """Run uint8 (N, H, W, C) frames; raises BackendError if the engine fails."""
        ...

    def close(self) -> None:
        """Release the engine (device, session); called on reload, fallback and exit."""
        ...
