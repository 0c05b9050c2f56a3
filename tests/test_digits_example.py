"""The second worked example end to end (README "A second example"): the shipped DS-CNN-style config on
scikit-learn's digits, trained, exported and served over replay by ``edge-runtime serve`` on the
simulator. Tiny: one float and one QAT epoch on a slice of the digits."""

from __future__ import annotations

import json
from pathlib import Path

import akida
import numpy as np
import pytest
from daemon_support import REPO, daemon_process

from edge_runtime.bundle import load_bundle
from exporter import cli, run_data

pytest.importorskip("torch")
pytest.importorskip("sklearn")

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.mark.slow
def test_dscnn_on_digits_trains_exports_and_serves_every_replayed_frame(tmp_path: Path) -> None:
    run, bundle, replay = tmp_path / "run", tmp_path / "bundle", tmp_path / "frames.npy"
    sets = ("data.train_limit=320", "data.test_limit=24", "train.float_epochs=1", "train.qat_epochs=1")
    config = REPO / "exporter" / "configs" / "dscnn.toml"
    argv = ["train", "--config", str(config), "--out", str(run), "--no-progress"]
    assert cli.main([*argv, *(item for value in sets for item in ("--set", value))]) == 0
    assert cli.main(["export", str(run), "--out", str(bundle)]) == 0
    with np.load(run / run_data.RUN_TEST_SET, allow_pickle=False) as saved:
        frames, labels = saved["frames"], saved["labels"]
    assert frames.shape == (24, 8, 8, 1) and frames.dtype == np.uint8
    np.save(replay, frames)
    args = ["--model", str(bundle), "--source", f"replay:{replay}", "--backend", "simulator"]
    with daemon_process(tmp_path, [*args, "--predictions-stdout", "--exit-when-done"]) as daemon:
        assert daemon.wait_exit(120) == 0, "\n".join(daemon.stderr_lines)
    records = [json.loads(line) for line in daemon.stdout_lines]
    engine = akida.Model(str(bundle / "model.fbz")).forward(frames).reshape(len(frames), -1).argmax(axis=1)
    assert [r["seq"] for r in records] == list(range(len(frames)))
    assert {r["backend"] for r in records} == {"simulator"}
    assert [r["class"] for r in records] == engine.tolist()
    manifest = load_bundle(bundle).manifest
    assert manifest.class_names == NAMES  # from dscnn.toml's [data] class_names, into the log
    assert [r["class_name"] for r in records] == [NAMES[c] for c in engine]
    assert manifest.metrics.frames == len(frames)
    assert manifest.metrics.accuracy == pytest.approx(float(np.mean(engine == labels)))
    assert "stopped: 24 frames received, 24 inferred" in "\n".join(daemon.stderr_lines)
