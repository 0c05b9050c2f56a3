"""A truncated or damaged ``.fbz`` gives one line and exit 2, never a crash (issue 15, item 2).

``edge-runtime simulate`` runs as a child process here: before the fix akida's reader took the
whole process down with SIGSEGV (exit -11), which inside pytest would have killed the test run.
The reference for "damaged" is akida itself: each damaged file is also read by a bare
``akida.Model(path)`` in a child, and the cases kept are those where that crashes or the file is cut.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.akida_model import load_model
from edge_runtime.errors import ModelError
from edge_runtime.fbz_check import snappy_frame_size

REPO = Path(__file__).resolve().parent.parent
FBZ = REPO / "models" / "mnist-zeroaware" / "model.fbz"
EDGE_RUNTIME = Path(sys.executable).with_name("edge-runtime")


def simulate(model: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((2, 28, 28, 1), np.uint8))
    return subprocess.run(
        [str(EDGE_RUNTIME), "simulate", str(model), str(frames), "--out", str(tmp_path / "o.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def bare_akida_read(model: Path) -> int:
    """akida.Model(path) in a child: its exit status, negative for a signal (the unguarded behaviour)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys, akida; akida.Model(sys.argv[1])", str(model)],
        capture_output=True,
        timeout=300,
        check=False,
    ).returncode


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in result.stderr and words in lines[0], lines


@pytest.mark.parametrize("size", [0, 100, 1_000, 100_000, 200_000, 400_000])
def test_a_cut_model_file_is_refused_in_one_line(size: int, tmp_path: Path) -> None:
    cut = tmp_path / "cut.fbz"
    cut.write_bytes(FBZ.read_bytes()[:size])
    result = simulate(cut, tmp_path)
    assert_one_line_exit_2(result, "truncated" if size else "no model header")


def test_the_sizes_that_crash_akida_are_among_those_refused(tmp_path: Path) -> None:
    """The independent check: what a bare akida read does with the cuts the issue names."""
    statuses = {}
    for size in (100, 1_000, 100_000):
        cut = tmp_path / f"cut{size}.fbz"
        cut.write_bytes(FBZ.read_bytes()[:size])
        statuses[size] = bare_akida_read(cut)
    assert all(status < 0 for status in statuses.values()), statuses


def test_bit_flips_that_crash_akida_are_reported_not_fatal(tmp_path: Path) -> None:
    data = FBZ.read_bytes()
    rng = random.Random(15)
    crashing: Path | None = None
    for attempt in range(40):  # about 1 in 3 such files crashes akida (measured); find one
        damaged = bytearray(data)
        for _ in range(4):
            index = rng.randrange(1, 100_000)  # inside the compressed model, after the size preamble
            damaged[index] ^= 1 << rng.randrange(8)
        path = tmp_path / f"flip{attempt}.fbz"
        path.write_bytes(bytes(damaged))
        if bare_akida_read(path) < 0:
            crashing = path
            break
    assert crashing is not None, "no bit-flipped file crashed akida: the reference changed"
    assert_one_line_exit_2(simulate(crashing, tmp_path), "damaged: akida's reader died")
    with pytest.raises(ModelError, match="SIGSEGV"):
        load_model(crashing)


def test_an_intact_model_still_loads_and_its_size_is_what_akida_writes() -> None:
    data = FBZ.read_bytes()
    assert snappy_frame_size(data) == len(data)
    assert [layer.name for layer in load_model(FBZ).layers] == ["conv0", "conv1", "fc2", "fc3"]
