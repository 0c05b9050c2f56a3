"""The study's page and plot from its measured runs (bench/study.py measures; this only formats).

Figures are 3-seed means with their spread (min..max over seeds); a change is computed on the means. The
published studies report reductions only (no absolute energies, the first no accuracy), so the plot marks
them as their reduction applied to our own baseline of the same topology.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.energy import DEVICES

# % fewer / less against their own baselines. The IPSJ DA Symposium 2024 study (2 conv + 2 FC on MNIST) and its
# ISCAS 2025 follow-up (3 conv + 2 FC).
PUBLISHED = {
    "mnist": {"name": "IPSJ DA 2024", "activations": 70.1, "weights": 14.2, "energy": 12.2},
    "iscas": {"name": "ISCAS 2025", "activations": 76.1, "weights": 22.1, "energy": 13.8},
}
TOPOLOGIES = {
    "mnist": "MNIST, the paper's network (2 conv + 2 FC)",
    "iscas": "MNIST, the ISCAS 2025 network (3 conv + 2 FC)",
    "digits": "scikit-learn's 8x8 digits, a DS-CNN-style separable network",
}
TARGETS = {"accuracy_min": 0.990, "accuracy_drop_max": 0.003, "activations": 85.0, "weights": 80.0, "total": 40.0}
Runs = Sequence[Mapping[str, Any]]
Get = Callable[[Mapping[str, Any]], float]


def seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def values(runs: Runs, get: Get) -> np.ndarray:
    return np.array([get(r) for r in runs], dtype=float)


def mean(runs: Runs, get: Get) -> float:
    return float(values(runs, get).mean())


def spread(runs: Runs, get: Get, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """``mean (min..max)`` over seeds, or the single value."""
    v = values(runs, get) * scale
    text = f"{v.mean():{fmt}}{unit}"
    return text if len(v) == 1 else f"{text} ({v.min():{fmt}}..{v.max():{fmt}})"


def fewer(base: float, new: float) -> float:
    return 100.0 * (1 - new / base)


def change(base: float, new: float, less: str = "fewer", more: str = "more") -> str:
    value = fewer(base, new)
    return f"{value:.1f}% {less}" if value >= 0 else f"{-value:.1f}% {more}"


def energy(device: str, key: str) -> Get:
    return lambda r: r["v2"][device][key]


def metric_rows(base: Runs, arms: Sequence[Runs], published: Mapping[str, Any] | None) -> list[list[str]]:
    """The comparison table: one row per figure; per zero-aware arm its value and its change on the means; a last
    column with the published result, if there is one (``published``)."""

    def row(label: str, get: Get, fmt: str, scale: float = 1.0, unit: str = "", kind: str = "fewer", pub: str = ""):
        cells = [label, spread(base, get, fmt, scale, unit)]
        for runs in arms:
            if kind == "points":
                delta = 100 * (mean(runs, get) - mean(base, get))
                cells += [spread(runs, get, fmt, scale, unit), f"{delta:+.2f} points"]
            else:
                cells += [spread(runs, get, fmt, scale, unit), change(mean(base, get), mean(runs, get), kind)]
        return cells if published is None else [*cells, pub]

    layers = list(base[0]["activations_per_layer"])
    rows = [
        row(
            f"Test accuracy ({base[0]['test_frames']:,} images)",
            lambda r: r["accuracy"],
            ".2f",
            100,
            "%",
            "points",
            "not published",
        ),
        *[
            row(f"Non-zero activations / image, {name} output", lambda r, n=name: r["activations_per_layer"][n], ".1f")
            for name in layers
        ],
        row(
            "**Non-zero activations / image, total**",
            lambda r: r["activations"],
            ".1f",
            pub=f"{published['activations']}% fewer" if published else "",
        ),
        row(
            "**Non-zero weights**",
            lambda r: r["weights"],
            ",.0f",
            pub=f"{published['weights']}% fewer" if published else "",
        ),
        row("Effective synaptic ops / image", lambda r: r["synops"], ",.0f"),
    ]
    for device in DEVICES:
        d, clock = device.upper(), f"{base[0]['v2'][device]['clock_mhz']:.0f} MHz"
        rows += [
            row(
                f"**Total energy / image, {d}** (floor x frame time + dynamic; long batch)",
                energy(device, "total_uj"),
                ".1f",
                unit=" µJ",
                kind="less",
                pub=f"{published['energy']}% less" if published and device == "akd1000" else "",
            ),
            row(
                f"Total energy / image, {d}, one frame per call",
                energy(device, "total_one_per_call_uj"),
                ".1f",
                unit=" µJ",
                kind="less",
            ),
            row(
                f"Dynamic energy / image, {d} (floor subtracted)",
                energy(device, "dynamic_uj"),
                ".2f",
                unit=" µJ",
                kind="less",
            ),
            row(
                f"On-chip latency, {d} ({clock}, one frame)", energy(device, "chip_us"), ".0f", unit=" µs", kind="less"
            ),
            row(
                f"Frame time, {d} (host-inclusive, long batch)",
                energy(device, "frame_us"),
                ".0f",
                unit=" µs",
                kind="less",
            ),
        ]
    minutes = [
        row(
            "Training wall-clock (1 torch thread, shared 2-core machine)",
            lambda r: r["train_seconds"] / 60,
            ".1f",
            unit=" min",
        )
    ]
    minutes[0][3 : 3 + 2 * len(arms) : 2] = [""] * len(arms)  # a change in wall-clock says nothing
    return rows + minutes


def target_checks(base: Runs, zero: Runs, published: Mapping[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's targets for a zero-aware arm against its baseline, on the means."""
    acc_b, acc_z = mean(base, lambda r: r["accuracy"]), mean(zero, lambda r: r["accuracy"])
    acts = fewer(mean(base, lambda r: r["activations"]), mean(zero, lambda r: r["activations"]))
    weights = fewer(mean(base, lambda r: r["weights"]), mean(zero, lambda r: r["weights"]))
    total = fewer(mean(base, energy("akd1000", "total_uj")), mean(zero, energy("akd1000", "total_uj")))
    t = TARGETS
    return [
        (f"accuracy >= {100 * t['accuracy_min']:.1f}%", acc_z >= t["accuracy_min"], f"{100 * acc_z:.2f}%"),
        (
            f"accuracy at most {100 * t['accuracy_drop_max']:.1f} points below baseline",
            acc_b - acc_z <= t["accuracy_drop_max"] + 1e-12,
            f"{100 * (acc_b - acc_z):.2f} points below",
        ),
        (f">= {t['activations']:.0f}% fewer non-zero activations", acts >= t["activations"], f"{acts:.1f}%"),
        (f">= {t['weights']:.0f}% fewer non-zero weights", weights >= t["weights"], f"{weights:.1f}%"),
        (
            f">= {t['total']:.0f}% less total energy per image on AKD1000 (model v2; {published['name']}: "
            f"{published['energy']}%)",
            total >= t["total"],
            f"{total:.1f}%",
        ),
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *[f"| {' | '.join(r)} |" for r in rows]]


