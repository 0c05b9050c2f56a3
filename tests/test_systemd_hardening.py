"""The unit's sandbox settings that go beyond the basics, each checked against what the daemon really does.

There is no service manager on these machines (no ``systemd-run``), so each setting is checked the
nearest real way: ``systemd-analyze security --offline`` for what systemd itself makes of the unit,
the kernel's own W^X switch (``PR_SET_MDWE``, what MemoryDenyWriteExecute= enforces) around a real
daemon run, and ``strace`` for the system calls SystemCallFilter=~@privileged would refuse. Each
check has a negative control, so a wrapper that silently did nothing would fail the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from daemon_support import build_bundle
from test_systemd import SYSTEMD_ANALYZE, local_copy

from edge_runtime.mnist import Mnist

EDGE_RUNTIME = Path(sys.executable).with_name("edge-runtime")
STRACE = shutil.which("strace") or "strace"  # Debian package strace; missing, the tests fail rather than skip
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # linux/prctl.h (Linux 6.3+)

# Runs argv[1:] with W^X enforced by the kernel (inherited across exec). It first shows that the
# switch is on: a writable and executable mapping must be refused.
UNDER_MDWE = textwrap.dedent(f"""
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_MDWE) failed: errno {{ctypes.get_errno()}}")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        print("W^X enforced", file=sys.stderr, flush=True)
    os.execv(sys.argv[1], sys.argv[1:])
""")


def _security(unit: Path) -> dict[str, str]:
    """systemd-analyze's verdict per setting: {'MemoryDenyWriteExecute=': '✓', ...}."""
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    verdicts = {}
    for line in result.stdout.splitlines():
        mark, _, rest = line.partition(" ")
        if mark in ("✓", "✗") and rest:
            verdicts[rest.split()[0]] = mark
    assert verdicts, result.stdout + result.stderr
    return verdicts


def test_systemd_counts_the_added_settings(tmp_path: Path) -> None:
    verdicts = _security(local_copy(tmp_path))
    assert verdicts["MemoryDenyWriteExecute="] == "✓"
    assert verdicts["SystemCallFilter=~@privileged"] == "✓"
    # Control: the same unit without them is flagged on exactly these lines.
    unit = local_copy(tmp_path)
    text = "\n".join(
        line
        for line in unit.read_text().splitlines()
        if not line.startswith(("MemoryDenyWriteExecute=", "SystemCallFilter=~"))
    )
    unit.write_text(text + "\n")
    loose = _security(unit)
    assert loose["MemoryDenyWriteExecute="] == "✗" and loose["SystemCallFilter=~@privileged"] == "✗"


@pytest.fixture
def bundle(tmp_path: Path, mnist_data: Mnist) -> Path:
    frames = mnist_data.test_images[:64, :, :, None]
    build_bundle(tmp_path / "bundle", 7, frames, mnist_data.test_labels[:64])
    return tmp_path / "bundle"


def _demo(bundle: Path) -> list[str]:
    """The demo: serial source over a pty (with its reader child process), metrics, prediction log, backend auto."""
    return [str(EDGE_RUNTIME), "demo", "--seconds", "2", "--model", str(bundle), "--metrics-addr", "127.0.0.1:0"]


def _serve_onnx(bundle: Path, frames: Path) -> list[str]:
    return [
        str(EDGE_RUNTIME),
        "serve",
        "--model",
        str(bundle),
        "--source",
        f"replay:{frames}",
        "--backend",
        "onnx",
        "--metrics-addr",
        "127.0.0.1:0",
        "--predictions-stdout",
        "--exit-when-done",
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)


@pytest.mark.slow
def test_the_daemon_runs_with_writable_executable_memory_refused(
    tmp_path: Path, bundle: Path, mnist_data: Mnist
) -> None:
    demo = _run([sys.executable, "-c", UNDER_MDWE, *_demo(bundle)])
    assert demo.returncode == 0 and "W^X enforced" in demo.stderr, demo.stderr
    assert "frames/s" in demo.stdout and "Traceback" not in demo.stderr, demo.stdout + demo.stderr
    np.save(tmp_path / "frames.npy", mnist_data.test_images[:20])
    onnx = _run([sys.executable, "-c", UNDER_MDWE, *_serve_onnx(bundle, tmp_path / "frames.npy")])
    assert onnx.returncode == 0 and "W^X enforced" in onnx.stderr, onnx.stderr
    assert len(onnx.stdout.splitlines()) == 20  # every frame inferred by onnxruntime


def _syscalls(group: str) -> set[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    listing = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        name = line.strip()
        if name.startswith("@"):
            names |= _syscalls(name)
        elif name and not name.startswith("#"):
            names.add(name)
    return names


def _traced(argv: list[str], syscalls: set[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``argv`` (and its children) under strace, recording only ``syscalls``."""
    log = tmp_path / "strace.log"
    trace = ",".join(f"?{name}" for name in sorted(syscalls))  # ?: names this architecture lacks are fine
    result = _run([STRACE, "-f", "-qq", "-e", "signal=none", "-e", f"trace={trace}", "-o", str(log), *argv])
    return result, log.read_text()


@pytest.mark.slow
def test_the_daemon_makes_no_privileged_system_call(tmp_path: Path, bundle: Path) -> None:
    privileged = _syscalls("@privileged")
    assert {"setuid", "chown", "setgroups", "capset"} <= privileged
    # Control: strace does see a privileged call when one is made.
    _, control = _traced([sys.executable, "-c", "import os; os.setgroups(os.getgroups())"], privileged, tmp_path)
    assert "setgroups(" in control, control
    result, calls = _traced(_demo(bundle), privileged, tmp_path)
    assert result.returncode == 0 and "frames/s" in result.stdout, result.stderr
    assert calls == "", calls
