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
    if frames.shape[1:] != tuple(shape):
        return f"frames are {_shape(frames.shape[1:])}, the model takes {_shape(shape)}"
    if top < 255 and frames.size and int(frames.max()) > top:
        return f"frames hold values up to {int(frames.max())}, the model's InputData takes 0..{top}"
    return None


def check_demo_bundle(bundle_dir: Path, frames: np.ndarray, what: str) -> None:
    """ConfigError (one line) unless the demo's sensor frames (``what``) fit the bundle's input."""
    manifest, _ = read_manifest(bundle_dir)
    problem = mismatch(frames, manifest.input.shape, manifest.input.value_range[1])
    if problem is not None:
        raise ConfigError(f"demo --model {bundle_dir}: {problem} (the demo's sensor sends {what}); serve it on "
                          f"frames of its input with `edge-runtime serve --model {bundle_dir} --source "
                          "replay:FRAMES.npy`")
