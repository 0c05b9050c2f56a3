"""The training data: load one labelled data set, check it, return uint8 frames and class names.

``[data] source`` in the training TOML chooses where the frames come from:

==============  ==================================================================================
``mnist``       the cached, digest-checked MNIST (``edge-export data fetch``); the default
``digits``      scikit-learn's bundled ``load_digits`` (1,797 8x8 digits), split 80/20 as below
``npz:PATH``    a labelled ``.npz``: ``x_train``, ``y_train``, ``x_test``, ``y_test``, optional
                ``class_names``; frames uint8 (N, H, W) or (N, H, W, C)
``idx:DIR``     the four standard IDX files of any data set (Fashion-MNIST, KMNIST, EMNIST...),
                gzipped or not, under their usual names
``images:DIR``  one folder of images per class, in ``train/`` and ``test/`` or split as below
==============  ==================================================================================

Frames come back as uint8 (N, H, W, C) in akida's layout (rows as X, columns as Y), labels as int64
class indices. Where a source has no split of its own (``digits``, an image folder without
``train/``/``test/``) the split is stratified and fixed: per class, a ``TEST_FRACTION`` of its
frames, chosen by NumPy's legacy ``RandomState(SPLIT_SEED)`` (whose stream NumPy keeps unchanged
across versions, unlike ``Generator``'s), so every machine trains and tests on the same frames.

Every problem is one :class:`DataError` line naming the file and what to do; nothing here trains or
knows about the network. (About 450 lines: five loaders that share one set of checks; what a run keeps of
its data is ``exporter.run_data``.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_runtime import files
from edge_runtime.errors import DataError

from . import mnist_fetch

SOURCE_KINDS = ("mnist", "digits", "npz", "idx", "images")
PATH_KINDS = ("npz", "idx", "images")  # the sources written KIND:PATH
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
# Pillow modes taken as they are or converted without loss of meaning, and what each becomes.
IMAGE_MODES = {"L": "L", "1": "L", "RGB": "RGB", "P": "RGB"}

MNIST_PREPROCESSING = (
    "28x28 8-bit greyscale, white digit on black (0 = background), as in MNIST: the image array (rows, "
    "columns) reshaped to (28, 28, 1) with no transpose, scaling or normalisation; the input layer takes "
    "raw pixel values"
)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A checked, labelled data set."""

    x_train: np.ndarray  # uint8 (N, H, W, C): akida's (X, Y, C) per frame
    y_train: np.ndarray  # int64 (N,) class indices
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] | None  # one per class; None: none given (classes are shown as 0..N-1)
    classes: int
    source: str  # as configured (paths absolute once the config resolved them)
    preprocessing: str  # how a raw frame becomes the model's input, for the bundle's manifest

    @property
    def input_shape(self) -> tuple[int, int, int]:
        _, x, y, c = self.x_train.shape
        return (x, y, c)


# --------------------------------------------------------------------------- the source setting


def parse_source(text: str) -> tuple[str, str]:
    """``"npz:data/x.npz"`` -> ``("npz", "data/x.npz")``; ``"mnist"`` -> ``("mnist", "")``.

    Raises DataError with the allowed forms for anything else."""
    kind, sep, path = text.partition(":")
    if kind in PATH_KINDS and sep and path:
        return kind, path
    if kind in SOURCE_KINDS and kind not in PATH_KINDS and not sep:
        return kind, ""
    raise DataError(
        f"data.source {text!r}: expected one of mnist, digits, npz:FILE.npz, idx:DIR, images:DIR "
        "(paths relative to the config file)"
    )


def resolve_source(text: str, base: Path) -> str:
    """The source with a relative path made relative to ``base`` (the config file's directory);
    anything unparsable is returned as it is, for the config check to report."""
    try:
        kind, path = parse_source(text)
    except DataError:
        return text
    if not path or Path(path).expanduser().is_absolute():
        return text
    return f"{kind}:{base / path}"


# --------------------------------------------------------------------------- checks


