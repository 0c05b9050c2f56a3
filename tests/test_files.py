"""The shared array loaders and the atomic writer: every bad file is one DataError, no write leaks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import files
from edge_runtime.errors import DataError


def bad_npy(tmp_path: Path, kind: str) -> Path:
    """A file named .npy that np.load cannot turn into one plain array."""
    path = tmp_path / f"{kind}.npy"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "npz":
        with path.open("wb") as handle:
            np.savez(handle, frames=np.zeros((2, 3, 3), np.uint8))
    elif kind == "pickled":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "damaged-npz":
        with path.open("wb") as handle:
            np.savez(handle, frames=np.zeros((2, 3, 3), np.uint8))
        path.write_bytes(path.read_bytes()[:40])
    elif kind == "text":
        path.write_text("1,2,3\n")
    return path


BAD_NPY = {
    "empty": "empty or truncated",
    "npz": "an .npz archive",
    "pickled": "not a readable .npy array",
    "damaged-npz": "not a readable .npy array",
    "text": "not a readable .npy array",
}


@pytest.mark.parametrize(("kind", "message"), BAD_NPY.items())
def test_load_array_turns_every_bad_file_into_one_data_error(tmp_path: Path, kind: str, message: str) -> None:
    path = bad_npy(tmp_path, kind)
    with pytest.raises(DataError, match=message) as caught:
        files.load_array(path, "the test array")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_load_array_closes_an_npz_it_refuses(tmp_path: Path) -> None:
    path = bad_npy(tmp_path, "npz")
    for _ in range(5):
        with pytest.raises(DataError):
            files.load_array(path, "x")
    # Look for descriptors on this very file: other tests' threads may open and close fds meanwhile.
    still_open = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed between listdir and readlink
            continue
        if target == str(path.resolve()):
            still_open.append(fd)
    assert still_open == []


@pytest.mark.parametrize("kind", ["empty", "damaged-npz", "text"])
def test_load_arrays_refuses_bad_archives(tmp_path: Path, kind: str) -> None:
    with pytest.raises(DataError, match="cannot read the archive"):
        files.load_arrays(bad_npy(tmp_path, kind), "the archive")


def test_load_arrays_refuses_a_single_array(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"one \.npy array; expected the archive"):
        files.load_arrays(tmp_path / "one.npy", "the archive")


def test_load_frames_adds_the_channel_axis(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.zeros((2, 3, 4), np.uint8))
    assert files.load_frames(tmp_path / "f.npy").shape == (2, 3, 4, 1)
    with pytest.raises(DataError, match="no such frames file"):
        files.load_frames(tmp_path / "absent.npy")


def test_atomic_write_makes_a_readable_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        files.atomic_write(tmp_path / "out.bin", lambda handle: handle.write(b"data"))
    finally:
        os.umask(old_umask)
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    (tmp_path / "out.bin").write_bytes(b"precious")

    def fail(handle: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(DataError, match=r"cannot write .*out.bin: No space left on device"):
        files.atomic_write(tmp_path / "out.bin", fail)
    with pytest.raises(RuntimeError):  # a bug keeps its traceback, but still leaves nothing behind
        files.atomic_write(tmp_path / "out.bin", lambda handle: (_ for _ in ()).throw(RuntimeError("bug")))
    assert (tmp_path / "out.bin").read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failed_replace_removes_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: str, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(DataError, match="Permission denied"):
        files.atomic_write(tmp_path / "out.bin", lambda handle: handle.write(b"x"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("target", "message"), [("", "is a directory"), ("absent/out.bin", "does not exist")])
def test_atomic_write_refuses_a_directory_or_a_missing_parent(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=message):
        files.atomic_write(tmp_path / "sub" / target, lambda handle: handle.write(b"x"))
    assert os.listdir(tmp_path) == ["sub"] and os.listdir(tmp_path / "sub") == []
