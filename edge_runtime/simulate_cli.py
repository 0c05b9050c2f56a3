"""``edge-runtime simulate``: run a .fbz on frames with our simulator, offline.

Writes what ``akida.Model(MODEL).forward(FRAMES)`` would return (``outputs``) and every layer's
per-frame counters to one ``.npz`` (keys ``<layer>/<counter>``, as :mod:`edge_runtime.calibrate_cli`
reads them), and optionally a JSON summary with per-layer means and the modelled energy per frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .akida_model import load_model
from .counters import Counters
from .energy import EnergyModel
from .errors import DataError
from .simulator import Simulator

DESCRIPTION = """\
Run MODEL.fbz on FRAMES.npy with our bit-exact simulator, offline. Writes what
akida.Model(MODEL).forward(FRAMES) would return ("outputs") and every layer's per-frame counters
to one .npz (keys LAYER/COUNTER, as "edge-runtime calibrate --counters" reads them), and optionally
a JSON summary with per-layer means and the modelled energy per frame.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a .fbz model on frames with the NumPy simulator (no board needed)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL.fbz", help="Akida 1.0 model saved by akida")
    parser.add_argument("frames", type=Path, metavar="FRAMES.npy",
                        help="uint8 frames, (N, X, Y, C), or (N, X, Y) for one channel")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.npz", help="outputs and per-frame counters")
    parser.add_argument("--stats", type=Path, metavar="STATS.json", help="per-layer means and energy per frame")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for target in (args.out, args.stats):
        if target is not None:
            files.check_target(target)  # before the (possibly long) run, not after it
    model = load_model(args.model)
    frames = load_frames(args.frames, model.input_shape)
    result = Simulator(model).run(frames)
    arrays: dict[str, Any] = {"outputs": result.outputs, **result.counters.to_arrays()}
    files.atomic_write(args.out, lambda f: np.savez(f, **arrays))
    if args.stats is not None:
        document = {"model": str(args.model), "frames_file": str(args.frames), **stats(result.counters)}
        files.atomic_write(args.stats, lambda f: f.write((json.dumps(document, indent=2) + "\n").encode()))
    print(f"simulated {len(frames)} frames: outputs {result.outputs.dtype}{list(result.outputs.shape)} -> {args.out}")
    return 0


def load_frames(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 frames shaped (N, *input_shape); (N, X, Y) gains the channel axis of a one-channel model."""
    frames = files.load_frames(path)
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    if frames.shape[1:] != input_shape:
        raise DataError(f"{path}: frames have shape {frames.shape}; the model takes {expected}")
    return np.ascontiguousarray(frames)


def stats(counters: Counters) -> dict[str, object]:
    """Counter means, plus the default energy model's estimate per frame (mean, in joules)."""
    estimate = EnergyModel.load_default().estimate(counters)
    return {
        **counters.summary(),
        "energy_per_frame_j": {"chip": float(np.mean(estimate.chip_j)), "board": float(np.mean(estimate.board_j))},
    }
