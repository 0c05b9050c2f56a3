"""Whether a source's frames fit a model's input, checked once at start.

Why at start: the pipeline drops every frame of another shape as ``bad_shape`` (and a batch with
values beyond an InputData model's bits fails as ``inference_error``), so a mismatched source would
serve nothing while looking healthy. Wherever the frames are known before serving (a replay file,
the demo's sensor), they are checked here and the mismatch is one line; a live sensor's frames can
only be checked as they come.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import read_manifest
from .errors import ConfigError


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def mismatch(frames: np.ndarray, shape: tuple[int, ...], top: int = 255) -> str | None:
    """What keeps ``frames`` (N, X, Y, C) uint8 from a model taking ``shape`` frames of values 0..``top``, or None."""
    return shape_mismatch(frames.shape[1:], int(frames.max(initial=0)), shape, top)


def shape_mismatch(frame_shape: tuple[int, ...], largest: int, shape: tuple[int, ...], top: int) -> str | None:
    """The same for frames known by their shape and largest value."""
    if tuple(frame_shape) != tuple(shape):
        return f"frames are {_shape(frame_shape)}, the model takes {_shape(shape)}"
    if largest > top:
        return f"frames hold values up to {largest}, the model's InputData takes 0..{top}"
    return None


def check_demo_bundle(bundle_dir: Path, frame_shape: tuple[int, ...], what: str) -> None:
    """ConfigError (one line) unless the demo's sensor frames (``what``, any uint8 value) fit the bundle's input."""
    manifest, _ = read_manifest(bundle_dir)
    problem = shape_mismatch(frame_shape, 255, manifest.input.shape, manifest.input.value_range[1])
    if problem is not None:
        raise ConfigError(
            f"demo --model {bundle_dir}: {problem} (the demo's sensor sends {what}); serve it on "
            f"frames of its input with `edge-runtime serve --model {bundle_dir} --source "
            "replay:FRAMES.npy`"
        )
