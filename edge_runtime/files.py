"""Reading user-given arrays and writing outputs atomically: the one copy of each.

Every way a file can be wrong (missing, empty, truncated, an archive where one array was expected,
pickled objects) becomes a one-line :class:`DataError` naming the file and what was expected. Writes
go through a temporary file in the target's directory and ``os.replace``, so a reader sees the old
file or the complete new one, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DataError

# What np.load raises on a damaged or unsuitable file: EOFError for an empty file, BadZipFile and
# zlib.error for a damaged archive, ValueError for pickled objects or a bad header.
LOAD_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "empty or truncated file"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _np_load(path: Path | str) -> Any:
    """``np.load`` without pickles. An empty file is an EOFError on every NumPy we support (1.x reads
    it as pickled data and raises a ValueError that says so, which would mislead the user)."""
    if os.path.getsize(path) == 0:
        raise EOFError
    return np.load(path, allow_pickle=False)


def load_array(path: Path | str, what: str) -> np.ndarray:
    """One ``.npy`` array from ``path`` (no pickles); a one-line DataError otherwise."""
    try:
        loaded = _np_load(path)
    except LOAD_ERRORS as error:
        raise DataError(f"{path}: not a readable .npy array ({_reason(error)}); expected {what}") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise DataError(f"{path}: an .npz archive; expected {what} (one .npy array)")
    return loaded


def load_arrays(path: Path | str, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read now (so a damaged member fails here, as a DataError)."""
    try:
        loaded = _np_load(path)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: one .npy array; expected {what} (an .npz archive)")
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except LOAD_ERRORS as error:
        raise DataError(f"{path}: cannot read {what} ({_reason(error)})") from None


def as_hwc(images: np.ndarray, origin: str = "frames") -> np.ndarray:
    """Check uint8 (N, H, W[, C]) with N >= 1 and return it as (N, H, W, C)."""
    if images.dtype != np.uint8:
        raise DataError(f"{origin}: frames must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or 0 in images.shape:
        raise DataError(f"{origin}: frames must be (N, H, W[, C]) with no empty axis, got {images.shape}")
    return images


def load_frames(path: Path | str) -> np.ndarray:
    """uint8 frames from an ``.npy`` file as (N, H, W, C), N >= 1; (N, H, W) gains a channel axis."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such frames file")
    return as_hwc(load_array(path, "uint8 frames (N, H, W[, C])"), str(path))


def check_target(path: Path) -> None:
    """Refuse, before any work is done, an output path that cannot be written as a file."""
    path = Path(path)
    directory = path.parent
    if path.is_dir():
        raise DataError(f"cannot write {path}: it is a directory; give a file name")
    if not directory.is_dir():
        raise DataError(f"cannot write {path}: directory {directory} does not exist")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` via ``write(handle)`` on a temporary file in the same directory and ``os.replace``.

    The result is mode 0644 (the daemon runs as its own user) and on disk (fsync) before it replaces
    the old file, and the directory is synced after the rename, so the new name survives a power
    loss too (rename(2) changes the directory, which the file's fsync does not cover). On any
    failure the temporary file is removed and the old file, if any, is kept.
    """
    path = Path(path)
    check_target(path)
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            temporary = handle.name
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)  # NamedTemporaryFile makes 0600
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
        fsync_directory(path.parent)
    except OSError as error:
        raise DataError(f"cannot write {path}: {_reason(error)}") from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; POSIX has no other way than fsync on it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
