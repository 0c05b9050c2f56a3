"""The daemon's metrics: names, labels, zeros from the start, bucket ranges, and the HTTP endpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bundle_fixtures import make_bundle
from daemon_support import http_get
from prometheus_client import CollectorRegistry, Histogram

from edge_runtime.backends.base import EnergyReport, LayerStats
from edge_runtime.backends.simulator_backend import SimulatorBackend
from edge_runtime.bundle import load_bundle
from edge_runtime.daemon import DROP_REASONS
from edge_runtime.energy import DeviceProfile
from edge_runtime.errors import ConfigError
from edge_runtime.health import Health
from edge_runtime.histogram import BatchHistogram, bucket_label
from edge_runtime.http_server import HttpServer, make_app
from edge_runtime.metrics import (
    ENERGY_BUCKETS,
    EVENT_BUCKETS,
    LATENCY_BUCKETS,
    SPARSITY_BUCKETS,
    Metrics,
)
from edge_runtime.simulator import Simulator


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, DROP_REASONS)


def test_known_series_exist_at_zero_before_anything_happens(registry: CollectorRegistry, metrics: Metrics) -> None:
    get = registry.get_sample_value
    assert set(DROP_REASONS) == {"seq_gap", "queue_full", "bad_shape", "inference_error"}
    for reason in DROP_REASONS:
        assert get("edge_frames_dropped_total", {"reason": reason}) == 0
    for backend in ("akida", "simulator", "onnx"):
        assert get("edge_inferences_total", {"backend": backend}) == 0
        assert get("edge_backend_active", {"backend": backend}) == 0
        assert get("edge_backend_fallbacks_total", {"backend": backend}) == 0
    for result in ("ok", "rejected"):
        assert get("edge_reloads_total", {"result": result}) == 0
    for sink in ("jsonl", "stdout"):
        assert get("edge_sink_errors_total", {"sink": sink}) == 0
    assert get("edge_frames_received_total") == 0
    assert math.isnan(get("edge_accelerator_power_watts"))
    build = [s for f in registry.collect() if f.name == "edge_build_info" for s in f.samples]
    assert build[0].value == 1 and set(build[0].labels) == {"version", "akida_version", "python_version"}


def test_set_model_replaces_the_previous_models_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    def model(name: str, sha: str) -> None:
        metrics.set_model(
            name,
            sha,
            (28, 28, 1),
            [str(c) for c in range(10)],
            5e-4,
            {"conv0": 0.8, "fc3": 0.0},
            [("simulator", "model")],
            [("conv0", "simulator"), ("fc3", "simulator")],
        )

    model("a", "aaa")
    model("b", "bbb")
    get = registry.get_sample_value
    assert get("edge_model_info", {"name": "a", "sha256": "aaa", "input_shape": "28x28x1"}) is None
    assert get("edge_model_info", {"name": "b", "sha256": "bbb", "input_shape": "28x28x1"}) == 1
    assert get("edge_model_expected_energy_joules") == 5e-4
    assert get("edge_model_expected_activation_sparsity_ratio", {"layer": "conv0"}) == 0.8
    assert get("edge_predictions_total", {"class": "9"}) == 0
    assert get("edge_energy_joules_total", {"backend": "simulator", "source": "model"}) == 0
    assert get("edge_layer_output_events_count", {"layer": "fc3", "source": "simulator"}) == 0


def test_set_model_removes_the_series_of_layers_the_new_model_lacks(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    def model(name: str, layers: list[str]) -> None:
        metrics.set_model(
            name,
            name,
            (28, 28, 1),
            [str(c) for c in range(10)],
            None,
            dict.fromkeys(layers, 0.5),
            [("simulator", "model")],
            [(layer, "simulator") for layer in layers],
        )

    model("a", ["conv0", "fc3"])
    metrics.observe_layers(
        LayerStats(
            np.array([1]),
            {"conv0": np.array([7]), "fc3": np.array([2])},
            {"conv0": np.array([0.5]), "fc3": np.array([0.8])},
            "simulator",
        )
    )
    model("b", ["conv0", "dense9"])
    get = registry.get_sample_value
    for family in ("edge_layer_output_events_count", "edge_layer_activation_sparsity_ratio_count"):
        assert get(family, {"layer": "fc3", "source": "simulator"}) is None  # gone with model a
        assert get(family, {"layer": "conv0", "source": "simulator"}) == 1  # still there: keeps counting
        assert get(family, {"layer": "dense9", "source": "simulator"}) == 0
    assert get("edge_model_expected_activation_sparsity_ratio", {"layer": "fc3"}) is None


def test_backend_switch_is_one_hot(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.set_backend("akida", on_accelerator=True)
    metrics.set_backend("simulator", on_accelerator=False)
    get = registry.get_sample_value
    assert [get("edge_backend_active", {"backend": b}) for b in ("akida", "simulator", "onnx")] == [0, 1, 0]
    assert get("edge_accelerator_up") == 0


def test_a_batch_updates_counts_latency_age_and_classes(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.observe_batch("simulator", 0.002, np.array([0.001, 0.003]), np.array([0.003, 0.005]), np.array([7, 7]))
    get = registry.get_sample_value
    assert get("edge_inferences_total", {"backend": "simulator"}) == 2
    assert get("edge_inference_latency_seconds_count", {"backend": "simulator"}) == 2
    assert get("edge_inference_latency_seconds_sum", {"backend": "simulator"}) == pytest.approx(0.004)
    assert get("edge_frame_age_seconds_sum") == pytest.approx(0.004)
    assert get("edge_frame_latency_seconds_bucket", {"le": "0.005"}) == 2
    assert get("edge_predictions_total", {"class": "7"}) == 2
    assert get("edge_inference_batch_size_sum") == 2


def test_predictions_are_labelled_with_the_models_class_names(registry: CollectorRegistry, metrics: Metrics) -> None:
    names = ["cat", "dog", "eel"]
    metrics.set_model("m", "s", (4, 4, 1), names, None, {}, [], [])
    metrics.observe_batch("simulator", 0.001, np.zeros(3), np.zeros(3), np.array([2, 0, 2]), names)
    get = registry.get_sample_value
    assert [get("edge_predictions_total", {"class": c}) for c in names] == [1, 0, 2]
    assert get("edge_predictions_total", {"class": "2"}) is None


def test_energy_and_layers_carry_their_source(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.observe_energy("akida", EnergyReport(np.full(4, 5e-4), "power_meter", board_watts=0.95))
    stats = LayerStats(
        np.array([0, 3]), {"conv0": np.array([0, 40000])}, {"conv0": np.array([1.0, 0.25])}, "simulator_sample"
    )
    metrics.observe_layers(stats)
    get = registry.get_sample_value
    assert get("edge_energy_joules_total", {"backend": "akida", "source": "power_meter"}) == pytest.approx(2e-3)
    assert get("edge_inference_energy_joules_count", {"backend": "akida", "source": "power_meter"}) == 4
    assert get("edge_accelerator_power_watts") == 0.95
    labels = {"layer": "conv0", "source": "simulator_sample"}
    assert get("edge_layer_output_events_bucket", {**labels, "le": "0.0"}) == 1  # a silent layer
    assert get("edge_layer_output_events_bucket", {**labels, "le": "32768.0"}) == 1
    assert get("edge_layer_output_events_bucket", {**labels, "le": "65536.0"}) == 2
    assert get("edge_layer_activation_sparsity_ratio_bucket", {**labels, "le": "0.3"}) == 1


def test_batch_histogram_exports_what_a_prometheus_histogram_would() -> None:
    """Same buckets (le inclusive), sum and count as prometheus_client's Histogram, fed one by one."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_joules", "doc", ["layer"], ENERGY_BUCKETS, ours)
    reference = Histogram("x_joules", "doc", ["layer"], buckets=ENERGY_BUCKETS, registry=theirs)
    rng = np.random.default_rng(0)
    values = np.concatenate([10 ** rng.uniform(-7, 0, 500), np.array(ENERGY_BUCKETS), [0.0, 5.0]])
    # Chunks of 1 to 8 values take the per-value path, larger ones the NumPy path; a bare number too.
    sizes = np.cumsum([1, 2, 3, 5, 8, 9, 100, 1, 7, 200])
    for chunk in np.split(values, sizes):
        batch.observe(chunk[0] if len(chunk) == 1 else chunk, "conv0")
        for value in chunk:
            reference.labels("conv0").observe(value)

    def samples(registry: CollectorRegistry) -> dict:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in registry.collect()
            for s in f.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def _reference_les(buckets: tuple[float, ...]) -> list[str]:
    """The ``le`` labels prometheus_client's own Histogram writes for ``buckets`` (public API only)."""
    registry = CollectorRegistry()
    Histogram("x", "doc", buckets=buckets, registry=registry)
    return [s.labels["le"] for f in registry.collect() for s in f.samples if s.name == "x_bucket"]


