"""The MNIST study: baseline vs zero-aware training over three seeds, measured on the exported models with
akida's engine.

Usage (from the repository root, in the venv):

    python bench/study.py --train               # train the runs that are missing (runs/study/ARM-sSEED), measure
    python bench/study.py                       # only measure the run directories that exist
    python bench/study.py --arms baseline zeroaware --seeds 0   # a subset
    python bench/study.py --study digits --train   # the second worked example (DS-CNN on sklearn's digits,
                                                   # runs/study-digits/ARM-sSEED)

An arm is a training config plus ``--set`` overrides (``ARMS``); baseline and zero-aware arms of one topology share the
network, bit widths, epochs and seeds. Everything reported is measured on all the run's test images (MNIST's 10,000) by
akida's own software engine running the integer parameters of each run directory (not the training graph): accuracy,
non-zero activations per image per layer (the engine's outputs of each layer, obtained by popping the layers after it),
and non-zero weights. Energy and latency come from the energy/latency model v2 (edge_runtime/energy.py, fitted to Akida
silicon measurements) on AKD1000 and AKD1500, each model mapped by akida's own mapper, fed with the bit-exact
simulator's counters (the study checks the engine's outputs equal the simulator's). The table gives 3-seed means and
their spread (min..max); reductions and targets are computed on the means. Writes docs/results/mnist.md,
docs/results/mnist.json and docs/results/mnist-pareto.png (bench/study_report.py); ``--study digits`` the DS-CNN-style
net on scikit-learn's digits (docs/results/digits.*), each run measured on its own recorded test split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import akida
import numpy as np

from edge_runtime.akida_model import load_model
from edge_runtime.energy import DEVICES, DeviceProfile
from edge_runtime.mapping import DEFAULT_MAP_MODE, map_model
from edge_runtime.simulator import Simulator
from exporter import mnist_fetch
from exporter.qat import to_akida
from exporter.run_data import read_run_data
from exporter.run_files import layers_from_arrays

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_report

ROOT = Path(__file__).resolve().parents[1]
NO_PENALTY = ("penalty.activations=0", "penalty.weights=0")


@dataclass(frozen=True)
class Arm:
    """One study arm: a config and its overrides; ``topology`` groups an arm with its baseline."""

    config: str
    overrides: tuple[str, ...]
    topology: str
    baseline: bool
    label: str


ARMS = {
    "baseline": Arm("exporter/configs/baseline.toml", (), "mnist", True, "baseline"),
    "zeroaware": Arm("exporter/configs/zeroaware.toml", (), "mnist", False, "zero-aware (count-only)"),
    "zeroaware-energy": Arm(
        "exporter/configs/zeroaware.toml",
        ("penalty.weighting=energy",),
        "mnist",
        False,
        "zero-aware (cost-weighted, AKD1000)",
    ),
    "iscas-baseline": Arm("exporter/configs/iscas.toml", NO_PENALTY, "iscas", True, "ISCAS net, baseline"),
    "iscas": Arm("exporter/configs/iscas.toml", (), "iscas", False, "ISCAS net, zero-aware"),
    "dscnn-baseline": Arm("exporter/configs/dscnn.toml", NO_PENALTY, "digits", True, "DS-CNN, baseline"),
    "dscnn": Arm("exporter/configs/dscnn.toml", (), "digits", False, "DS-CNN, zero-aware"),
}
# Which arms each study page compares (its name: docs/results/NAME.md, .json, -pareto.png).
STUDIES = {
    "mnist": ("baseline", "zeroaware", "zeroaware-energy", "iscas-baseline", "iscas"),
    "digits": ("dscnn-baseline", "dscnn"),
}
# The bundles committed under models/ per study, by the arm whose seed-0 run each is.
COMMITTED = {
    "mnist": {"baseline": "mnist-baseline", "zeroaware": "mnist-zeroaware"},
    "digits": {"dscnn": "digits-dscnn"},
}
SEEDS = (0, 1, 2)


def run_dir(runs: Path, arm: str, seed: int) -> Path:
    return runs / f"{arm}-s{seed}"


def train(arm: Arm, seed: int, out: Path) -> None:
    """Train one run through the CLI, as a user would (its report.json records the wall-clock)."""
    sets = [item for value in (*arm.overrides, f"train.seed={seed}") for item in ("--set", value)]
    command = [sys.executable, "-m", "exporter.cli", "train", "--config", arm.config, "--out", str(out)]
    subprocess.run([*command, *sets, "--no-progress"], cwd=ROOT, check=True)


def engine_layer_outputs(engine: akida.Model, frames: np.ndarray) -> list[np.ndarray]:
    """akida's engine outputs of every layer: full model, then with trailing layers popped."""
    outputs = [engine.forward(frames)]
    for _ in range(len(engine.layers) - 1):
        engine.pop_layer()
        outputs.append(engine.forward(frames))
    return outputs[::-1]


def saved_fbz(run: Path) -> Path:
    """The run's integer parameters saved as a .fbz with akida's API (made once, next to them)."""
    fbz = run / "study-model.fbz"
    if not fbz.is_file():
        specs = json.loads((run / "spec.json").read_text())["layers"]
        with np.load(run / "params.npz") as npz:
            to_akida(layers_from_arrays(npz, specs)).save(str(fbz))
    return fbz


