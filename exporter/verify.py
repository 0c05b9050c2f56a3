"""The three-way agreement a bundle must pass: the Akida engine (on the .fbz), our simulator and
onnxruntime (on the .onnx) give identical outputs, at export and on ``edge-export verify``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import akida
import numpy as np

from edge_runtime.akida_model import AkidaModel
from edge_runtime.bundle import Bundle, check_golden, load_bundle
from edge_runtime.counters import Counters
from edge_runtime.errors import BundleError, DataError
from edge_runtime.onnx_session import OnnxSession
from edge_runtime.simulator import Simulator

BACKENDS = ("akida", "simulator", "onnxruntime")
BATCH = 1000  # frames per engine call: bounds memory, not results


@dataclass(frozen=True)
class VerifyReport:
    bundle: Bundle
    golden_frames: int
    extra_frames: int  # frames beyond the golden vectors on which the backends agreed
    backends: tuple[str, ...]


def _first_disagreement(reference: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(number of frames that differ, index of the first); shape differences count every frame."""
    if reference.shape != other.shape or reference.dtype != other.dtype:
        return len(reference), 0
    wrong = np.flatnonzero((reference != other).reshape(len(reference), -1).any(axis=1))
    return int(wrong.size), int(wrong[0]) if wrong.size else -1


def three_way(fbz: Path, onnx_path: Path, model: AkidaModel, frames: np.ndarray) -> tuple[np.ndarray, Counters]:
    """Run the engine (on the .fbz), the simulator and onnxruntime on ``frames``; all must agree.

    Returns the agreed outputs and the simulator's counters; BundleError names the backend that
    disagrees with the engine, how often, and the first frame.
    """
    engine = akida.Model(str(fbz))
    runtime = OnnxSession(onnx_path)
    simulated = Simulator(model).run(frames)
    reference = np.concatenate([engine.forward(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)])
    others = {
        "the simulator": simulated.outputs,
        "onnxruntime": np.concatenate([runtime.infer(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]),
    }
    runtime.close()
    for backend, outputs in others.items():
        count, first = _first_disagreement(reference, outputs)
        if count:
            raise BundleError(
                f"{backend} disagrees with the Akida engine on {count} of {len(frames)} frames (first: frame {first})"
            )
    return reference, simulated.counters


def outputs_digest(outputs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(outputs, dtype=outputs.dtype.newbyteorder("<")).tobytes()).hexdigest()


def check_recorded_scores(scores: np.ndarray, outputs: np.ndarray) -> None:
    """The run's recorded test-set outputs (its training forward) must be the engine's, frame for frame."""
    ours = outputs[: len(scores)].reshape(min(len(scores), len(outputs)), -1)
    count, first = _first_disagreement(ours, scores[: len(ours)])
    if count:
        raise BundleError(
            f"the run's recorded scores differ from the Akida engine's on {count} of {len(ours)} "
            f"test frames (first: frame {first}): the trained parameters do not mean on the chip what "
            "they meant in training"
        )


def verify_bundle(path: Path, frames: np.ndarray | None = None) -> VerifyReport:
    """Re-check a bundle: loader checks, golden vectors through all three backends, then agreement on ``frames``."""
    bundle = load_bundle(path)
    engine = akida.Model(str(bundle.fbz_path))
    runtime = OnnxSession(bundle.onnx_path)
    check_golden(bundle, engine.forward, "the Akida engine")
    check_golden(bundle, lambda f: Simulator(bundle.model).run(f).outputs, "the simulator")
    check_golden(bundle, runtime.infer, "onnxruntime")
    runtime.close()
    extra = 0
    if frames is not None:
        if frames.dtype != np.uint8 or frames.shape[1:] != bundle.model.input_shape:
            raise DataError(
                f"frames are {frames.dtype} {frames.shape[1:]}, the bundle takes uint8 {bundle.model.input_shape}"
            )
        three_way(bundle.fbz_path, bundle.onnx_path, bundle.model, frames)
        extra = len(frames)
    return VerifyReport(bundle, len(bundle.golden.frames), extra, BACKENDS)
