"""Inference on our bit-exact NumPy simulator, with energy and latency from the energy model.

On a host without a board this is the production backend, and it is the fallback when the board
fails. Every frame's per-layer counters come with the outputs at no extra run, so sparsity, energy
and on-chip latency are reported for every inference (source "simulator" / "model"), under the
configured device profile.
"""

from __future__ import annotations

import numpy as np

from ..energy import ModelCost
from ..errors import BackendError, DataError, ModelError
from ..simulator import Simulator
from .base import BatchResult, EnergyReport
from .sampling import layer_stats


class SimulatorBackend:
    name = "simulator"

    def __init__(self, simulator: Simulator, cost: ModelCost) -> None:
        self._simulator = simulator
        self._cost = cost

    def infer(self, images: np.ndarray) -> BatchResult:
        try:
            result = self._simulator.run(images)
            # total energy: what the power meter would report, so both sources line up on one panel
            estimate = self._cost.evaluate_counters(result.counters.layers)
        except (DataError, ModelError) as error:
            raise BackendError(f"simulator: {error}") from None
        n = len(images)
        return BatchResult(
            scores=result.outputs.reshape(n, -1),
            energy=EnergyReport(
                estimate.total_j, "model", profile=estimate.profile, dynamic=estimate.dynamic_j, chip_s=estimate.chip_s
            ),
            frame_energy=estimate.total_j,
            energy_source="model",
            layers=layer_stats(result.counters, np.arange(n), "simulator"),
            frame_dynamic=estimate.dynamic_j,
            frame_chip_s=estimate.chip_s,
            energy_profile=estimate.profile,
        )

    def close(self) -> None:
        """Nothing to release: the simulator is plain NumPy."""
