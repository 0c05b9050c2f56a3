"""Ctrl-C works even when the process starts with SIGINT ignored; SIGTERM ends emulate-sensor with 0.

Issue 15, item 1: a background job of a non-interactive shell, and some CI runners, start commands
with SIGINT ignored, and Python then installs no SIGINT handler of its own; ``demo`` and
``emulate-sensor`` relied on it, so SIGINT did nothing and the demo ran on (no exit within 60 s).
Each command here is started exactly so (SIGINT set to SIG_IGN before exec), like ``cmd &`` does.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from bundle_fixtures import make_bundle

from edge_runtime.mnist import Mnist

EXIT_WAIT_S = 60.0
SUMMARY = re.compile(r"^summary: (\d+) frames inferred", re.MULTILINE)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def started_with_sigint_ignored(args: list[str]) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``python -m edge_runtime.cli ARGS`` with SIGINT ignored from the start; stdout lines in a queue."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_ignore_sigint,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        reader.join(10)


def wait_for_line(lines: queue.Queue[str], pattern: str) -> list[str]:
    seen: list[str] = []
    while not seen or not re.search(pattern, seen[-1]):
        seen.append(lines.get(timeout=EXIT_WAIT_S))  # queue.Empty fails the test: nothing printed in time
    return seen


def frames_file(tmp_path: Path) -> Path:
    path = tmp_path / "frames.npy"
    np.save(path, np.arange(4 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(4, 28, 28))
    return path


def test_ctrl_c_stops_emulate_sensor_started_with_sigint_ignored(tmp_path: Path) -> None:
    args = ["emulate-sensor", "--pty", "--link", str(tmp_path / "sensor"), "--frames", str(frames_file(tmp_path))]
    with started_with_sigint_ignored(args) as (process, lines):
        wait_for_line(lines, r"^/dev/")
        process.send_signal(signal.SIGINT)
        assert process.wait(EXIT_WAIT_S) == 130
        assert "interrupted" in (process.stderr.read() if process.stderr else "")
    assert not os.path.lexists(tmp_path / "sensor")


def test_sigterm_ends_emulate_sensor_with_status_0(tmp_path: Path) -> None:
    args = ["emulate-sensor", "--pty", "--link", str(tmp_path / "sensor"), "--frames", str(frames_file(tmp_path))]
    with started_with_sigint_ignored(args) as (process, lines):
        wait_for_line(lines, r"^/dev/")
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_WAIT_S) == 0
    assert not os.path.lexists(tmp_path / "sensor")


def test_ctrl_c_ends_a_demo_started_with_sigint_ignored(tmp_path: Path, mnist_data: Mnist) -> None:
    frames = mnist_data.test_images[:64, :, :, np.newaxis]
    make_bundle(tmp_path / "bundle", np.random.default_rng(3), frames, mnist_data.test_labels[:64])
    args = ["demo", "--metrics-addr", "127.0.0.1:0", "--model", str(tmp_path / "bundle"), "--seconds", "600"]
    with started_with_sigint_ignored(args) as (process, lines):
        seen = wait_for_line(lines, r"^\[\s*[\d.]+ s\]")  # the first status line: frames are flowing
        process.send_signal(signal.SIGINT)
        assert process.wait(EXIT_WAIT_S) == 0, "".join(seen)
    out = "".join(seen) + "".join(lines.queue)  # the reader has ended: every line is in
    summary = SUMMARY.search(out)
    assert "interrupted" in out and summary is not None and int(summary.group(1)) > 0, out