def v2_figures(fbz: Path, counters: tuple) -> dict[str, dict[str, Any]]:
    """Per device: the packaged v2 profile on akida's mapping of the model and the simulator's counters."""
    out = {}
    for device in DEVICES:
        profile = DeviceProfile.packaged(device)
        mapping = map_model(akida.Model(str(fbz)), device, DEFAULT_MAP_MODE)
        cost = profile.bind(mapping)
        e, single = cost.evaluate_counters(counters), cost.evaluate_counters(counters, 1)
        out[device] = {
            "profile": profile.version,
            "clock_mhz": profile.coefficients.clock_hz / 1e6,
            "passes": mapping.passes,
            "total_uj": float(e.total_j.mean() * 1e6),
            "total_one_per_call_uj": float(single.total_j.mean() * 1e6),
            "dynamic_uj": float(e.dynamic_j.mean() * 1e6),
            "chip_us": float(e.chip_s.mean() * 1e6),
            "frame_us": float(e.frame_s.mean() * 1e6),
            "layer_us": {
                name: float(e.layer_clocks[:, i].mean()) / profile.coefficients.clock_hz * 1e6
                for i, name in enumerate(e.layer_names)
            },
        }
    return out


def test_set(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's own test split as it recorded it (``exporter.datasets``), or MNIST's 10,000 test images."""
    data = read_run_data(run)
    if data is not None and data.test_frames is not None and data.test_labels is not None:
        return data.test_frames, data.test_labels.astype(np.int64)
    mnist = mnist_fetch.load_mnist()
    return mnist.test_images, mnist.test_labels.astype(np.int64)


def measure(run: Path) -> dict[str, Any]:
    """Every figure of one run, on all its test images (see the module docstring)."""
    images, labels = test_set(run)
    fbz = saved_fbz(run)
    model = load_model(fbz)
    frames = images.reshape(len(images), *model.input_shape)
    outputs = engine_layer_outputs(akida.Model(str(fbz)), frames)
    scores = outputs[-1].reshape(len(images), -1)
    simulated = Simulator(model).run(frames)
    counters = simulated.counters.layers
    names = [c.name for c in counters]
    per_layer = {
        name: float((out > 0).reshape(len(images), -1).sum(axis=1).mean())
        for name, out in zip(names[:-1], outputs[:-1], strict=True)
    }
    report = json.loads((run / "report.json").read_text())
    return {
        "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
        "seed": report["seed"],
        "test_frames": len(images),
        "accuracy": float((scores.argmax(axis=1) == labels).mean()),
        "activations_per_layer": per_layer,
        "activations": sum(per_layer.values()),
        "weights": sum(c.nonzero_weights for c in counters),
        "weights_total": sum(c.weights for c in counters),
        "synops": float(sum(c.synaptic_ops.mean() for c in counters)),
        "v2": v2_figures(fbz, counters),
        "engine_equals_simulator": bool(np.array_equal(scores, simulated.outputs.reshape(len(images), -1))),
        "engine_equals_training_eval": bool(np.array_equal(scores, np.load(run / "eval_scores.npy"))),
        "train_seconds": report["train_seconds"],
        "config": json.loads((run / "config.json").read_text()),
    }


def committed_bundles_match(models: Path, runs: Path, bundles: dict[str, str]) -> dict[str, bool | None]:
    """Whether each committed bundle (``bundles``: arm -> directory under models/) holds the arm's seed-0 run's
    integer model (same .fbz bytes when both are saved by akida), or None when the run is missing."""
    out: dict[str, bool | None] = {}
    for arm, name in bundles.items():
        run, bundle = run_dir(runs, arm, 0), models / name / "model.fbz"
        out[arm] = (
            None
            if not (run / "params.npz").is_file() or not bundle.is_file()
            else saved_fbz(run).read_bytes() == bundle.read_bytes()
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the runs that are missing first")
    parser.add_argument("--study", choices=sorted(STUDIES), default="mnist", help="which page (default mnist)")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="a subset of the study's arms")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS), help="seeds per arm (default 0 1 2)")
    parser.add_argument(
        "--runs", type=Path, help="where the run directories live (default runs/study, runs/study-STUDY for others)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results", help="where to write the results")
    args = parser.parse_args(argv)
    args.arms = args.arms or list(STUDIES[args.study])
    args.runs = args.runs or ROOT / "runs" / ("study" if args.study == "mnist" else f"study-{args.study}")
    if args.train:
        for name in args.arms:
            for seed in args.seeds:
                if not (run_dir(args.runs, name, seed) / "report.json").is_file():
                    print(f"study: training {name} seed {seed}", file=sys.stderr, flush=True)
                    train(ARMS[name], seed, run_dir(args.runs, name, seed))
    results: dict[str, list[dict[str, Any]]] = {}
    for name in args.arms:
        found = [
            run_dir(args.runs, name, s) for s in args.seeds if (run_dir(args.runs, name, s) / "report.json").is_file()
        ]
        if found:
            started = time.monotonic()
            results[name] = [measure(run) for run in found]
            print(f"study: measured {name} ({len(found)} seeds, {time.monotonic() - started:.0f} s)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "energy_models": [DeviceProfile.packaged(d).version for d in DEVICES],
        "committed_bundles": {arm: f"models/{name}" for arm, name in COMMITTED[args.study].items()},
        "committed_bundles_are_seed_0": committed_bundles_match(ROOT / "models", args.runs, COMMITTED[args.study]),
        "results": results,
    }
    page = args.out / f"{args.study}.md"
    (args.out / f"{args.study}.json").write_text(json.dumps(summary, indent=2) + "\n")
    study_report.plot(results, ARMS, args.out / f"{args.study}-pareto.png")
    reading = (args.out / f"{args.study}-reading.md").is_file()
    page.write_text(study_report.markdown(summary, ARMS, args.study, reading))
    print(page.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
