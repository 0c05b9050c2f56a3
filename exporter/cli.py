"""``edge-export``: data, training and bundle packaging (install with the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Sequence

from edge_runtime import cliutil

from . import data_cli, export_cli, sweep, train_cli

DESCRIPTION = """\
Train zero-aware Akida 1.0 models and package them as verified bundles (.fbz + ONNX + manifest).
"""

# Each command module exposes ``register(subparsers)``; the order here is the order in --help.
REGISTRARS: list[cliutil.Registrar] = [data_cli.register, train_cli.register, sweep.register, export_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.run("edge-export", DESCRIPTION, REGISTRARS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