def check_class_names(names: Sequence[str], classes: int | None, origin: str) -> tuple[str, ...]:
    """Non-empty, unique, one line each and, if ``classes`` is given, that many."""
    from edge_runtime.bundle import class_names_problem  # the bundle's own rule; imported late: it loads the simulator

    names = tuple(names)
    problem = class_names_problem(names, len(names) if classes is None else classes)
    if problem is not None:
        raise DataError(f"{origin}: {problem}; give every class one name of its own, on one line")
    return names


def _frames(array: np.ndarray, what: str, origin: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(
            f"{origin}: {what} are {array.dtype}; frames must be uint8 0..255 "
            "(e.g. np.round(x * 255).astype(np.uint8) for floats in 0..1)"
        )
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or 0 in array.shape:
        raise DataError(f"{origin}: {what} are shaped {array.shape}; expected (N, H, W) or (N, H, W, C), N >= 1")
    return array


def _labels(array: np.ndarray, frames: int, what: str, origin: str) -> np.ndarray:
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise DataError(f"{origin}: {what} are {array.dtype} {array.shape}; expected (N,) integer class indices")
    if len(array) != frames:
        raise DataError(f"{origin}: {len(array)} {what} for {frames} frames; give one label per frame")
    if array.min() < 0:
        raise DataError(f"{origin}: {what} include {array.min()}; class indices start at 0")
    return array.astype(np.int64)


def check_dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: Sequence[str] | None,
    *,
    source: str,
    origin: str,
    preprocessing: str,
) -> Dataset:
    """Shapes, dtypes, label ranges and counts; returns the arrays as (N, H, W, C) uint8 / int64."""
    x_train, x_test = _frames(x_train, "x_train", origin), _frames(x_test, "x_test", origin)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{origin}: training frames are {x_train.shape[1:]}, test frames {x_test.shape[1:]}; "
            "both splits need one frame shape"
        )
    y_train = _labels(y_train, len(x_train), "y_train", origin)
    y_test = _labels(y_test, len(x_test), "y_test", origin)
    top = int(max(y_train.max(), y_test.max()))
    if class_names is not None:
        names = check_class_names(class_names, None, origin)
        if top >= len(names):
            raise DataError(
                f"{origin}: label {top} but {len(names)} class names; labels must be 0..{len(names) - 1}, "
                "or give a name for every class"
            )
        classes = len(names)
    else:
        names, classes = None, top + 1
    if classes < 2:
        raise DataError(f"{origin}: every label is 0; a classifier needs at least two classes")
    return Dataset(x_train, y_train, x_test, y_test, names, classes, source, preprocessing)


# --------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both ascending: per class, ``TEST_FRACTION`` of its frames
    (at least one when it has two or more) go to the test split, chosen with ``RandomState(SPLIT_SEED)``."""
    rng = np.random.RandomState(SPLIT_SEED)
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = max(round(len(members) * TEST_FRACTION), 1) if len(members) > 1 else 0
        test.append(rng.permutation(members)[:n])
    chosen = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    return rest, chosen


# --------------------------------------------------------------------------- sources


def load_mnist(cache_dir: Path | None) -> Dataset:
    split = mnist_fetch.load_mnist(cache_dir)
    return check_dataset(
        split.train_images,
        split.train_labels,
        split.test_images,
        split.test_labels,
        None,
        source="mnist",
        origin="the MNIST cache",
        preprocessing=MNIST_PREPROCESSING,
    )


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """load_digits' ink counts 0..16 to 0..255: round(v x 255 / 16), half up, in exact integers
    (0 -> 0, 8 -> 128, 16 -> 255)."""
    ints = np.asarray(values).astype(np.int64)
    return ((ints * 255 + 8) // 16).astype(np.uint8)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (shipped inside the package: no download), split as the module says."""
    from sklearn.datasets import load_digits as sklearn_digits  # the train extra

    digits = sklearn_digits()
    images, labels = digits_to_uint8(digits.images), np.asarray(digits.target)
    train, test = stratified_split(labels)
    return check_dataset(
        images[train],
        labels[train],
        images[test],
        labels[test],
        None,
        source="digits",
        origin="scikit-learn's load_digits",
        preprocessing="8x8 greyscale digit, ink high (0 = background): scikit-learn's load_digits values 0..16 "
        "scaled to round(v x 255 / 16), rows as X, as (8, 8, 1)",
    )


