"""Inference on our bit-exact NumPy simulator, with energy from the energy model.

On a host without a board this is the production backend, and it is the fallback when the board
fails. Every frame's per-layer counters come with the outputs at no extra run, so sparsity and
energy are reported for every inference (source "simulator" / "model").
"""

from __future__ import annotations

import numpy as np

from ..energy import BoardEnergy, EnergyModel
from ..errors import BackendError, DataError, ModelError
from ..simulator import Simulator
from .base import BatchResult, EnergyReport
from .sampling import layer_stats


class SimulatorBackend:
    name = "simulator"

    def __init__(self, simulator: Simulator, energy_model: EnergyModel) -> None:
        self._simulator = simulator
        self._energy_model = energy_model
        self._board_energy: BoardEnergy | None = None  # built from the first batch's static counts

    def infer(self, images: np.ndarray) -> BatchResult:
        try:
            result = self._simulator.run(images)
            # board energy: what the power meter would report, so both sources line up on one panel
            if self._board_energy is None:
                self._board_energy = self._energy_model.board_energy_of(result.counters)
            energy = self._board_energy.board_j(result.counters.layers)
        except (DataError, ModelError) as error:
            raise BackendError(f"simulator: {error}") from None
        n = len(images)
        return BatchResult(
            scores=result.outputs.reshape(n, -1),
            energy=EnergyReport(energy, "model"),
            frame_energy=energy,
            energy_source="model",
            layers=layer_stats(result.counters, np.arange(n), "simulator"),
        )

    def close(self) -> None:
        """Nothing to release: the simulator is plain NumPy."""