@pytest.mark.parametrize(
    "buckets", [LATENCY_BUCKETS, ENERGY_BUCKETS, SPARSITY_BUCKETS, EVENT_BUCKETS, (1e-9, 3.0, 12345.678, 999999.0)]
)
def test_bucket_labels_are_those_of_a_prometheus_histogram(buckets: tuple[float, ...]) -> None:
    assert [bucket_label(b) for b in buckets] + ["+Inf"] == _reference_les(buckets)


@pytest.mark.parametrize("bound", [1e6, 1e21, math.inf, math.nan])
def test_bucket_bounds_we_cannot_label_like_prometheus_are_refused(bound: float) -> None:
    with pytest.raises(ValueError, match="only finite bounds below 1e6"):
        bucket_label(bound)


@pytest.mark.parametrize("widths", [(8, 16, 32), (32, 64, 128)], ids=["fixture", "project"])
def test_buckets_fit_the_ranges_the_simulator_reports(tmp_path, mnist_data, widths) -> None:
    """Energy, events and sparsity of real MNIST frames on a bundle of the default architecture (at
    the fixtures' widths and at the trained network's) land inside the buckets: none beyond the
    last bound (+Inf only), and not all in the first one."""
    frames = mnist_data.test_images[:300, :, :, None]
    make_bundle(tmp_path / "b", np.random.default_rng(0), frames[:200], mnist_data.test_labels[:200], widths)
    bundle = load_bundle(tmp_path / "b")
    registry = CollectorRegistry()
    metrics = Metrics(registry, DROP_REASONS)
    backend = SimulatorBackend(
        Simulator(bundle.model), DeviceProfile.packaged().bind(bundle.manifest.mappings["akd1000"])
    )
    for batch in np.array_split(frames, 10):
        result = backend.infer(batch)
        metrics.observe_energy(backend.name, result.energy)
        metrics.observe_layers(result.layers)

    histograms = {
        "edge_inference_energy_joules": (ENERGY_BUCKETS, [{"backend": "simulator", "source": "model"}]),
        "edge_layer_output_events": (
            EVENT_BUCKETS,
            [{"layer": layer.name, "source": "simulator"} for layer in bundle.model.layers],
        ),
        # The output layer's potentials are almost never zero: its sparsity is ~0 by design.
        "edge_layer_activation_sparsity_ratio": (
            SPARSITY_BUCKETS,
            [{"layer": layer.name, "source": "simulator"} for layer in bundle.model.layers if layer.activation],
        ),
    }
    get = registry.get_sample_value
    for name, (buckets, series) in histograms.items():
        for labels in series:
            count = get(f"{name}_count", labels)
            assert count == len(frames), (name, labels)
            les = _reference_les(buckets)
            assert get(f"{name}_bucket", {**labels, "le": les[-2]}) == count, (name, labels)
            assert get(f"{name}_bucket", {**labels, "le": les[0]}) < count, (name, labels)
    for buckets in (LATENCY_BUCKETS, ENERGY_BUCKETS, SPARSITY_BUCKETS, EVENT_BUCKETS):
        assert list(buckets) == sorted(set(buckets))


