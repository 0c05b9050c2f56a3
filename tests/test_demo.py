"""``edge-runtime demo``: the main job runs, reports live, stops on its own or on Ctrl-C, and is accurate."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import make_bundle

from edge_runtime.demo import BUNDLE_NAME
from edge_runtime.demo_report import PredictionLog, activation_sparsity
from edge_runtime.mnist import Mnist

REPO = Path(__file__).resolve().parent.parent
STATUS = re.compile(
    r"^\[\s*[\d.]+ s\]\s+([\d.]+) frames/s \| energy/inference ([\d.]+) µJ(?: \(\d+% less than "
    r"baseline\))?, dynamic [\d.]+ µJ \| activation sparsity ([\d.]+) \| accuracy ([\d.]+)% "
    r"\((\d+)/(\d+)\)"
)
HEADLINE = re.compile(r"^  against mnist-baseline: total [\d.]+ µJ -> ([\d.]+)% less")
SUMMARY = re.compile(r"^summary: (\d+) frames inferred in ([\d.]+) s on (\w+)")
ACCURACY = re.compile(r"^accuracy: ([\d.]+)% \((\d+)/(\d+) MNIST test frames\)")


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", "demo", "--metrics-addr", "127.0.0.1:0", *args]


def matches(pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    return [m for line in text.splitlines() if (m := pattern.match(line))]


@pytest.mark.slow
def test_demo_serves_the_committed_bundle_accurately() -> None:
    """The README's main job, as ``./dev demo`` runs it (default bundle), cut to a few seconds."""
    assert (REPO / "models" / BUNDLE_NAME / "manifest.json").is_file(), f"models/{BUNDLE_NAME} is not committed"
    result = subprocess.run(
        demo_command("--seconds", "4"), capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    status = matches(STATUS, result.stdout)
    assert len(status) == 4, result.stdout
    scored = [int(m.group(6)) for m in status]
    assert scored == sorted(scored) and scored[-1] > 0, result.stdout  # frames flowing (how fast: bench/)
    assert all(0 < float(m.group(3)) < 1 for m in status), result.stdout
    [summary] = matches(SUMMARY, result.stdout)
    [accuracy] = matches(ACCURACY, result.stdout)
    assert int(summary.group(1)) > 0
    assert int(accuracy.group(3)) == int(summary.group(1))  # every inferred frame was scored
    assert float(accuracy.group(1)) > 90, result.stdout
    # the headline saving is the two committed manifests' total energies on AKD1000
    [headline] = matches(HEADLINE, result.stdout)
    manifests = {
        name: json.loads((REPO / "models" / name / "manifest.json").read_text())
        for name in ("mnist-baseline", BUNDLE_NAME)
    }
    totals = [manifests[name]["metrics"]["energy"]["akd1000"]["total_j"] for name in ("mnist-baseline", BUNDLE_NAME)]
    assert float(headline.group(1)) == pytest.approx(100 * (1 - totals[1] / totals[0]), abs=0.05)


@pytest.mark.slow
def test_ctrl_c_ends_the_demo_cleanly_with_a_summary(tmp_path: Path, mnist_data: Mnist) -> None:
    frames = mnist_data.test_images[:64, :, :, np.newaxis]
    make_bundle(tmp_path / "bundle", np.random.default_rng(3), frames, mnist_data.test_labels[:64])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A shell starts background jobs with SIGINT ignored (e.g. `./dev test &`), and an ignored signal
    # stays ignored across exec: the demo would never see the Ctrl-C below. A caught one is reset to
    # the default at exec, so catch it in this process while the demo is spawned.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        demo = subprocess.Popen(
            demo_command("--model", str(tmp_path / "bundle"), "--seconds", "120"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    with demo:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout or ()], daemon=True)
        reader.start()
        seen: list[str] = []
        try:
            while not seen or not STATUS.match(seen[-1]):
                seen.append(lines.get(timeout=60))  # queue.Empty fails the test: no status line in time
            demo.send_signal(signal.SIGINT)
            assert demo.wait(timeout=60) == 0, "".join(seen)
        finally:
            demo.kill()
        reader.join()
    out = "".join(seen) + "".join(lines.queue)
    assert "interrupted" in out
    [summary] = matches(SUMMARY, out)
    assert int(summary.group(1)) > 0 and summary.group(3) == "simulator"


def test_prediction_log_scores_lines_as_they_complete_and_follows_rotation(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    path = tmp_path / "predictions.jsonl"
    log = PredictionLog(path, labels)
    log.poll()  # no file yet: nothing to read, no error
    assert log.total == 0

    def record(seq: int, cls: int) -> bytes:
        return json.dumps({"seq": seq, "class": cls}).encode() + b"\n"

    with open(path, "wb") as out:
        out.write(record(0, 3) + record(1, 2) + record(7, 4)[:5])  # seq 7 is label index 2; half a line
        out.flush()
        log.poll()
        assert (log.correct, log.total) == (1, 2)
        out.write(record(7, 4)[5:])
    os.replace(path, tmp_path / "predictions.jsonl.1")  # the daemon's rotation
    path.write_bytes(record(8, 1))
    log.poll()
    log.close()
    assert (log.correct, log.total) == (3, 4)
    assert log.accuracy == 0.75


def test_activation_sparsity_pools_neurons_over_the_layers_that_fire() -> None:
    neurons = {"conv0": 1000, "fc2": 100}
    assert activation_sparsity({"conv0": 100.0, "fc2": 10.0, "fc3": 10.0}, neurons) == pytest.approx(0.9)
    assert activation_sparsity({"conv0": 0.0, "fc2": 100.0}, neurons) == pytest.approx(1 - 100 / 1100)
    assert np.isnan(activation_sparsity({"conv0": float("nan"), "fc2": 1.0}, neurons))
    assert np.isnan(activation_sparsity({}, neurons))
