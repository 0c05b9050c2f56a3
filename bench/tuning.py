"""The full-budget tuning runs behind the study, on one picture: accuracy against events and total energy.

Usage (from the repository root, in the venv):

    python bench/tuning.py runs/mnist-baseline RUN_DIR... --out docs/results/tuning-pareto.png

Each RUN_DIR is an ``edge-export train`` run directory; its ``report.json`` (measured on the exported
integer model, all 10,000 test images) gives accuracy, non-zero activations per image and modelled
total energy per image on AKD1000 (model v2). A run is labelled by the settings in its ``config.json``
that differ from a reference config (by default the shipped ``exporter/configs/zeroaware.toml``). The plot shades the
study's target region: accuracy at most 0.3 points below the baseline and at least 85% fewer events
(left panel) or 40% less total energy (right panel). The Markdown table
goes to stdout. Reusing ``exporter.sweep``'s Pareto marking keeps one definition of the front.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.sweep import mark_pareto, row  # noqa: E402

# The settings a tuning run varies; everything else is the study's shared schedule.
VARIED = ("penalty", "distill", "prune", "train")
TARGET_EVENTS, TARGET_ENERGY, ACCURACY_DROP = 0.85, 0.40, 0.003
BOTTOM = 98.6  # accuracy axis floor (%): a run below it is drawn on it as a triangle with its accuracy


def load(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((run / "report.json").read_text()), json.loads((run / "config.json").read_text()))


def label(config: dict[str, Any], reference: dict[str, Any]) -> str:
    """``key=value`` for every varied setting that differs from ``reference`` (the zero-aware config)."""
    changes = [
        f"{key}={value}"
        for section in VARIED
        for key, value in config.get(section, {}).items()
        if reference.get(section, {}).get(key) != value
    ]
    return ", ".join(changes) or "shipped: zeroaware.toml"


def plot(rows: list[dict[str, Any]], baseline: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    floor = 100 * (baseline["accuracy"] - ACCURACY_DROP)
    panels = (
        ("activations_nonzero_per_image", "non-zero activations per image", TARGET_EVENTS),
        ("total_uj_per_image", "modelled total energy per image, AKD1000 (µJ, model v2)", TARGET_ENERGY),
    )
    for ax, (key, title, cut) in zip(axes, panels, strict=True):
        limit = (1 - cut) * baseline[key]
        left = 0.8 * min(limit, *(r[key] for r in rows))
        ax.fill_between([left, limit], floor, 100 * baseline["accuracy"] + 0.1, color="tab:green", alpha=0.12, lw=0)
        ax.text(left, floor, f" target: <= {limit:.0f}, >= {floor:.2f}%", fontsize=7, color="tab:green", va="bottom")
        front = "events_front" if key == "activations_nonzero_per_image" else "pareto"
        for r in rows:
            is_base = r is baseline
            off_axis = 100 * r["accuracy"] < BOTTOM  # drawn on the axis floor as a triangle, labelled
            accuracy = BOTTOM if off_axis else 100 * r["accuracy"]
            ax.scatter(
                r[key],
                accuracy,
                marker="*" if is_base else ("v" if off_axis else "o"),
                s=160 if is_base else 30,
                color="tab:red" if is_base else ("tab:blue" if r[front] else "tab:gray"),
                zorder=3,
            )
            if r[front] or off_axis:  # label the front (and off-axis runs) only: readable
                text = f"{r['name']} ({100 * r['accuracy']:.2f}%)" if off_axis else r["name"]
                ax.annotate(text, (r[key], accuracy), fontsize=6, xytext=(4, -3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlim(left, 1.3 * baseline[key])
        ax.set_xlabel(title + " (log scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylim(BOTTOM - 0.05, 100 * baseline["accuracy"] + 0.12)
    axes[0].set_ylabel("test accuracy (%), exported integer model, 10,000 images")
    fig.suptitle("MNIST, full-budget runs (red star: baseline; blue: on the accuracy/cost Pareto front)")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


def markdown(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    def fewer(key: str, r: dict[str, Any]) -> str:
        return f"{100 * (1 - r[key] / baseline[key]):.1f}%"

    lines = [
        "| run | accuracy | events / image (fewer) | non-zero weights (fewer) | total µJ / image, AKD1000 (less) "
        "| on the front (events / energy) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["activations_nonzero_per_image"]):
        lines.append(
            f"| {r['name']} | {100 * r['accuracy']:.2f}% | {r['activations_nonzero_per_image']:.1f} "
            f"({fewer('activations_nonzero_per_image', r)}) | {r['weights_nonzero']:,} "
            f"({fewer('weights_nonzero', r)}) | {r['total_uj_per_image']:.1f} "
            f"({fewer('total_uj_per_image', r)}) | {'events' if r['events_front'] else ''}"
            f"{' / ' if r['events_front'] and r['pareto'] else ''}{'energy' if r['pareto'] else ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="the baseline run directory")
    parser.add_argument("runs", type=Path, nargs="+", help="zero-aware run directories")
    parser.add_argument(
        "--reference",
        type=Path,
        default=REPO / "exporter" / "configs" / "zeroaware.toml",
        help="config the labels are relative to (default: the shipped zero-aware config)",
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)

    from exporter.config import config_to_dict, load_config

    reference = config_to_dict(load_config(args.reference))
    report, _ = load(args.baseline)
    baseline = row("baseline", report)
    rows = [baseline]
    for run in args.runs:
        report, config = load(run)
        rows.append(row(label(config, reference), report))
    mark_pareto(rows)
    mark_pareto(rows, cost=lambda r: r["activations_nonzero_per_image"], flag="events_front")
    plot(rows, baseline, args.out)
    print(markdown(rows, baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