def test_names_follow_prometheus_conventions(registry: CollectorRegistry, metrics: Metrics) -> None:
    for family in registry.collect():
        if family.name.startswith("process_"):
            continue
        assert family.name.startswith("edge_"), family.name
        if family.type == "counter":
            assert any(s.name.endswith("_total") for s in family.samples) or not family.samples
        if family.type == "histogram" and "energy" in family.name:
            assert family.name.endswith("_joules")


def test_http_endpoints_share_one_port(registry: CollectorRegistry, metrics: Metrics) -> None:
    health = Health()
    server = HttpServer(make_app(registry, health.readiness), "127.0.0.1", 0)
    server.start()
    try:
        assert http_get(f"{server.url}/healthz") == (200, "ok\n")
        assert http_get(f"{server.url}/readyz") == (503, "model not loaded\n")
        health.model_loaded = True
        assert http_get(f"{server.url}/readyz") == (503, "source not open\n")
        health.source_open = True
        assert http_get(f"{server.url}/readyz") == (200, "ready\n")
        health.source_open, health.source_finished = False, True
        assert http_get(f"{server.url}/readyz")[0] == 503
        status, body = http_get(f"{server.url}/metrics")
        assert status == 200 and 'edge_frames_dropped_total{reason="queue_full"} 0.0' in body
        assert http_get(f"{server.url}/nope")[0] == 404
    finally:
        server.close()


def test_ipv6_loopback_and_a_busy_port() -> None:
    registry = CollectorRegistry()
    first = HttpServer(make_app(registry, Health().readiness), "::1", 0)
    first.start()
    try:
        assert first.url.startswith("http://[::1]:")
        assert http_get(f"{first.url}/healthz")[0] == 200
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match=f"cannot listen on ::1:{port}"):
            HttpServer(make_app(registry, Health().readiness), "::1", port)
    finally:
        first.close()
