"""What a run directory keeps about the data it was trained on: ``dataset.json`` (source, frame shape,
classes, class names, preprocessing) and, for every source but MNIST (whose cache is the test set), the
test split itself, so ``edge-export export`` checks the run on exactly the frames it was scored on."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_runtime import files
from edge_runtime.errors import DataError

RUN_RECORD = "dataset.json"  # source, frame shape, classes, class names, preprocessing
RUN_TEST_SET = "test_set.npz"  # the test frames the run's eval_scores.npy were computed on (not for MNIST)


@dataclass(frozen=True, eq=False)
class RunData:
    """What ``edge-export export`` needs to know about the data a run was trained on."""

    source: str
    input_shape: tuple[int, ...]
    classes: int
    class_names: tuple[str, ...] | None
    preprocessing: str
    test_frames: np.ndarray | None  # uint8 (N, X, Y, C); None for MNIST (its cache is the test set)
    test_labels: np.ndarray | None


def write_run_data(out: Path, data: RunData) -> None:
    """``dataset.json`` and, unless the source is MNIST, ``test_set.npz`` (frames, labels)."""
    record = {
        "source": data.source,
        "input_shape": list(data.input_shape),
        "classes": data.classes,
        "class_names": None if data.class_names is None else list(data.class_names),
        "preprocessing": data.preprocessing,
        "test_set": None if data.test_frames is None else RUN_TEST_SET,
    }
    frames, labels = data.test_frames, data.test_labels
    if frames is not None and labels is not None:
        files.atomic_write(out / RUN_TEST_SET, lambda handle: np.savez_compressed(handle, frames=frames, labels=labels))
    text = json.dumps(record, indent=2) + "\n"
    files.atomic_write(out / RUN_RECORD, lambda handle: handle.write(text.encode()))


def read_run_data(run_dir: Path) -> RunData | None:
    """The run's data record, or None for a run written before there was one (MNIST, no class names)."""
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        names = record["class_names"]
        data = RunData(
            str(record["source"]),
            tuple(int(v) for v in record["input_shape"]),
            int(record["classes"]),
            None if names is None else tuple(str(name) for name in names),
            str(record["preprocessing"]),
            None,
            None,
        )
        test_set = record["test_set"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: unreadable ({error!r}); the run directory is damaged, train it again") from None
    if test_set is None:
        return data
    arrays = files.load_arrays(run_dir / RUN_TEST_SET, "the run's test frames and labels")
    if set(arrays) != {"frames", "labels"}:
        raise DataError(f"{run_dir / RUN_TEST_SET}: expected frames and labels; the run directory is damaged")
    return replace(data, test_frames=arrays["frames"], test_labels=arrays["labels"].astype(np.int64))
