"""Run a bundle's ``model.onnx`` with onnxruntime: one session, frames in, engine-exact outputs out.

The daemon's ``onnx`` backend (:class:`edge_runtime.backends.onnx.OnnxBackend`) wraps this session
with layer sampling; the exporter uses it alone, to check the graph against akida and the simulator.

Why ONNX at all, when the simulator is bit-exact: onnxruntime is a fast, widely deployed engine
that any host (x86, ARM, with or without our package) can run, and the bundle's graph is built so
that it returns exactly the integers the Akida engine returns (see docs/bundle.md). This class is
deliberately tiny; the exactness is the exporter's job and is proved at export by three-way agreement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import BackendError

_ORT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(int32)": np.int32}


class OnnxSession:
    """``OnnxSession(path).infer(frames)`` -> the same array ``akida.Model.forward`` returns.

    Frames are uint8 NHWC batches; the output is (N, 1, 1, classes), int32 potentials or uint8
    activations, as declared by the graph.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # One thread by default: an edge daemon shares the CPU with its frame reader and metrics.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise BackendError(f"{path}: onnxruntime cannot load the model ({error})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or inputs[0].type != "tensor(uint8)"
            or outputs[0].type not in _ORT_DTYPES
            or not all(isinstance(d, int) for d in inputs[0].shape[1:])
        ):
            raise BackendError(f"{path}: expected one uint8 (N, X, Y, C) input and one uint8/int32 output")
        self._input_name = inputs[0].name
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inputs[0].shape[1:])
        self.output_dtype = np.dtype(_ORT_DTYPES[outputs[0].type])

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Run a batch (N, H, W, C) uint8; refuse anything else rather than cast it silently."""
        if frames.dtype != np.uint8 or frames.shape[1:] != self.input_shape or frames.ndim != 4:
            raise BackendError(
                f"frames must be uint8 (N, {', '.join(map(str, self.input_shape))}), got {frames.dtype} {frames.shape}"
            )
        if self._session is None:
            raise BackendError("the ONNX session is closed")
        return self._session.run(None, {self._input_name: frames})[0]

    def close(self) -> None:
        """Release the session (the daemon calls this when it swaps bundles)."""
        self._session = None
