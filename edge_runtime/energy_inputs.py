"""What the energy model reads: where each layer runs (Placement, ModelMapping), the work it does
(Activity), and the features each coefficient multiplies (layer_features, host_features).

energy.py evaluates them against a device profile, energy_fit.py regresses on them: one formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .counters import LayerCounters
from .errors import DataError

# Kernel sizes whose per-event cost was measured (devhub single-layer harness); others interpolate.
MEASURED_KERNELS = (1, 3, 5, 7)
HRC_FILTER_BLOCK = 16  # the HRC's time steps in blocks of 16 filters (fitted form, docs/energy-model.md)


# --------------------------------------------------------------------------- where layers run


@dataclass(frozen=True)
class Placement:
    """What the cost of one layer depends on besides its events: what it is and where it is mapped.

    ``unit`` is the kind of hardware block: ``HRC`` (dense input layer), ``CNP`` (Convolutional and
    SeparableConvolutional), ``FNP`` (FullyConnected) or ``none`` (no NPs: no chip work).
    ``width`` is filters (HRC, CNP) or units (FNP); ``kernel_area`` the kernel's KX x KY (CNP; for a
    separable layer its depthwise kernel, since the engine fuses depthwise and pointwise and it costs
    like a full conv with the same filters); ``positions`` the output positions before pooling (HRC,
    CNP). ``np_types`` tells an FNP2 (weights in external memory) from an FNP3.
    """

    name: str
    unit: str
    nps: int
    width: int
    kernel_area: int = 0
    positions: int = 0
    np_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.unit not in ("HRC", "CNP", "FNP", "none"):
            raise DataError(f"layer {self.name!r}: unknown unit {self.unit!r} (HRC, CNP, FNP, none)")
        if self.nps < 1 and self.unit != "none":
            raise DataError(f"layer {self.name!r}: needs at least one NP, got {self.nps}")


@dataclass(frozen=True)
class ModelMapping:
    """A model mapped on a device: its layers' placements, passes and input size.

    Multi-pass mappings reprogram the NPs for every pass of every frame: host time grows with the
    weights reloaded (``host_s_per_reloaded_weight``) and the passes; their per-layer times are the
    least certain of all (``multi_pass``; docs/energy-model.md).
    """

    device: str
    mode: str
    layers: tuple[Placement, ...]
    passes: int
    sequences: int
    input_bytes: int
    weights: int  # weights of every mapped layer (what a multi-pass mapping reloads per frame)

    def __post_init__(self) -> None:
        if not self.layers:
            raise DataError("a mapping needs at least one layer")

    @property
    def multi_pass(self) -> bool:
        return self.passes > 1


@dataclass(frozen=True)
class Activity:
    """Per-layer, per-frame work: input events and synaptic operations on non-zero weights, (N,) each."""

    input_events: np.ndarray
    synaptic_ops: np.ndarray

    @classmethod
    def of(cls, layer: LayerCounters) -> Activity:
        return cls(_per_frame(layer, "input_events"), _per_frame(layer, "synaptic_ops"))


def _per_frame(layer: LayerCounters, name: str) -> np.ndarray:
    values = np.asarray(getattr(layer, name), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise DataError(f"layer {layer.name!r}: {name} must be a non-empty 1-D array, got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise DataError(f"layer {layer.name!r}: {name} has negative or non-finite counts")
    return values


# --------------------------------------------------------------------------- features


def kernel_weights(area: int) -> dict[str, float]:
    """The per-(event x filter) clock coefficients a kernel of ``area`` = KX x KY maps to.

    A measured square kernel (1, 3, 5, 7) maps to its own coefficient; any other area is interpolated
    linearly in area between the nearest measured ones (an assumption: no silicon figure exists).
    """
    areas = [k * k for k in MEASURED_KERNELS]
    if area in areas:
        return {f"cnp_clk_per_event_filter_k{MEASURED_KERNELS[areas.index(area)]}": 1.0}
    if not areas[0] <= area <= areas[-1]:
        raise DataError(f"kernel area {area}: Akida 1.0 convolutions have kernels of 1x1 to 7x7")
    low = max(k for k in MEASURED_KERNELS if k * k < area)
    high = min(k for k in MEASURED_KERNELS if k * k > area)
    share = (area - low**2) / (high**2 - low**2)
    return {f"cnp_clk_per_event_filter_k{low}": 1.0 - share, f"cnp_clk_per_event_filter_k{high}": share}


def layer_features(place: Placement, activity: Activity) -> dict[str, np.ndarray]:
    """What each coefficient multiplies in this layer, per frame: clocks (clock group), pJ (energy)."""
    events, synops = activity.input_events, activity.synaptic_ops
    active = (events > 0).astype(np.float64)  # the fixed cost is paid once any event arrives
    if place.unit == "HRC":
        blocks = np.full_like(events, float(place.positions * math.ceil(place.width / HRC_FILTER_BLOCK)))
        return {"hrc_clk_per_block": blocks, "dyn_pj_per_hrc_block": blocks}
    if place.unit == "CNP":
        work = events * place.width
        features = {name: share * work / place.nps for name, share in kernel_weights(place.kernel_area).items()}
        features.update(
            cnp_clk_per_layer=active,
            cnp_clk_per_neuron=active * (place.positions * place.width / place.nps),
            dyn_pj_per_event_filter=work,
            dyn_pj_per_synop=synops,
        )
        return features
    if place.unit == "FNP":
        work = events * place.width
        kind = "fnp2" if "FNP2" in place.np_types else "fnp3"
        return {
            f"{kind}_clk_per_event_unit": work / place.nps,
            "fnp_clk_per_layer": active,
            "dyn_pj_per_fnp_event_unit": work,
            "dyn_pj_per_synop": synops,
        }
    return {}


def host_features(mapping: ModelMapping, frames_per_call: float) -> dict[str, float]:
    """What each host coefficient multiplies per frame (seconds = sum of coefficient x feature)."""
    return {
        "host_s_per_frame": 1.0,
        "host_s_per_input_byte": float(mapping.input_bytes),
        "host_s_per_extra_pass": float(mapping.passes - 1),
        "host_s_per_reloaded_weight": float(mapping.weights) if mapping.multi_pass else 0.0,
        "host_s_per_call": 0.0 if math.isinf(frames_per_call) else 1.0 / frames_per_call,
    }
