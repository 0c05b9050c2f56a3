"""Per-layer activity from the simulator, for every frame or for a sample of them.

The Akida board and onnxruntime return outputs only. Our simulator is bit-exact with the chip, so
running it on a frame gives exactly the events the chip processed for that frame; running it on one
frame in ``every`` keeps the cost small while the sparsity histograms stay representative.
"""

from __future__ import annotations

import numpy as np

from ..counters import Counters
from ..simulator import Simulator
from .base import LayerStats


def layer_stats(counters: Counters, frames: np.ndarray, source: str) -> LayerStats:
    """Events and activation sparsity per layer for the batch positions ``frames`` the counters cover."""
    return LayerStats(
        frames=frames,
        events={layer.name: layer.output_events for layer in counters},
        sparsity={layer.name: layer.activation_sparsity for layer in counters},
        source=source,
    )


class Sampler:
    """Runs the simulator on every ``every``-th frame seen (0: never), counting across batches."""

    def __init__(self, simulator: Simulator, every: int) -> None:
        self._simulator = simulator
        self._every = every
        self._seen = 0

    def sample(self, images: np.ndarray) -> LayerStats | None:
        n = len(images)
        if self._every == 0:
            return None
        # positions p in this batch with (seen + p) % every == 0
        first = (-self._seen) % self._every
        self._seen += n
        picked = np.arange(first, n, self._every)
        if picked.size == 0:
            return None
        counters = self._simulator.run(np.ascontiguousarray(images[picked])).counters
        return layer_stats(counters, picked, "simulator_sample")
