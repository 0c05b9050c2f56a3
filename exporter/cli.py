"""``edge-export``: data, training and bundle packaging (the ``export`` and ``train`` extras)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_runtime import cliutil

from . import data_cli, export_cli, sweep, train_cli

DESCRIPTION = """\
Train zero-aware Akida 1.0 models and package them as verified bundles (.fbz + ONNX + manifest).
"""

# Each command module exposes ``register(subparsers)``; the order here is the order in --help.
REGISTRARS: list[cliutil.Registrar] = [data_cli.register, train_cli.register, sweep.register, export_cli.register]

# Modules a command imports only when it runs, and the extra that installs each.
EXTRAS = {
    "torch": "train",
    "tqdm": "train",
    "matplotlib": "train",
    "sklearn": "train",  # data.source = "digits"
    "PIL": "train",  # data.source = "images:DIR"
    "onnx": "export",
    "onnxruntime": "export",
    "ray": "ray",  # sweep --ray only
}


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.run("edge-export", DESCRIPTION, REGISTRARS, argv, EXTRAS)


if __name__ == "__main__":
    raise SystemExit(main())
