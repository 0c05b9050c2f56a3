"""``edge-export train --config CFG --out RUN_DIR``: train, export and measure one zero-aware model."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edge_runtime.errors import ConfigError
from edge_runtime.tomlconfig import parse_toml_value

from .config import load_config, with_overrides

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a zero-aware Akida 1.0 model and write a run directory",
        description="Float warm-up, then quantisation-aware training whose forward pass is the chip's integer "
        "arithmetic, with penalties on counts of non-zero activations and weights. The run directory holds the "
        "integer parameters (params.npz + spec.json) for 'edge-export export', golden test-set scores, the "
        "config, checkpoints and report.json (measured on the exported integer model).",
    )
    parser.add_argument("--config", type=Path, required=True, help="TOML config (see exporter/configs/)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create (must not exist)")
    parser.add_argument(
        "--force", action="store_true", help="write into --out even if it exists (its files are overwritten)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set penalty.activations=2",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.set_defaults(func=_train)


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    """``section.key=value`` strings -> (dotted key, TOML-parsed value)."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        pairs.append((key.strip(), parse_toml_value(value.strip())))
    return pairs


def _train(args: argparse.Namespace) -> int:
    # Before anything is imported or trained: a run directory holds hours of work (and maybe an
    # exported bundle's source), so replacing one has to be asked for.
    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to overwrite it, or choose another --out")
    from .train import train  # torch is imported only when training is asked for

    config = with_overrides(load_config(args.config), parse_overrides(args.set), str(args.config))
    _, report = train(config, args.out, progress=not args.no_progress)
    energy = (report.get("energy") or {}).get("akd1000")
    print(
        f"{args.out}: accuracy {report['accuracy']:.4f}, "
        f"{report['activations_nonzero_per_image']:.1f} non-zero activations/image, "
        f"{report['weights_nonzero']} non-zero weights"
        + (
            f", {energy['total_j_per_image'] * 1e6:.1f} uJ/image total on AKD1000 ({energy['profile']}, modelled)"
            if energy
            else ""
        )
        + f", exact={report['exact_match_training_forward']}"
    )
    return 0