def topology_section(results: Mapping[str, Runs], arms: Mapping[str, Any], topology: str) -> list[str]:
    names = [n for n in results if arms[n].topology == topology]
    base = next((n for n in names if arms[n].baseline), None)
    zeros = [n for n in names if not arms[n].baseline]
    if base is None or not zeros:
        return []
    published = PUBLISHED.get(topology)  # the targets, like the published result, are the MNIST study's
    header = ["", f"{arms[base].label} ({seeds(len(results[base]))})"]
    for n in zeros:
        header += [f"{arms[n].label} ({seeds(len(results[n]))})", "change"]
    if published is not None:
        header.append(f"published ({published['name']})")
    lines = table(header, metric_rows(results[base], [results[n] for n in zeros], published))
    for n in zeros if published is not None else ():
        lines += ["", f"Targets, {arms[n].label} vs {arms[base].label} (means over seeds):", ""]
        lines += [
            f"- [{'x' if ok else ' '}] {label}: {got}"
            for label, ok, got in target_checks(results[base], results[n], published)
        ]
    seed_rows = [
        [
            arms[n].label,
            str(r["seed"]),
            f"{100 * r['accuracy']:.2f}%",
            f"{r['activations']:.1f}",
            f"{r['weights']:,}",
            f"{r['v2']['akd1000']['total_uj']:.1f}",
            f"{r['v2']['akd1500']['total_uj']:.1f}",
            f"{r['train_seconds'] / 60:.1f}",
            str(r["engine_equals_simulator"] and r["engine_equals_training_eval"]),
        ]
        for n in names
        for r in results[n]
    ]
    lines += ["", "Every run:", ""]
    lines += table(
        [
            "arm",
            "seed",
            "accuracy",
            "events / image",
            "non-zero weights",
            "AKD1000 µJ / image",
            "AKD1500 µJ / image",
            "training min",
            "engine = simulator = training eval",
        ],
        seed_rows,
    )
    layer_names = list(results[base][0]["v2"]["akd1000"]["layer_us"])
    layer_rows = [
        [layer]
        + [
            f"{mean(results[n], lambda r, d=d, layer=layer: r['v2'][d]['layer_us'][layer]):.1f}"
            for d in DEVICES
            for n in (base, *zeros)
        ]
        for layer in layer_names
    ]
    lines += ["", "Where the on-chip time goes (µs per frame per layer, means; model v2):", ""]
    lines += table(["layer"] + [f"{d.upper()} {arms[n].label}" for d in DEVICES for n in (base, *zeros)], layer_rows)
    return lines


