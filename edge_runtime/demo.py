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
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from prometheus_client import CollectorRegistry

from . import cliutil, mnist
from .bundle import Bundle, load_bundle
from .config import BACKENDS
from .daemon import Daemon
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


# --- what the daemon reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """Counter totals from the daemon's registry at one moment; differences give rates."""

    at: float
    inferred: float = 0.0
    energy_joules: float = 0.0
    energy_count: float = 0.0
    dynamic_joules: float = 0.0
    dynamic_count: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)
    events_sum: dict[str, float] = field(default_factory=dict)  # layer -> events over all inferences
    events_count: dict[str, float] = field(default_factory=dict)  # layer -> inferences counted
    sparsity_sum: dict[str, float] = field(default_factory=dict)
    sparsity_count: dict[str, float] = field(default_factory=dict)
    backend: str = "none"


def read_registry(registry: CollectorRegistry, at: float) -> Reading:
    """Sum the daemon's series over the labels the demo does not show (backend, energy source)."""
    totals: defaultdict[str, float] = defaultdict(float)
    per_label: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    backend = "none"
    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "edge_backend_active" and value == 1:
                backend = labels["backend"]
            elif name == "edge_frames_dropped_total":
                per_label["dropped"][labels["reason"]] += value
            elif name.startswith(("edge_layer_output_events_", "edge_layer_activation_sparsity_ratio_")) and (
                name.endswith(("_sum", "_count"))
            ):
                per_label[name][labels["layer"]] += value
            elif name in (
                "edge_inferences_total",
                "edge_inference_energy_joules_sum",
                "edge_inference_energy_joules_count",
                "edge_inference_dynamic_energy_joules_sum",
                "edge_inference_dynamic_energy_joules_count",
            ):
                totals[name] += value
    return Reading(
        at=at,
        inferred=totals["edge_inferences_total"],
        energy_joules=totals["edge_inference_energy_joules_sum"],
        energy_count=totals["edge_inference_energy_joules_count"],
        dynamic_joules=totals["edge_inference_dynamic_energy_joules_sum"],
        dynamic_count=totals["edge_inference_dynamic_energy_joules_count"],
        dropped=dict(per_label["dropped"]),
        events_sum=dict(per_label["edge_layer_output_events_sum"]),
        events_count=dict(per_label["edge_layer_output_events_count"]),
        sparsity_sum=dict(per_label["edge_layer_activation_sparsity_ratio_sum"]),
        sparsity_count=dict(per_label["edge_layer_activation_sparsity_ratio_count"]),
        backend=backend,
    )


