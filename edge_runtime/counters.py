"""Per-frame, per-layer activity counters, named to line up with NeuroBench.

Why these counts: on Akida the cost follows the events a layer receives and emits (non-zero
activations), not the magnitude of the values they carry, so the energy model
(``edge_runtime/energy.py``) is a function of these numbers. The names are a contract with it, with
the ``simulate`` output files and with the daemon's metrics: keep them.

Per frame (arrays shaped ``(N,)``, int64):

* ``input_events``: non-zero inputs the layer receives (for the input layer: non-zero pixels).
* ``output_events``: non-zero outputs, i.e. firing neurons after pooling; for a layer without
  activation, non-zero potentials.
* ``output_spikes``: sum of the output values (the conventional SNN spike count, where a 4-bit value
  of 15 counts as 15 spikes); 0 for a layer without activation, which emits potentials, not spikes.
* ``synaptic_ops``: effective synaptic operations, each input event times its non-zero fan-out
  weights (every (event, weight) pair the layer actually accumulates, before pooling).
* ``dense_synaptic_ops``: the same count if every input were non-zero and every weight too: the
  MAC-equivalent of a dense implementation over the layer's real inputs (padding excluded).

Static per layer (ints): ``neurons`` (output size, after pooling), ``inputs`` (input size),
``weights`` and ``nonzero_weights``. Derived as NeuroBench defines them:
``activation_sparsity = 1 - output_events / neurons`` and
``connection_sparsity = 1 - nonzero_weights / weights``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

PER_FRAME = ("input_events", "synaptic_ops", "output_events", "output_spikes", "dense_synaptic_ops")
STATIC = ("neurons", "inputs", "weights", "nonzero_weights")


@dataclass(frozen=True, eq=False)
class LayerCounters:
    """One layer's counters for a batch of N frames."""

    name: str
    neurons: int
    inputs: int
    weights: int
    nonzero_weights: int
    input_events: np.ndarray
    synaptic_ops: np.ndarray
    output_events: np.ndarray
    output_spikes: np.ndarray
    dense_synaptic_ops: np.ndarray

    @property
    def frames(self) -> int:
        return int(self.input_events.shape[0])

    @property
    def activation_sparsity(self) -> np.ndarray:
        """Per frame: the share of this layer's neurons that did not fire."""
        return 1.0 - self.output_events / self.neurons

    @property
    def connection_sparsity(self) -> float:
        """The share of this layer's weights that are zero."""
        return 1.0 - self.nonzero_weights / self.weights

    def summary(self) -> dict[str, float | int]:
        """Static counts, per-frame means and both sparsities, as JSON-ready numbers."""
        out: dict[str, float | int] = {name: int(getattr(self, name)) for name in STATIC}
        out.update({f"mean_{name}": float(np.mean(getattr(self, name))) for name in PER_FRAME})
        out["mean_activation_sparsity"] = float(np.mean(self.activation_sparsity))
        out["connection_sparsity"] = float(self.connection_sparsity)
        return out


@dataclass(frozen=True, eq=False)
class Counters:
    """The counters of every layer of a model for N frames, in model order.

    Stored as two integer arrays (``static``: layers x STATIC, ``per_frame``: layers x PER_FRAME x N)
    so that the simulator fills them with a few array writes per batch; ``layers`` gives the
    per-layer view, built on first use.
    """

    names: tuple[str, ...]
    static: np.ndarray
    per_frame: np.ndarray

    @cached_property
    def layers(self) -> tuple[LayerCounters, ...]:
        return tuple(
            LayerCounters(
                name=name,
                **{key: int(value) for key, value in zip(STATIC, static, strict=True)},
                **dict(zip(PER_FRAME, per_frame, strict=True)),
            )
            for name, static, per_frame in zip(self.names, self.static, self.per_frame, strict=True)
        )

    def __iter__(self) -> Iterator[LayerCounters]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerCounters:
        return self.layers[self.names.index(name)]

    @property
    def frames(self) -> int:
        return int(self.per_frame.shape[2])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<layer>/<counter>": array}`` for an ``.npz``; static counts become 0-d arrays."""
        arrays: dict[str, np.ndarray] = {}
        for name, static, per_frame in zip(self.names, self.static, self.per_frame, strict=True):
            arrays.update({f"{name}/{key}": row for key, row in zip(PER_FRAME, per_frame, strict=True)})
            arrays.update({f"{name}/{key}": np.array(value) for key, value in zip(STATIC, static, strict=True)})
        return arrays

    def summary(self) -> dict[str, object]:
        """Per-layer means plus whole-network figures (NeuroBench sums over all layers)."""
        totals = dict(zip(STATIC, self.static.sum(axis=0), strict=True))
        per_frame = dict(zip(PER_FRAME, self.per_frame.sum(axis=0), strict=True))
        return {
            "frames": self.frames,
            "layers": {layer.name: layer.summary() for layer in self.layers},
            "mean_activation_sparsity": float(np.mean(1.0 - per_frame["output_events"] / totals["neurons"])),
            "connection_sparsity": float(1.0 - totals["nonzero_weights"] / totals["weights"]),
            "mean_synaptic_ops": float(np.mean(per_frame["synaptic_ops"])),
            "mean_dense_synaptic_ops": float(np.mean(per_frame["dense_synaptic_ops"])),
        }


def concatenate(parts: Sequence[Counters]) -> Counters:
    """Join the counters of consecutive batches of the same model (frames in order)."""
    first = parts[0]
    return Counters(first.names, first.static, np.concatenate([part.per_frame for part in parts], axis=2))
