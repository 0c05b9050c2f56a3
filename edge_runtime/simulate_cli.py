"""``edge-runtime simulate``: run a .fbz on frames with our simulator, offline.

Writes what ``akida.Model(MODEL).forward(FRAMES)`` would return (``outputs``) and every layer's
per-frame counters to one ``.npz`` (keys ``<layer>/<counter>``, as :mod:`edge_runtime.calibrate_cli`
reads them), and optionally a JSON summary with per-layer means and the modelled energy per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from .akida_model import load_model
from .counters import Counters
from .energy import EnergyModel
from .errors import DataError
from .simulator import Simulator


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a .fbz model on frames with the NumPy simulator (no board needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL.fbz", help="Akida 1.0 model saved by akida")
    parser.add_argument("frames", type=Path, metavar="FRAMES.npy",
                        help="uint8 frames, (N, X, Y, C), or (N, X, Y) for one channel")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.npz", help="outputs and per-frame counters")
    parser.add_argument("--stats", type=Path, metavar="STATS.json", help="per-layer means and energy per frame")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    frames = load_frames(args.frames, model.input_shape)
    result = Simulator(model).run(frames)
    _write_atomically(args.out, lambda f: np.savez(f, outputs=result.outputs, **result.counters.to_arrays()))
    if args.stats is not None:
        document = {"model": str(args.model), "frames_file": str(args.frames), **stats(result.counters)}
        _write_atomically(args.stats, lambda f: f.write((json.dumps(document, indent=2) + "\n").encode()))
    print(f"simulated {len(frames)} frames: outputs {result.outputs.dtype}{list(result.outputs.shape)} -> {args.out}")
    return 0


def load_frames(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 frames shaped (N, *input_shape); (N, X, Y) gains the channel axis of a one-channel model."""
    if not path.is_file():
        raise DataError(f"{path}: no such frames file")
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(frames, np.ndarray):
        frames.close()
        raise DataError(f"{path}: an .npz archive; expected one .npy array of frames")
    if frames.dtype != np.uint8:
        raise DataError(f"{path}: frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3 and input_shape[2] == 1:
        frames = frames[..., None]
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    if frames.ndim != 4 or frames.shape[1:] != input_shape or len(frames) == 0:
        raise DataError(f"{path}: frames have shape {frames.shape}; the model takes {expected} with N >= 1")
    return np.ascontiguousarray(frames)


def stats(counters: Counters) -> dict[str, object]:
    """Counter means, plus the default energy model's estimate per frame (mean, in joules)."""
    estimate = EnergyModel.load_default().estimate(counters)
    return {
        **counters.summary(),
        "energy_per_frame_j": {"chip": float(np.mean(estimate.chip_j)), "board": float(np.mean(estimate.board_j))},
    }


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temporary file in the same directory and ``os.replace``: no half-written outputs."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise DataError(f"{path}: directory {directory} does not exist")
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", delete=False) as handle:
        try:
            write(handle)
        except BaseException:
            os.unlink(handle.name)
            raise
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile makes 0600; outputs are ordinary files
    os.replace(handle.name, path)
