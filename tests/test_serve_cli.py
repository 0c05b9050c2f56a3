"""``edge-runtime serve`` for batch use: a finite replay is logged when it ends and --exit-when-done exits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from daemon_support import build_bundle, daemon_process, scrape_when, total, value, wait_for

from edge_runtime.mnist import Mnist


def test_exit_when_done_serves_every_frame_then_exits_0(tmp_path: Path, mnist_data: Mnist) -> None:
    frames = mnist_data.test_images[:40, :, :, None]
    under_test = build_bundle(tmp_path / "bundle", 5, frames, mnist_data.test_labels[:40])
    replay = frames[:25]
    np.save(tmp_path / "frames.npy", replay)
    args = [
        "--model",
        str(tmp_path / "bundle"),
        "--source",
        f"replay:{tmp_path / 'frames.npy'}",
        "--backend",
        "simulator",
        "--predictions-stdout",
        "--exit-when-done",
    ]
    with daemon_process(tmp_path, args) as daemon:
        assert daemon.wait_exit(120) == 0, "\n".join(daemon.stderr_lines)
    predictions = [json.loads(line) for line in daemon.stdout_lines]
    assert [p["seq"] for p in predictions] == list(range(25))
    assert [p["class"] for p in predictions] == under_test.predict(replay).tolist()
    log = "\n".join(daemon.stderr_lines)
    assert f"source replay:{tmp_path / 'frames.npy'} finished: no more frames; draining the queue, then exiting" in log
    assert "stopped: 25 frames received, 25 inferred" in log


def test_without_the_flag_a_finished_replay_is_logged_and_the_daemon_keeps_serving(
    tmp_path: Path, mnist_data: Mnist
) -> None:
    frames = mnist_data.test_images[:40, :, :, None]
    build_bundle(tmp_path / "bundle", 5, frames, mnist_data.test_labels[:40])
    np.save(tmp_path / "frames.npy", frames[:3])
    args = [
        "--model",
        str(tmp_path / "bundle"),
        "--source",
        f"replay:{tmp_path / 'frames.npy'}",
        "--backend",
        "simulator",
    ]
    with daemon_process(tmp_path, args) as daemon:
        wait_for(
            lambda: any(
                "finished: no more frames; still serving /metrics until stopped" in line for line in daemon.stderr_lines
            ),
            60,
            "the 'source finished' log line",
        )
        samples = scrape_when(daemon.url, lambda s: total(s, "edge_inferences_total") == 3, "3 inferences")
        assert value(samples, "edge_sensor_up") == 0 and daemon.process.poll() is None  # still serving