def _delta(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    return {key: value - old.get(key, 0.0) for key, value in new.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


@dataclass(frozen=True)
class Window:
    """What happened between two readings (or since the start, for the final summary)."""

    seconds: float
    inferred: float
    joules_per_inference: float
    dynamic_per_inference: float
    events_per_inference: dict[str, float]  # layer -> mean events
    layer_sparsity: dict[str, float]  # layer -> mean fraction of zero activations
    dropped: float


def window(old: Reading, new: Reading) -> Window:
    events_sum, events_count = _delta(new.events_sum, old.events_sum), _delta(new.events_count, old.events_count)
    sparsity_sum = _delta(new.sparsity_sum, old.sparsity_sum)
    sparsity_count = _delta(new.sparsity_count, old.sparsity_count)
    return Window(
        seconds=new.at - old.at,
        inferred=new.inferred - old.inferred,
        joules_per_inference=_ratio(new.energy_joules - old.energy_joules, new.energy_count - old.energy_count),
        dynamic_per_inference=_ratio(new.dynamic_joules - old.dynamic_joules, new.dynamic_count - old.dynamic_count),
        events_per_inference={layer: _ratio(events_sum[layer], events_count.get(layer, 0.0)) for layer in events_sum},
        layer_sparsity={layer: _ratio(sparsity_sum[layer], sparsity_count.get(layer, 0.0)) for layer in sparsity_sum},
        dropped=sum(_delta(new.dropped, old.dropped).values()),
    )


def activation_sparsity(events_per_inference: dict[str, float], neurons: dict[str, int]) -> float:
    """Share of silent neurons over the layers that fire events (the manifest's definition).

    Pooled over neurons rather than averaged over layers: a big quiet layer saves more events than
    a small one, and events are what the chip pays for.
    """
    known = {layer: events for layer, events in events_per_inference.items() if layer in neurons}
    if not known or any(math.isnan(events) for events in known.values()):
        return math.nan
    return 1.0 - sum(known.values()) / sum(neurons[layer] for layer in known)


# --- what the daemon predicted --------------------------------------------------------------------


class PredictionLog:
    """Follows the daemon's JSON-lines prediction log as it grows and scores it against the labels.

    Like ``tail -F``: the file appears with the first batch, and if the daemon rotates it the rest
    of the old file is read before moving to the new one (the old file gets no writes after that).
    """

    def __init__(self, path: Path, labels: np.ndarray) -> None:
        self._path = path
        self._labels = labels
        self._file: IO[bytes] | None = None
        self._partial = b""
        self.correct = 0
        self.total = 0

    @property
    def accuracy(self) -> float:
        return _ratio(self.correct, self.total)

    def poll(self) -> None:
        while True:
            if self._file is None:
                try:
                    self._file = open(self._path, "rb")  # noqa: SIM115 - kept open between polls, closed in close()
                except FileNotFoundError:
                    return
            self._consume(self._file.read())
            if not self._rotated():
                return
            self._consume(self._file.read())
            self.close()

    def _rotated(self) -> bool:
        assert self._file is not None
        try:
            return os.stat(self._path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _consume(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            record: dict[str, Any] = json.loads(line)
            self.total += 1
            self.correct += int(record["class"] == int(self._labels[record["seq"] % len(self._labels)]))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- the sensor side --------------------------------------------------------------------------------


# --- output ---------------------------------------------------------------------------------------


def _micro(joules: float, digits: int = 1) -> str:
    return "-" if math.isnan(joules) else f"{joules * 1e6:.{digits}f} µJ"


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _saving(value: float, baseline: float | None) -> str:
    return "" if baseline is None or math.isnan(value) else f" ({100 * (1 - value / baseline):.0f}% less than baseline)"


def energy_headline(bundle: Bundle, device: str, baseline: Bundle | None) -> str:
    """What the manifests say the served bundle costs per inference, and its saving against the baseline."""
    figures = bundle.manifest.metrics.energy.get(device)
    if figures is None:
        return f"energy: the bundle records no {device.upper()} figures"
    line = (
        f"modelled on {device.upper()} ({figures.profile}, from the manifest): total {_micro(figures.total_j)} "
        f"per inference (floor x frame time + dynamic, as model.statistics reports), dynamic "
        f"{_micro(figures.dynamic_j, 2)}, on-chip latency {figures.chip_s * 1e6:.0f} µs"
    )
    base = None if baseline is None else baseline.manifest.metrics.energy.get(device)
    if baseline is not None and base is not None:
        line += (
            f"\n  against {baseline.manifest.name}: total {_micro(base.total_j)} -> "
            f"{100 * (1 - figures.total_j / base.total_j):.1f}% less, dynamic {_micro(base.dynamic_j, 2)} -> "
            f"{100 * (1 - figures.dynamic_j / base.dynamic_j):.1f}% less"
        )
    return line


def status_line(
    elapsed: float, step: Window, neurons: dict[str, int], log: PredictionLog, baseline_total: float | None = None
) -> str:
    sparsity = activation_sparsity(step.events_per_inference, neurons)
    return (
        f"[{elapsed:5.1f} s] {step.inferred / step.seconds:6.1f} frames/s"
        f" | energy/inference {_micro(step.joules_per_inference)}{_saving(step.joules_per_inference, baseline_total)}"
        f", dynamic {_micro(step.dynamic_per_inference, 2)}"
        f" | activation sparsity {_number(sparsity, '.3f')}"
        f" | accuracy {_number(log.accuracy * 100, '.1f')}% ({log.correct}/{log.total})"
        f" | dropped {step.dropped:.0f}"
    )


def summary(
    total: Window,
    backend: str,
    bundle: Bundle,
    neurons: dict[str, int],
    log: PredictionLog,
    dropped: dict[str, float],
    device: str,
) -> list[str]:
    """The final report: the run against what the bundle's manifest promised."""
    metrics = bundle.manifest.metrics
    expected_sparsity = 1.0 - metrics.nonzero_activations_per_frame / sum(neurons.values())
    figures = metrics.energy.get(device)
    expected_energy = math.nan if figures is None else figures.total_j
    expected_dynamic = math.nan if figures is None else figures.dynamic_j
    lost = ", ".join(f"{reason} {n:.0f}" for reason, n in sorted(dropped.items()) if n) or "none"
    lines = [
        f"summary: {total.inferred:.0f} frames inferred in {total.seconds:.1f} s on {backend}"
        f" ({total.inferred / total.seconds:.1f} frames/s); dropped: {lost}",
        f"accuracy: {_number(log.accuracy * 100, '.2f')}% ({log.correct}/{log.total} MNIST test frames)",
        f"energy per inference: total {_micro(total.joules_per_inference)} (manifest: {_micro(expected_energy)}), "
        f"dynamic {_micro(total.dynamic_per_inference, 2)} (manifest: {_micro(expected_dynamic, 2)})",
        f"activation sparsity: {_number(activation_sparsity(total.events_per_inference, neurons), '.3f')}"
        f" (manifest: {expected_sparsity:.3f})",
    ]
    promised = {layer.name: 1.0 - layer.activation_density for layer in metrics.layers}
    for layer, sparsity in total.layer_sparsity.items():
        lines.append(
            f"  {layer:<8} sparsity {_number(sparsity, '.3f')} (manifest: {promised.get(layer, math.nan):.3f})"
            f", {_number(total.events_per_inference.get(layer, math.nan), '.1f')} events/inference"
        )
    return lines


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
