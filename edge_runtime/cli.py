"""``edge-runtime``: the edge host's tool (daemon and offline commands)."""

from __future__ import annotations

from collections.abc import Sequence

from . import calibrate_cli, cliutil, demo, emulator, serve_cli, simulate_cli

DESCRIPTION = """\
Run Akida 1.0 bundles on an edge host: on the Akida board when one is attached, otherwise on our
bit-exact NumPy event simulator, with per-inference sparsity and energy as Prometheus metrics.
"""

# Each command module exposes ``register(subparsers)``; the order here is the order in --help.
REGISTRARS: list[cliutil.Registrar] = [
    serve_cli.register,
    demo.register,
    emulator.register,
    calibrate_cli.register,
    simulate_cli.register,
]


# Modules a command imports only when it runs, and the extra that installs each.
EXTRAS = {"onnxruntime": "onnx"}


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.run("edge-runtime", DESCRIPTION, REGISTRARS, argv, EXTRAS)


if __name__ == "__main__":
    raise SystemExit(main())
