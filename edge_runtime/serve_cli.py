"""``edge-runtime serve``: the daemon's command line (flags override single config keys)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import BACKENDS, DEFAULT_LISTEN
from .daemon import Daemon
from .mailbox import install_signal_handlers

DESCRIPTION = """\
Sensor frames in, inference on the Akida board (or our simulator, or onnxruntime), per-inference
sparsity and energy out as Prometheus metrics at /metrics, with /healthz and /readyz beside it.
Runs until SIGTERM or SIGINT (which drain the queue first); SIGHUP reloads config and bundle after
verifying them. Under systemd (Type=notify) it reports readiness and pings the watchdog.

Examples:
  edge-runtime serve --config /etc/edge-runtime/config.toml
  edge-runtime serve --config config/local.toml
  edge-runtime serve --model models/mnist-zeroaware --source replay:mnist-test --predictions-stdout --exit-when-done
  edge-runtime serve --model models/mnist-zeroaware --source serial:/dev/ttyACM0?baud=921600
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the inference daemon",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML config (commented example: config/edge-runtime.toml)"
    )
    parser.add_argument("--model", metavar="BUNDLE_DIR", help="bundle directory (model.bundle)")
    parser.add_argument(
        "--source",
        metavar="SPEC",
        help="serial:PORT_OR_URL[?baud=N] or replay:PATH|mnist-test[?rate=HZ&loop=1] (source.spec)",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help=f"where to serve /metrics, /healthz, /readyz (metrics.listen; default {DEFAULT_LISTEN})",
    )
    parser.add_argument("--backend", choices=BACKENDS, help="inference backend (inference.backend; default auto)")
    parser.add_argument(
        "--predictions-stdout",
        action="store_true",
        help="print one JSON object per inference on stdout (predictions.stdout)",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit (status 0, queue drained) when the source ends, e.g. a replay without loop=1",
    )
    parser.set_defaults(func=serve)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as config keys; a flag not given leaves the file's value alone."""
    pairs = {
        "model.bundle": args.model,
        "source.spec": args.source,
        "metrics.listen": args.metrics_addr,
        "inference.backend": args.backend,
        "predictions.stdout": True if args.predictions_stdout else None,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def serve(args: argparse.Namespace) -> int:
    daemon = Daemon(args.config, overrides(args), exit_when_done=args.exit_when_done)
    daemon.start()
    # After start: a signal during start-up keeps its default action (nothing to drain yet), and a
    # start that fails leaves the caller's handlers as they were.
    install_signal_handlers(daemon.mailbox)
    return daemon.wait()
