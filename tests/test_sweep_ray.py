"""``edge-export sweep --ray``: the same runs and Pareto table as the local path, on a local Ray instance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli
from exporter.config import load_config
from exporter.sweep import grid_points, parse_grid, run_sweep

TINY = (
    "[model]\nconv0 = 4\nconv1 = 4\nfc = 8\n[data]\ntrain_limit = 128\ntest_limit = 64\n"
    "[train]\nthreads = 1\nfloat_epochs = 0\nqat_epochs = 1\nbatch_size = 64\nseed = 3\n"
)


def test_seeds_multiply_every_point_the_baseline_too(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(TINY)
    base = load_config(tmp_path / "tiny.toml")
    points = grid_points(base, parse_grid(["penalty.activations=1.0,4.0"]), seeds=2)
    assert [name for name, _ in points] == [
        "baseline-seed=3",
        "baseline-seed=4",
        "activations=1.0-seed=3",
        "activations=1.0-seed=4",
        "activations=4.0-seed=3",
        "activations=4.0-seed=4",
    ]
    assert [config.train.seed for _, config in points] == [3, 4] * 3
    assert [name for name, _ in grid_points(base, parse_grid(["penalty.activations=1.0"]))] == [
        "baseline",
        "activations=1.0",
    ]


def test_ray_without_its_extra_is_one_line_naming_it(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    argv = ["sweep", "--config", str(tmp_path / "tiny.toml"), "--grid", "penalty.activations=1.0"]
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--ray", "auto", "--no-progress"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "needs the ray extra" in message and "akida-edge[ray]" in message
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--ray", "auto", "--jobs", "2"]) == 2
    assert "--ray and --jobs exclude each other" in capsys.readouterr().err


def test_nothing_imports_ray_unless_asked():
    code = (
        "import sys, edge_runtime.cli, exporter.cli, exporter.sweep, exporter.train\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_ray_sweep_gives_the_local_table_and_runs(tmp_path: Path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
    (tmp_path / "tiny.toml").write_text(TINY)
    base = load_config(tmp_path / "tiny.toml")
    grid = parse_grid(["penalty.activations=4.0"])
    local = run_sweep(base, grid, tmp_path / "local", progress=False, jobs=1, seeds=2)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(base, grid, tmp_path / "ray", progress=True, seeds=2, ray_address="local")
        assert ray.is_initialized()  # a cluster the caller connected to is left connected
    finally:
        ray.shutdown()
    assert remote == local and len(local) == 4
    assert (tmp_path / "ray" / "pareto.csv").read_text() == (tmp_path / "local" / "pareto.csv").read_text()
    assert (tmp_path / "ray" / "pareto.md").read_text() == (tmp_path / "local" / "pareto.md").read_text()
    for name in ("baseline-seed=3", "activations=4.0-seed=4"):
        here, there = tmp_path / "local" / "runs" / name, tmp_path / "ray" / "runs" / name
        assert sorted(p.name for p in here.iterdir()) == sorted(p.name for p in there.iterdir())
        for filename in ("params.npz", "eval_scores.npy", "spec.json", "config.json"):
            assert (here / filename).read_bytes() == (there / filename).read_bytes(), filename
        reports = [json.loads((run / "report.json").read_text()) for run in (here, there)]
        for report in reports:
            report.pop("train_seconds")
            for entry in report["history"]:
                entry.pop("seconds")
        assert reports[0] == reports[1]
