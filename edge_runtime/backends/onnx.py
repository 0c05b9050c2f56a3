"""The bundle's ONNX graph on onnxruntime, as a daemon backend.

onnxruntime gives outputs only (and a CPU's energy is not the chip's), so energy is not reported
and per-layer activity comes from the simulator on a sample of frames, as on the board.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BackendError
from .base import BatchResult
from .sampling import Sampler


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, sampler: Sampler, threads: int) -> None:
        # Imported here, not at the top: onnxruntime is an optional extra, and importing it costs
        # every other command (even --help) a noticeable start-up delay.
        try:
            from ..onnx_session import OnnxSession
        except ModuleNotFoundError as error:
            raise BackendError(
                f"the onnx backend needs onnxruntime (no module {error.name!r}): "
                "pip install 'akida-edge[onnx]', or choose another inference.backend"
            ) from None
        self._session = OnnxSession(path, threads=threads)
        self._sampler = sampler

    def infer(self, images: np.ndarray) -> BatchResult:
        try:
            outputs = self._session.infer(images)
        except BackendError:
            raise
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime: {error}") from None
        return BatchResult(scores=outputs.reshape(len(images), -1), layers=self._sampler.sample(images))

    def close(self) -> None:
        self._session.close()