def load_npz(path: Path) -> Dataset:
    """A labelled .npz (no pickles: a class_names array must be a str array, not objects)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.source npz:FILE.npz; relative to the config file)")
    try:
        arrays = files.load_arrays(path, "a labelled data set (x_train, y_train, x_test, y_test)")
    except DataError as error:
        if "Object arrays" in str(error):
            raise DataError(
                f"{path}: holds an object array; save class_names as strings (np.array(names, dtype=str)) "
                "and every other array as numbers"
            ) from None
        raise
    missing = [name for name in NPZ_ARRAYS if name not in arrays]
    unknown = sorted(set(arrays) - {*NPZ_ARRAYS, "class_names"})
    if missing or unknown:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(
            f"{path}: has {found}; a data set .npz holds exactly x_train, y_train, x_test, y_test "
            "and optionally class_names"
        )
    names: tuple[str, ...] | None = None
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.dtype.kind != "U" or raw.ndim != 1:
            raise DataError(f"{path}: class_names is {raw.dtype} {raw.shape}; save it as np.array(names, dtype=str)")
        names = tuple(str(name) for name in raw)
    return check_dataset(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        names,
        source=f"npz:{path}",
        origin=str(path),
        preprocessing=f"uint8 frames as stored in {path.name} (N, H, W[, C]): rows as X, no scaling",
    )


# train-images-idx3-ubyte(.gz), train-images.idx3-ubyte (a common re-upload), t10k-* or test-*, and
# prefixed names such as EMNIST's emnist-letters-train-images-idx3-ubyte.
_IDX_NAME = re.compile(r"^(?:.*[-_])?(train|t10k|test)-(images|labels)[-.]idx(\d)-ubyte(\.gz)?$")


def find_idx_files(directory: Path) -> dict[str, Path]:
    """The four IDX files of ``directory`` by role (``train_images`` ...); raw preferred to .gz of the same name."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (data.source idx:DIR; relative to the config file)")
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        match = _IDX_NAME.match(path.name)
        if match and path.is_file():
            split = "train" if match.group(1) == "train" else "test"
            found.setdefault(f"{split}_{match.group(2)}", []).append(path)
    chosen: dict[str, Path] = {}
    for role in ("train_images", "train_labels", "test_images", "test_labels"):
        paths = found.get(role, [])
        stems = {path.name.removesuffix(".gz") for path in paths}
        if not paths:
            split, kind = role.split("_")
            example = f"{'train' if split == 'train' else 't10k'}-{kind}-idx{3 if kind == 'images' else 1}-ubyte[.gz]"
            raise DataError(f"{directory}: no {split} {kind} file (expected e.g. {example})")
        if len(stems) > 1:
            raise DataError(
                f"{directory}: several {role.replace('_', ' ')} files ({', '.join(p.name for p in paths)}); keep one"
            )
        chosen[role] = min(paths, key=lambda path: path.suffix == ".gz")  # the uncompressed one if both
    return chosen


def load_idx(directory: Path) -> Dataset:
    """Four IDX files, parsed by :func:`exporter.mnist_fetch.read_idx`.

    Why our own parser and not a package (idx2numpy, torchvision): the format is a 4-byte magic,
    one big-endian uint32 per dimension and the raw bytes, a dozen lines of NumPy that also check
    the length, where a dependency would bring more code than the format has."""
    paths = find_idx_files(directory)
    arrays = {role: mnist_fetch.read_idx(path) for role, path in paths.items()}
    return check_dataset(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        None,
        source=f"idx:{directory}",
        origin=str(directory),
        preprocessing=f"IDX images of {directory.name} as stored (rows as X), no scaling",
    )


def _class_folders(directory: Path) -> list[Path]:
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory}: no class folders; put each class's images in a folder named after it")
    return folders


def _image_files(folder: Path) -> list[Path]:
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}); every class folder needs some")
    return images


