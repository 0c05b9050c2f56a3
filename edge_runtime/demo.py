"""``edge-runtime demo``: the whole edge path on one machine, with nothing to plug in.

A sensor emulator thread sends MNIST test frames over a pseudo-terminal with the serial protocol;
the real daemon (:class:`~.daemon.Daemon`: serial source, queue, backend, metrics, prediction log)
reads them as it would read /dev/ttyUSB0 and serves the zero-aware bundle on the Akida board if
one is attached, else on the simulator. Once a second the demo prints throughput, energy per
inference, activation sparsity and accuracy so far, read back from the daemon's own Prometheus
registry and prediction log, so what it shows is what an operator's dashboard would show.

Accuracy needs the labels, which never travel over the wire (a sensor does not know them): the
emulator sends test image ``i`` with sequence number ``i`` (looping), so the label of a prediction
is ``labels[seq % N]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import cliutil, mnist
from .bundle import Bundle, load_bundle
from .config import BACKENDS
from .daemon import Daemon
from .demo_report import PredictionLog, energy_headline, read_registry, status_line, summary, window
from .emulator import PtyPort, SensorEmulator
from .errors import ConfigError, EdgeError
from .frame_fit import check_demo_bundle
from .interrupts import stop_on_signals
from .sdnotify import Notifier

logger = logging.getLogger(__name__)

DESCRIPTION = """\
The whole edge path on one machine, with nothing to plug in: a sensor emulator sends MNIST test
frames over a pseudo-terminal with the serial protocol, and the real daemon reads them as it would
read /dev/ttyUSB0 and serves the zero-aware bundle on the Akida board if one is attached, else on the
simulator. Once a second it prints throughput, energy per inference, activation sparsity and
accuracy so far, read from the daemon's own metrics. Needs the MNIST cache (edge-export data fetch).
"""
BUNDLE_NAME = "mnist-zeroaware"
BASELINE_NAME = "mnist-baseline"  # what the demo reports the zero-aware saving against
DEFAULT_SECONDS = 20.0
# A fast serial sensor's pace (921600 baud carries ~110 MNIST frames/s); the simulator keeps up.
DEFAULT_RATE = 100.0
# Big enough that even an hours-long demo does not rotate the prediction log (PredictionLog follows one anyway).
LOG_MAX_BYTES = 256 << 20


def default_bundle() -> Path:
    """models/mnist-zeroaware of the source tree this package runs from, else of the current directory."""
    candidates = [Path(__file__).resolve().parent.parent / "models" / BUNDLE_NAME, Path.cwd() / "models" / BUNDLE_NAME]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"no {BUNDLE_NAME} bundle at {' or '.join(map(str, candidates))}; pass --model BUNDLE_DIR")


def baseline_bundle(bundle: Bundle) -> Bundle | None:
    """``mnist-baseline`` beside the served bundle (the committed pair in models/), if there is one:
    the demo shows the zero-aware bundle's saving against it from the two manifests."""
    sibling = bundle.path.parent / BASELINE_NAME
    if sibling.resolve() == bundle.path.resolve() or not (sibling / "manifest.json").is_file():
        return None
    try:
        return load_bundle(sibling)
    except EdgeError as error:
        logger.info("no baseline to compare with: %s", error)
        return None


# --- the command ----------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="serve the zero-aware MNIST bundle to an emulated serial sensor and show energy, sparsity, accuracy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="BUNDLE_DIR",
        help=f"bundle to serve (default: models/{BUNDLE_NAME} of this source tree)",
    )
    parser.add_argument(
        "--seconds",
        type=cliutil.positive_float,
        default=DEFAULT_SECONDS,
        help="stop after this long (default %(default)s; Ctrl-C stops earlier)",
    )
    parser.add_argument(
        "--rate",
        type=cliutil.positive_float,
        default=DEFAULT_RATE,
        metavar="HZ",
        help="frames per second the emulated sensor sends (default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default) = the Akida board if present, else the simulator",
    )
    parser.add_argument(
        "--metrics-addr",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the daemon serves /metrics (default: a free port on 127.0.0.1, printed)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bundle_dir = args.model if args.model is not None else default_bundle()
    check_demo_bundle(Path(bundle_dir), (28, 28, 1), "28x28x1 MNIST test frames")
    data = mnist.load_mnist()  # ./dev demo fills the cache first (edge-export data fetch)
    # Ctrl-C, and a harness's SIGTERM, end the demo with a drained daemon and the summary.
    stop_on_signals()
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as scratch, PtyPort() as port:
        log_path = Path(scratch) / "predictions.jsonl"
        daemon = Daemon(
            None,
            {
                "model.bundle": str(bundle_dir),
                "source.spec": f"serial:{port.path}",
                "metrics.listen": args.metrics_addr,
                "inference.backend": args.backend,
                "predictions.path": str(log_path),
                "predictions.max_bytes": LOG_MAX_BYTES,
            },
            notifier=Notifier(environ={}),
        )  # not the service manager's business, even under systemd
        daemon.start()
        return _run_started(args, daemon, port, data.test_images, PredictionLog(log_path, data.test_labels))


def _run_started(
    args: argparse.Namespace, daemon: Daemon, port: PtyPort, images: np.ndarray, log: PredictionLog
) -> int:
    assert daemon.bundle is not None
    bundle = daemon.bundle
    neurons = {layer.name: layer.neurons for layer in bundle.model.layers if layer.activation}
    emulator = SensorEmulator(port.write, images, rate=args.rate, loop=True)
    sender = threading.Thread(target=emulator.run, name="edge-demo-sensor", daemon=True)
    first = read_registry(daemon.registry, time.monotonic())
    device = daemon.config.inference.device
    baseline = baseline_bundle(bundle)
    base_figures = None if baseline is None else baseline.manifest.metrics.energy.get(device)
    print(f"serving {bundle.manifest.name} ({bundle.sha256[:12]}) on {first.backend}", flush=True)
    print(energy_headline(bundle, device, baseline))
    print(f"sensor emulator: {args.rate:g} MNIST test frames/s over {port.path} (source serial:{port.path})")
    print(f"metrics: {daemon.url}/metrics (also /healthz, /readyz)")
    print(f"running for {args.seconds:g} s; Ctrl-C stops earlier", flush=True)
    sender.start()
    last = first
    try:
        for tick in range(1, math.ceil(args.seconds) + 1):
            time.sleep(max(0.0, first.at + min(tick, args.seconds) - time.monotonic()))
            log.poll()
            now = read_registry(daemon.registry, time.monotonic())
            print(
                status_line(
                    now.at - first.at,
                    window(last, now),
                    neurons,
                    log,
                    None if base_figures is None else base_figures.total_j,
                ),
                flush=True,
            )
            last = now
    except KeyboardInterrupt:
        print("interrupted: stopping", flush=True)
    stopped_at = time.monotonic()
    emulator.stop()
    port.stop_writing()
    sender.join()
    daemon.post(signal.SIGTERM)
    status = daemon.wait()
    log.poll()
    log.close()
    end = read_registry(daemon.registry, time.monotonic())
    # Rates over the time frames were sent; the few queued frames inferred while draining count too.
    total = replace(window(first, end), seconds=stopped_at - first.at)
    for line in summary(total, end.backend, bundle, neurons, log, end.dropped, device):
        print(line)
    return status
