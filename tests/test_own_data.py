"""The user's own data end to end: ``edge-export train`` on a labelled .npz with class names, then
``edge-export export`` of the run: the bundle is verified on the run's own test split and names its
classes. Tiny (one float and one QAT epoch on a few hundred frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import load_bundle
from exporter import cli, run_data

pytest.importorskip("torch")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_train_on_an_npz_then_export_carries_the_class_names(tmp_path: Path, mnist_data, capsys):
    data_dir, config_dir = tmp_path / "data", tmp_path / "configs"
    data_dir.mkdir()
    config_dir.mkdir()
    np.savez(
        data_dir / "mine.npz",
        x_train=mnist_data.train_images[:256],
        y_train=mnist_data.train_labels[:256],
        x_test=mnist_data.test_images[:64, ..., None],  # (N, H, W, C) and (N, H, W) alike
        y_test=mnist_data.test_labels[:64].astype(np.int32),
        class_names=np.array(NAMES),
    )
    config = config_dir / "mine.toml"
    config.write_text(
        "[model]\nconv0 = 6\nconv1 = 8\nfc = 16\n"
        '[data]\nsource = "npz:../data/mine.npz"\n'
        "[train]\nthreads = 1\nfloat_epochs = 1\nqat_epochs = 1\nbatch_size = 64\n"
    )
    run = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 0
    record = json.loads((run / run_data.RUN_RECORD).read_text())
    assert record["source"] == f"npz:{config_dir / '../data/mine.npz'}"
    assert record["class_names"] == NAMES and record["input_shape"] == [28, 28, 1] and record["classes"] == 10
    with np.load(run / run_data.RUN_TEST_SET, allow_pickle=False) as saved:
        assert np.array_equal(saved["frames"][..., 0], mnist_data.test_images[:64])
    assert cli.main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest.class_names == tuple(NAMES)
    assert manifest.metrics.eval_set == "npz:mine.npz test split" and manifest.metrics.frames == 64
    assert "mine.npz" in manifest.input.preprocessing
    report = json.loads((run / "report.json").read_text())
    assert manifest.metrics.accuracy == pytest.approx(report["accuracy"])
