"""Every Prometheus metric of the daemon, created in one place against a registry passed in.

Names follow the Prometheus docs (practices/naming.md): prefix ``edge_``, base units (seconds, joules, ratio 0..1),
counters end in ``_total``, metadata as ``*_info`` = 1. Labels are bounded sets only (backend,
source, layer, reason, class). Histogram buckets are chosen for the real ranges: inference in
100 µs..1 s, energy per inference around the served model's expected figure (see buckets_around;
µJ..100 mJ decades when the manifest has none), sparsity 0..1 with detail near 1, events in powers
of two up to 64 Ki.
Series known to exist are created at 0 so ``rate()`` works from the first scrape.

They are served over HTTP by http_server.py.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from . import __version__
from .backends.base import BACKEND_NAMES, EnergyReport, LayerStats
from .histogram import BatchHistogram
from .protocol import BAD_PACKET_KINDS

PREFIX = "edge"

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)
AGE_BUCKETS = (*LATENCY_BUCKETS, 2.5, 5.0, 10.0)
ENERGY_BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
)
DYNAMIC_ENERGY_BUCKETS = tuple(m * 10.0**e for e in range(-8, -2) for m in (1.0, 2.5, 5.0))  # 10 nJ .. 5 mJ
CHIP_LATENCY_BUCKETS = tuple(m * 10.0**e for e in range(-6, 0) for m in (1.0, 2.5, 5.0))  # 1 µs .. 0.5 s
# Energy bucket bounds as multiples of the served model's expected energy per inference: fine near 1,
# because per-inference energy of one model varies by a few percent (measured on the shipped bundle
# over MNIST: p50 520.7 µJ, p99 522.7 µJ), and coarse far from it, where only "how far off" matters.
ENERGY_BUCKET_FACTORS = (
    0.1,
    0.25,
    0.5,
    0.75,
    0.9,
    0.95,
    0.98,
    0.99,
    0.995,
    1.0,
    1.005,
    1.01,
    1.02,
    1.05,
    1.1,
    1.25,
    1.5,
    2.0,
    4.0,
    10.0,
)
SPARSITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)
EVENT_BUCKETS = (0, *(2**i for i in range(17)))  # le="0": a layer that stayed silent
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RELOAD_RESULTS = ("ok", "rejected")
SINK_NAMES = ("jsonl", "stdout")


def buckets_around(expected: float | None, fallback: Sequence[float] = ENERGY_BUCKETS) -> tuple[float, ...]:
    """Bucket bounds around a served model's ``expected`` per-inference figure (energy in joules,
    latency in seconds); None or not positive: ``fallback``. Why derived: with fixed decade buckets
    every inference of a model fell in one bucket (500 µJ-1 mJ) and the quantiles read 750 and 995 µJ
    against 520.7 and 522.7 measured."""
    if expected is None or not expected > 0 or expected != expected:
        return tuple(fallback)
    return tuple(float(f"{expected * factor:.6g}") for factor in ENERGY_BUCKET_FACTORS)


class Metrics:
    """The daemon's metrics; the pipeline and daemon call the ``observe_*``/``set_*`` methods.

    ``drop_reasons`` are all reasons a frame can be lost (the sources' plus the pipeline's).
    """

    def __init__(self, registry: CollectorRegistry, drop_reasons: Sequence[str]) -> None:
        def name(suffix: str) -> str:
            return f"{PREFIX}_{suffix}"

        r = registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, RSS, open fds: cheap and expected
        self.build_info = Gauge(
            name("build_info"),
            "Software versions of this daemon (value 1)",
            ["version", "akida_version", "python_version"],
            registry=r,
        )
        self.model_info = Gauge(
            name("model_info"), "The bundle being served (value 1)", ["name", "sha256", "input_shape"], registry=r
        )
        self.model_expected_energy = Gauge(
            name("model_expected_energy_joules"),
            "Total energy per inference the bundle's manifest expects on the configured device (energy model v2)",
            registry=r,
        )
        self.model_expected_sparsity = Gauge(
            name("model_expected_activation_sparsity_ratio"),
            "Per-layer activation sparsity the bundle's manifest expects (on its evaluation set)",
            ["layer"],
            registry=r,
        )
        self.backend_active = Gauge(
            name("backend_active"), "1 for the backend running inference, else 0", ["backend"], registry=r
        )
        self.accelerator_up = Gauge(name("accelerator_up"), "1 while inference runs on the Akida board", registry=r)
        self.accelerator_power = Gauge(
            name("accelerator_power_watts"),
            "Mean Akida board power over the last power-meter window, idle included (NaN: not measured)",
            registry=r,
        )
        self.accelerator_power.set(float("nan"))
        self.sensor_up = Gauge(name("sensor_up"), "1 while the frame source is open", registry=r)
        self.frames_received = Counter(name("frames_received"), "Frames delivered by the source", registry=r)
        self.frames_dropped = Counter(
            name("frames_dropped"), "Frames lost before inference, by reason", ["reason"], registry=r
        )
        self.sensor_bytes = Counter(name("sensor_received_bytes"), "Raw bytes read from the sensor link", registry=r)
        self.sensor_flushed_bytes = Counter(
            name("sensor_flushed_bytes"),
            "Bytes waiting in the sensor port when it opened (sent before the daemon listened), discarded",
            registry=r,
        )
        self.bad_packets = Counter(
            name("sensor_bad_packets"),
            "Packets dropped by the protocol checks, by kind (packets, not frames: noise makes them too)",
            ["kind"],
            registry=r,
        )
        self.sensor_silence = Gauge(
            name("sensor_silence_seconds"),
            "Time since the last good frame (or since the source opened, before one)",
            registry=r,
        )
        self.sensor_stale_after = Gauge(
            name("sensor_stale_after_seconds"),
            "Silence after which the source counts as stale, from its expected frame rate (+Inf: rate not set)",
            registry=r,
        )
        self.queue_depth = Gauge(name("queue_depth"), "Frames waiting for inference", registry=r)
        self.queue_capacity = Gauge(
            name("queue_capacity"), "Frames the queue holds before dropping the oldest", registry=r
        )
        self.frame_age = BatchHistogram(
            name("frame_age_seconds"), "Time from frame receipt to the start of its inference", [], AGE_BUCKETS, r
        )
        self.frame_latency = BatchHistogram(
            name("frame_latency_seconds"), "Time from frame receipt to its prediction", [], AGE_BUCKETS, r
        )
        self.batch_size = BatchHistogram(
            name("inference_batch_size"), "Frames per backend call (micro-batching)", [], BATCH_BUCKETS, r
        )
        self.inferences = Counter(name("inferences"), "Frames inferred", ["backend"], registry=r)
        self.inference_latency = BatchHistogram(
            name("inference_latency_seconds"),
            "Duration of the backend call that produced each inference (observed once per frame)",
            ["backend"],
            LATENCY_BUCKETS,
            r,
        )
        self.inference_energy = BatchHistogram(
            name("inference_energy_joules"),
            "Total energy per inference, floor power over the frame time included (model.statistics' convention)",
            ["backend", "source"],
            ENERGY_BUCKETS,
            r,
        )
        self.inference_dynamic_energy = BatchHistogram(
            name("inference_dynamic_energy_joules"),
            "Energy per inference above the floor (the devhub's dynamic convention); modelled",
            ["backend", "source"],
            DYNAMIC_ENERGY_BUCKETS,
            r,
        )
        self.inference_chip_latency = BatchHistogram(
            name("inference_chip_latency_seconds"),
            "On-chip time of one inference (clocks / clock); modelled",
            ["backend", "source"],
            CHIP_LATENCY_BUCKETS,
            r,
        )
        self.energy_model_info = Gauge(
            name("energy_model_info"),
            "The device profile behind modelled energy and latency (value 1; edge_runtime/data/devices)",
            ["device", "profile"],
            registry=r,
        )
        self.model_expected_dynamic_energy = Gauge(
            name("model_expected_dynamic_energy_joules"),
            "Dynamic energy per inference the bundle's manifest expects on the configured device",
            registry=r,
        )
        self.model_expected_chip_latency = Gauge(
            name("model_expected_chip_latency_seconds"),
            "On-chip latency per inference the bundle's manifest expects on the configured device",
            registry=r,
        )
        self.energy = Counter(
            name("energy_joules"), "Energy used by inferences; rate() is watts", ["backend", "source"], registry=r
        )
        self.layer_sparsity = BatchHistogram(
            name("layer_activation_sparsity_ratio"),
            "Fraction of a layer's activations that are zero, per inference",
            ["layer", "source"],
            SPARSITY_BUCKETS,
            r,
        )
        self.layer_events = BatchHistogram(
            name("layer_output_events"),
            "Non-zero activations (events) a layer emits, per inference",
            ["layer", "source"],
            EVENT_BUCKETS,
            r,
        )
        self.predictions = Counter(name("predictions"), "Predicted classes", ["class"], registry=r)
        self.backend_errors = Counter(name("backend_errors"), "Failed backend calls", ["backend"], registry=r)
        self.backend_fallbacks = Counter(
            name("backend_fallbacks"),
            "Switches to the simulator after a backend failed (batch re-run)",
            ["backend"],
            registry=r,
        )
        self.reloads = Counter(name("reloads"), "SIGHUP reloads by result", ["result"], registry=r)
        self.sink_errors = Counter(
            name("sink_errors"), "Prediction records that could not be written", ["sink"], registry=r
        )

        akida_version = _akida_version()
        self.build_info.labels(__version__, akida_version, platform.python_version()).set(1)
        for reason in drop_reasons:
            self.frames_dropped.labels(reason)
        for kind in BAD_PACKET_KINDS:
            self.bad_packets.labels(kind)
        for backend in BACKEND_NAMES:
            self.backend_active.labels(backend).set(0)
            self.inferences.labels(backend)
            self.backend_errors.labels(backend)
            self.backend_fallbacks.labels(backend)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        for sink in SINK_NAMES:
            self.sink_errors.labels(sink)
        # labels() takes a lock and a dict lookup; the hot path reuses children instead.
        self._children: dict[tuple[Any, ...], Any] = {}

    # --- model and backend state -------------------------------------------------------------

    def set_model(
        self,
        name: str,
        sha256: str,
        input_shape: Sequence[int],
        classes: Iterable[str],
        expected_energy: float | None,
        expected_sparsity: dict[str, float],
        energy_sources: Iterable[tuple[str, str]],
        layers: Iterable[tuple[str, str]],
    ) -> None:
        """Describe a newly loaded bundle; series of the previous one are removed, new ones start at 0.

        Removed: the previous model's info, its expected sparsity, and the per-layer histograms of
        layers the new model does not have (a layer it keeps goes on counting). Backends, classes
        and drop reasons are bounded sets that outlive any one model and stay.
        ``energy_sources`` are the (backend, source) pairs and ``layers`` the (layer, source) pairs
        the chosen backend will report, so their counters exist from the first scrape.
        """
        layers = list(layers)
        names = {layer for layer, _ in layers}
        for histogram in (self.layer_sparsity, self.layer_events):
            histogram.retain(lambda labels: labels[0] in names)
        self.model_info.clear()
        self.model_info.labels(name, sha256, "x".join(map(str, input_shape))).set(1)
        if expected_energy is None:
            self.model_expected_energy.set(float("nan"))
        else:
            self.model_expected_energy.set(expected_energy)
        self.inference_energy.rebucket(buckets_around(expected_energy))
        self.model_expected_sparsity.clear()
        for layer, value in expected_sparsity.items():
            self.model_expected_sparsity.labels(layer).set(value)
        for label in classes:
            self.predictions.labels(label)
        for backend, source in energy_sources:
            self.energy.labels(backend, source)
            self.inference_energy.labels(backend, source)
        for layer, source in layers:
            self.layer_sparsity.labels(layer, source)
            self.layer_events.labels(layer, source)

    def set_energy_model(
        self,
        device: str,
        profile: str,
        expected_dynamic: float | None,
        expected_chip_s: float | None,
        sources: Iterable[tuple[str, str]],
    ) -> None:
        """Name the device profile behind modelled figures and what the manifest expects under it;
        ``sources`` are the (backend, source) pairs that report modelled dynamic energy and latency."""
        self.energy_model_info.clear()
        self.energy_model_info.labels(device, profile).set(1)
        self.model_expected_dynamic_energy.set(float("nan") if expected_dynamic is None else expected_dynamic)
        self.model_expected_chip_latency.set(float("nan") if expected_chip_s is None else expected_chip_s)
        self.inference_dynamic_energy.rebucket(buckets_around(expected_dynamic, DYNAMIC_ENERGY_BUCKETS))
        self.inference_chip_latency.rebucket(buckets_around(expected_chip_s, CHIP_LATENCY_BUCKETS))
        for backend, source in sources:
            self.inference_dynamic_energy.labels(backend, source)
            self.inference_chip_latency.labels(backend, source)

    def set_backend(self, backend: str, on_accelerator: bool) -> None:
        for name in BACKEND_NAMES:
            self.backend_active.labels(name).set(1 if name == backend else 0)
        self.accelerator_up.set(1 if on_accelerator else 0)

    # --- hot path (inference thread) -----------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_batch(
        self,
        backend: str,
        duration: float,
        ages: np.ndarray,
        latencies: np.ndarray,
        classes: np.ndarray,
        class_names: Sequence[str] | None = None,
    ) -> None:
        """One backend call: per frame, ``ages`` at its start, ``latencies`` at its end, predicted ``classes``
        (indices; the ``class`` label is the model's name for each, or the index when it names none)."""
        n = len(classes)
        self.batch_size.observe(n)
        self._child(self.inferences, backend).inc(n)
        self.inference_latency.observe(np.full(n, duration), backend)
        self.frame_age.observe(ages)
        self.frame_latency.observe(latencies)
        for index, count in enumerate(np.bincount(classes).tolist()):
            if count:
                label = class_names[index] if class_names is not None else str(index)
                self._child(self.predictions, label).inc(count)

    def observe_energy(self, backend: str, report: EnergyReport) -> None:
        values = report.per_inference
        if len(values) == 0:
            return
        self.inference_energy.observe(values, backend, report.source)
        self._child(self.energy, backend, report.source).inc(float(np.sum(values)))
        if report.dynamic is not None:
            self.inference_dynamic_energy.observe(report.dynamic, backend, report.source)
        if report.chip_s is not None:
            self.inference_chip_latency.observe(report.chip_s, backend, report.source)
        if report.board_watts is not None:
            self.accelerator_power.set(report.board_watts)

    def observe_layers(self, stats: LayerStats) -> None:
        for layer, events in stats.events.items():
            self.layer_events.observe(events, layer, stats.source)
        for layer, ratios in stats.sparsity.items():
            self.layer_sparsity.observe(ratios, layer, stats.source)

    # --- source and queue (reader thread) ------------------------------------------------------

    def dropped(self, reason: str, n: int = 1) -> None:
        self._child(self.frames_dropped, reason).inc(n)

    def bad_packet(self, kind: str) -> None:
        self._child(self.bad_packets, kind).inc()


def _akida_version() -> str:
    """The installed akida version, read from package metadata so no engine is loaded for it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("akida")
    except PackageNotFoundError:
        return "none"
