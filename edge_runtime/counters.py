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

A SeparableConvolutional is counted as the engine does the work, depthwise and pointwise fused: an
(input event, tap, filter) is one synaptic op when the event's channel has a non-zero depthwise tap
there and a non-zero pointwise weight to the filter (the fused kernel's non-zeros), and its dense
ops are those of a Convolutional with as many filters; its ``weights`` and ``nonzero_weights`` count
both stored arrays. A global average pool counts the work of all its positions (before pooling).
An InputData layer has no counters (no neurons, no weights): the layer after it counts the frame's
non-zero values as its ``input_events``.

Static per layer (ints): ``neurons`` (output size, after pooling), ``inputs`` (input size),
``weights`` and ``nonzero_weights``. Derived as NeuroBench defines them:
``activation_sparsity = 1 - output_events / neurons`` and
``connection_sparsity = 1 - nonzero_weights / weights``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

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

    @classmethod
    def _of(cls, static: dict[str, object], per_frame: Sequence[np.ndarray]) -> LayerCounters:
        """``cls(**static, **dict(zip(PER_FRAME, per_frame)))`` without the frozen dataclass's
        ``__init__``, which sets each field through ``object.__setattr__``: 0.6 us instead of 1.4 us.
        The simulator builds 4 of these per frame at batch 1."""
        layer = object.__new__(cls)
        input_events, synaptic_ops, output_events, output_spikes, dense_synaptic_ops = per_frame  # PER_FRAME order
        object.__setattr__(
            layer,
            "__dict__",
            {
                **static,
                "input_events": input_events,
                "synaptic_ops": synaptic_ops,
                "output_events": output_events,
                "output_spikes": output_spikes,
                "dense_synaptic_ops": dense_synaptic_ops,
            },
        )
        return layer

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

    def means(self) -> dict[str, float]:
        """Each per-frame counter's mean over the frames, keyed by its ``PER_FRAME`` name.

        The one place these means are taken: the ``simulate`` stats, the training report and the
        bundle manifest each publish them under their own names, and must agree on the same counters.
        """
        return {name: float(np.mean(getattr(self, name))) for name in PER_FRAME}

    def summary(self) -> dict[str, float | int]:
        """Static counts, per-frame means and both sparsities, as JSON-ready numbers."""
        out: dict[str, float | int] = {name: int(getattr(self, name)) for name in STATIC}
        out.update({f"mean_{name}": mean for name, mean in self.means().items()})
        out["mean_activation_sparsity"] = float(np.mean(self.activation_sparsity))
        out["connection_sparsity"] = float(self.connection_sparsity)
        return out


@dataclass(frozen=True)
class Counters:
    """The counters of every layer of a model for N frames, in model order."""

    layers: tuple[LayerCounters, ...]

    def __iter__(self) -> Iterator[LayerCounters]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerCounters:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def frames(self) -> int:
        return self.layers[0].frames

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<layer>/<counter>": array}`` for an ``.npz``; static counts become 0-d arrays."""
        arrays: dict[str, np.ndarray] = {}
        for layer in self.layers:
            arrays.update({f"{layer.name}/{key}": getattr(layer, key) for key in PER_FRAME})
            arrays.update({f"{layer.name}/{key}": np.array(getattr(layer, key), dtype=np.int64) for key in STATIC})
        return arrays

    def summary(self) -> dict[str, object]:
        """Per-layer means plus whole-network figures (NeuroBench sums over all layers)."""
        neurons = sum(layer.neurons for layer in self.layers)
        weights = sum(layer.weights for layer in self.layers)
        firing = sum(layer.output_events for layer in self.layers)
        return {
            "frames": self.frames,
            "layers": {layer.name: layer.summary() for layer in self.layers},
            "mean_activation_sparsity": float(np.mean(1.0 - firing / neurons)),
            "connection_sparsity": float(1.0 - sum(layer.nonzero_weights for layer in self.layers) / weights),
            "mean_synaptic_ops": float(np.mean(sum(layer.synaptic_ops for layer in self.layers))),
            "mean_dense_synaptic_ops": float(np.mean(sum(layer.dense_synaptic_ops for layer in self.layers))),
        }


def concatenate(parts: Sequence[Counters]) -> Counters:
    """Join the counters of consecutive batches of the same model (frames in order)."""
    layers = []
    for index, layer in enumerate(parts[0].layers):
        joined: dict[str, Any] = {
            key: np.concatenate([getattr(part.layers[index], key) for part in parts]) for key in PER_FRAME
        }
        layers.append(replace(layer, **joined))
    return Counters(tuple(layers))