class _ImageReader:
    """Reads images with Pillow, all of one size and one kind (greyscale or RGB) as the first."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self.mode: str | None = None
        self.first: Path | None = None

    def read(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError  # the train extra

        try:
            with Image.open(path) as image:
                image.load()
                mode = IMAGE_MODES.get(image.mode)
                if mode is None:
                    raise DataError(f"{path}: image mode {image.mode}; save the images as 8-bit greyscale (L) or RGB")
                converted = image.convert(mode) if image.mode != mode else image
                array = np.asarray(converted, dtype=np.uint8)
                size = image.size
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DataError(f"{path}: not a readable image ({error})") from None
        if self.first is None:
            self.size, self.mode, self.first = size, mode, path
        elif size != self.size:
            raise DataError(
                f"{path}: {size[0]}x{size[1]} pixels, {self.first} is {self.size[0]}x{self.size[1]}; "  # type: ignore[index]
                "resize them all to one size"
            )
        elif mode != self.mode:
            kind = {"L": "greyscale", "RGB": "colour"}
            raise DataError(
                f"{path}: {kind[mode]}, {self.first} is {kind[self.mode or 'L']}; make them all greyscale or all RGB"
            )
        return array if array.ndim == 3 else array[..., np.newaxis]


def _read_split(folders: list[Path], names: list[str], reader: _ImageReader) -> tuple[np.ndarray, np.ndarray]:
    frames, labels = [], []
    for folder in folders:
        label = names.index(folder.name)
        for path in _image_files(folder):
            frames.append(reader.read(path))
            labels.append(label)
    return np.stack(frames), np.asarray(labels, dtype=np.int64)


def load_images(directory: Path) -> Dataset:
    """DIR/train/CLASS/* and DIR/test/CLASS/*, or DIR/CLASS/* split as the module says; class names
    are the training folders' names, sorted."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (data.source images:DIR; relative to the config file)")
    reader = _ImageReader()
    train_dir, test_dir = directory / "train", directory / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        present = "train" if train_dir.is_dir() else "test"
        raise DataError(f"{directory}: has {present}/ but not {'test' if present == 'train' else 'train'}/; give both")
    if train_dir.is_dir():
        train_folders, test_folders = _class_folders(train_dir), _class_folders(test_dir)
        names = [folder.name for folder in train_folders]
        extra = [folder.name for folder in test_folders if folder.name not in names]
        if extra:
            raise DataError(f"{test_dir}: class {extra[0]!r} has no training folder in {train_dir}")
        x_train, y_train = _read_split(train_folders, names, reader)
        x_test, y_test = _read_split(test_folders, names, reader)
    else:
        folders = _class_folders(directory)
        names = [folder.name for folder in folders]
        frames, labels = _read_split(folders, names, reader)
        train, test = stratified_split(labels)
        if len(test) == 0:
            raise DataError(f"{directory}: too few images to split off a test set; give each class two or more")
        x_train, y_train, x_test, y_test = frames[train], labels[train], frames[test], labels[test]
    assert reader.size is not None
    kind = "greyscale" if reader.mode == "L" else "RGB"
    return check_dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        names,
        source=f"images:{directory}",
        origin=str(directory),
        preprocessing=f"{reader.size[0]}x{reader.size[1]} 8-bit {kind} image as Pillow reads it "
        "(rows as X), no resizing or scaling",
    )


def load_dataset(source: str, cache_dir: Path | None = None, class_names: Sequence[str] = ()) -> Dataset:
    """The data set ``source`` names (see the module doc), its class names replaced by
    ``class_names`` when given (``[data] class_names``: one per class)."""
    kind, path = parse_source(source)
    if kind == "mnist":
        dataset = load_mnist(cache_dir)
    elif kind == "digits":
        dataset = load_digits()
    else:
        loader = {"npz": load_npz, "idx": load_idx, "images": load_images}[kind]
        dataset = loader(Path(path).expanduser())
    if not class_names:
        return dataset
    names = check_class_names(class_names, dataset.classes, f"data.class_names for {dataset.source}")
    return replace(dataset, class_names=names)
