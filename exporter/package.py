"""``edge-export package``: an existing Akida 1.0 ``.fbz`` and the user's frames to a verified bundle.

Why a separate path in only its inputs: the bundle is built by exactly the code that exports our own
trained runs (:func:`exporter.bundle_build.export_model`: exact ONNX, AKD1000 mapping, three-way
agreement on every frame, golden vectors, manifest with sparsity and energy), so a model people
already have gets the same guarantees. What is new here is reading and checking what they bring:
the ``.fbz`` (any layer the runtime does not support is refused in one line naming it), frames in
the model's input shape and value range, optional labels (accuracy) and class names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_runtime import files
from edge_runtime.akida_model import AkidaModel, load_model
from edge_runtime.energy import DeviceProfile
from edge_runtime.errors import DataError
from edge_runtime.frame_fit import mismatch
from edge_runtime.manifest import Manifest, Training, class_names_problem
from edge_runtime.mapping import DEFAULT_MAP_MODE

from .bundle_build import EvalSet, export_model

PREPROCESSING = "none: uint8 frames in the model's input layout (X, Y, C), as given to `edge-export package`"


def _labels(path: Path, frames: int, classes: int) -> np.ndarray:
    labels = files.load_array(path, f"{frames} integer class labels")
    if labels.ndim != 1 or len(labels) != frames or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be {frames} integers (one per frame), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{path}: labels must be class indices 0..{classes - 1} (the model has {classes} outputs), "
            f"got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)


def _names(path: Path, classes: int) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: unreadable class names ({error})") from None
    names = tuple(line.strip() for line in lines if line.strip())
    problem = class_names_problem(names, classes)
    if problem is not None:
        raise DataError(f"{path}: {problem} (the model has {classes} outputs): write one name a line, each once")
    return names


def user_eval_set(
    model: AkidaModel, frames_path: Path, labels_path: Path | None = None, names_path: Path | None = None
) -> EvalSet:
    """The user's frames (checked against the model's input), labels and class names as an EvalSet."""
    frames = files.load_frames(frames_path)
    problem = mismatch(frames, model.input_shape, model.input_max)
    if problem is not None:
        raise DataError(f"{frames_path}: {problem}")
    classes = int(np.prod(model.output_shape))
    labels = _labels(labels_path, len(frames), classes) if labels_path is not None else None
    names = _names(names_path, classes) if names_path is not None else None
    return EvalSet(frames_path.name, frames, labels, names, PREPROCESSING)


def package(
    fbz: Path,
    out: Path,
    frames_path: Path,
    *,
    labels_path: Path | None = None,
    names_path: Path | None = None,
    name: str | None = None,
    profiles: Mapping[str, DeviceProfile] | None = None,
    map_mode: str = DEFAULT_MAP_MODE,
    force: bool = False,
) -> Manifest:
    """Read ``fbz``, check the user's data, and export a verified bundle at ``out`` (nothing written on failure)."""
    model = load_model(fbz)
    eval_set = user_eval_set(model, frames_path, labels_path, names_path)
    return export_model(
        model,
        out,
        eval_set,
        name=name,
        training=Training(fbz.name, None, {}),
        profiles=profiles,
        map_mode=map_mode,
        force=force,
    )