def plot(results: Mapping[str, Runs], arms: Mapping[str, Any], out: Path) -> None:
    """Accuracy against modelled AKD1000 total energy per image: every run, arm means with min..max bars, and
    the published reductions applied to our baseline of the same topology."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (name, runs) in zip(colours, results.items(), strict=False):
        x = values(runs, energy("akd1000", "total_uj"))
        y = values(runs, lambda r: 100 * r["accuracy"])
        ax.scatter(x, y, color=colour, alpha=0.35, s=18)
        ax.errorbar(
            x.mean(),
            y.mean(),
            xerr=[[x.mean() - x.min()], [x.max() - x.mean()]],
            yerr=[[y.mean() - y.min()], [y.max() - y.mean()]],
            fmt="o",
            color=colour,
            capsize=4,
            label=f"{arms[name].label} ({seeds(len(runs))})",
        )
        if arms[name].baseline and arms[name].topology in PUBLISHED:
            pub = PUBLISHED[arms[name].topology]
            ax.axvline(x.mean() * (1 - pub["energy"] / 100), color=colour, linestyle="--", linewidth=1)
            ax.text(
                x.mean() * (1 - pub["energy"] / 100),
                0.03,
                f"{pub['name']}: -{pub['energy']}% energy (on our {arms[name].label})",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                rotation=90,
                va="bottom",
                ha="right",
            )
    ax.set_xlabel("modelled total energy per image, AKD1000, long batch (µJ, model v2 akd1000-v2)")
    frames = sorted({r["test_frames"] for runs in results.values() for r in runs})
    ax.set_ylabel(f"test accuracy, {', '.join(f'{n:,}' for n in frames)} images, akida engine (%)")
    ax.set_title("Zero-aware training: accuracy against board energy (means, min..max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(summary: Mapping[str, Any], arms: Mapping[str, Any], study: str, reading: bool = False) -> str:
    """The page; ``reading``: link the hand-written ``STUDY-reading.md`` beside it."""
    results = summary["results"]
    frames = {r["test_frames"] for runs in results.values() for r in runs}
    test_set = "all 10,000 MNIST test images" if study == "mnist" else "each run's own test split"
    flag = "" if study == "mnist" else f" --study {study}"
    runs = "runs/study" if study == "mnist" else f"runs/study-{study}"
    lines = [
        f"# Zero-aware training vs baseline on Akida 1.0 (AKD1000 and AKD1500): {TOPOLOGIES[study]}",
        "",
        f"Generated by `python bench/study.py{flag}` (after `--train`); every arm is a config in `exporter/configs/` "
        "plus the overrides in `bench/study.py`'s `ARMS`, trained with each seed (`--set train.seed=N`). Baseline "
        "and zero-aware arms of a topology share network, bit widths, epochs and seeds. Figures are **means over "
        "seeds with their min..max**; changes and targets are computed on the means.",
        "",
        f"Measured on {test_set} ({', '.join(map(str, sorted(frames)))} frames) with **akida's own software "
        "engine** running each run's exported integer parameters: accuracy, non-zero activations (the events each "
        "layer emits), non-zero weights. Energy and latency are **modelled** by the energy/latency model v2 "
        f"(packaged profiles {', '.join(f'`{v}`' for v in summary['energy_models'])}, fitted to BrainChip's "
        "silicon measurements: [energy-model.md](../energy-model.md), [energy-fit.md](energy-fit.md)) on each "
        "model's mapping by akida's own mapper, fed with the bit-exact simulator's per-image counters (the last "
        "column of the per-run tables checks engine, simulator and the trainer's own evaluation agree on every "
        "image).",
        "",
    ]
    bundles = summary.get("committed_bundles", {})
    if bundles:
        several = len(bundles) > 1
        lines += [
            f"The committed bundle{'s' if several else ''} "
            f"{' and '.join(f'`{path}`' for path in bundles.values())} {'are' if several else 'is'} the **seed-0** "
            f"run{'s' if several else ''} of the {' and '.join(arms[n].label for n in bundles)} "
            f"arm{'s' if several else ''}, exported (same .fbz bytes as the seed-0 run: "
            f"{summary['committed_bundles_are_seed_0']}).",
            "",
        ]
    if study != "mnist":
        lines += [
            "No published result or target exists for this topology; the issue's targets are the MNIST study's "
            "([mnist.md](mnist.md)).",
            "",
        ]
    lines += [f"![accuracy against AKD1000 total energy, every run]({study}-pareto.png)", ""]
    if reading:
        lines += [
            f"What these numbers say and what holds the open targets back, in words: [{study}-reading.md]"
            f"({study}-reading.md) (written by hand; this page is generated).",
            "",
        ]
    for topology, title in TOPOLOGIES.items():
        section = topology_section(results, arms, topology)
        if section:
            lines += [f"## {title}", "", *section, ""]
    lines += [
        "## Commands",
        "",
        "```",
        f"python bench/study.py{flag} --train    # trains {runs}/ARM-sSEED for every arm and seed missing, "
        "then measures",
        f"python bench/study.py{flag}            # re-measures the existing runs (what generated this page)",
        "```",
        "",
        "One run by hand: `edge-export train --config exporter/configs/CONFIG.toml --set train.seed=1 --out RUN`.",
        "",
    ]
    return "\n".join(lines)
