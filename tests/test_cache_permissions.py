"""An unreadable MNIST cache is one line and exit 2; atomic writes sync the directory (issue 15, item 12).

Root ignores file modes, so the unreadable cases run the command in a new user namespace
(``unshare --user``): there the process has no capabilities over the host's files, so a mode-000
file or directory owned by root really is unreadable to it, as for the daemon's own user.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import files

EDGE_RUNTIME = Path(sys.executable).with_name("edge-runtime")
UNSHARE = shutil.which("unshare") or "unshare"  # util-linux, on every machine of this project


def run_unprivileged(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [UNSHARE, "--user", str(EDGE_RUNTIME), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_unreadable_cache_is_one_line_and_exit_2(tmp_path: Path, what: str) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist-v1.npz").write_bytes(b"PK\x05\x06" + bytes(18))  # content never gets read
    locked = cache / "mnist-v1.npz" if what == "file" else cache
    locked.chmod(0)
    try:
        result = run_unprivileged(["emulate-sensor", "--pty"], cache)
    finally:
        locked.chmod(0o700)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "cannot read the MNIST cache" in lines[0] and "Permission denied" in lines[0]
    assert "delete it" not in lines[0]  # deleting a cache we may not read is not the fix


def test_the_negative_control_reads_a_readable_cache_past_the_permission_check(tmp_path: Path) -> None:
    """Same command and namespace, readable (but damaged) cache: the error is about its content."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    (cache / "mnist-v1.npz").write_bytes(b"not a zip")
    (cache / "mnist-v1.npz").chmod(0o644)
    result = run_unprivileged(["emulate-sensor", "--pty"], cache)
    assert result.returncode == 2 and "corrupt MNIST cache" in result.stderr, result.stderr[-2000:]


def test_atomic_write_syncs_the_directory_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.npy"
    synced: list[tuple[bool, int, bool]] = []  # (is a directory, inode, target already in place)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    files.atomic_write(target, lambda handle: np.save(handle, np.arange(3)))
    assert np.array_equal(np.load(target), np.arange(3))
    directory = os.stat(tmp_path).st_ino
    assert (True, directory, True) in synced, synced  # the directory, after the new name was in place
    assert synced[0][0] is False  # and the file itself first, before the rename
