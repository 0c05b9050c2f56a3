"""The serve daemon in-process, fed through real pseudo-terminals: accounting, faults, readiness, fallback.

Every test checks the same invariant from the outside (HTTP scrapes and the prediction log): each
frame sent is inferred or counted as dropped with a reason, and what was inferred is what the
simulator predicts offline.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import akida
import numpy as np
import pytest
from daemon_support import (
    BundleUnderTest,
    FakeDevice,
    NotifyListener,
    PtyWriter,
    build_bundle,
    dropped_total,
    http_get,
    packets,
    scrape,
    scrape_when,
    total,
    value,
    wait_for,
)

from edge_runtime import cli
from edge_runtime import daemon as daemon_mod
from edge_runtime.backends import Board
from edge_runtime.daemon import Daemon
from edge_runtime.emulator import PtyPort, SensorEmulator, corrupt_packet
from edge_runtime.energy import DeviceProfile
from edge_runtime.errors import ConfigError
from edge_runtime.sdnotify import Notifier
from edge_runtime.simulator import Simulator

FRAMES = 2000


@pytest.fixture(scope="module")
def mnist_frames(mnist_data) -> tuple[np.ndarray, np.ndarray]:
    return mnist_data.test_images[:FRAMES, :, :, None], mnist_data.test_labels[:FRAMES]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, mnist_frames) -> BundleUnderTest:
    images, labels = mnist_frames
    return build_bundle(tmp_path_factory.mktemp("bundle") / "a", 1, images[:200], labels[:200])


@contextmanager
def running(overrides: dict[str, Any], config: Path | None = None, **kwargs: Any) -> Iterator[Daemon]:
    """A started daemon whose main loop runs in a thread; stopped with SIGTERM (drain) on exit."""
    daemon = Daemon(config, {"metrics.listen": "127.0.0.1:0", **overrides}, **kwargs)
    daemon.start()
    status: list[int] = []
    loop = threading.Thread(target=lambda: status.append(daemon.wait()), daemon=True)
    loop.start()
    try:
        yield daemon
    finally:
        daemon.post(signal.SIGTERM)
        loop.join(60)
    assert status == [0]


def ready(daemon: Daemon) -> None:
    wait_for(lambda: http_get(f"{daemon.url}/readyz")[0] == 200, 30, "/readyz to return 200")


def inferred(samples: dict) -> float:
    return total(samples, "edge_inferences_total")


def wait_accounted(daemon: Daemon, log: Path, expected: int, timeout: float = 90) -> dict:
    """Until every frame is inferred or dropped and every inference is in the log; returns the scrape."""

    def done() -> dict | None:
        # The log first: a batch's metrics are all observed before its records are written, so a
        # scrape taken after the log was read shows at least what the log holds, never a batch half
        # observed (scraping first could see inferences_total counted and its latencies not yet).
        logged = log.read_bytes().count(b"\n") if log.exists() else -1  # whole lines: one may be mid-write
        samples = scrape(daemon.url)
        count = inferred(samples)
        if count + dropped_total(samples) >= expected and logged == count:
            return samples
        return None

    return wait_for(done, timeout, f"{expected} frames to be accounted for")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_predictions(records: list[dict], bundle: BundleUnderTest, images: np.ndarray, seq_offset: int = 0) -> None:
    seqs = np.array([r["seq"] for r in records]) - seq_offset
    assert len(set(seqs.tolist())) == len(seqs), "a frame was inferred twice"
    expected = bundle.predict(images[seqs])
    assert [r["class"] for r in records] == expected.tolist()


def check_counts_agree(samples: dict, records: list[dict]) -> None:
    """Metrics scraped over HTTP say what the prediction log says."""
    n = len(records)
    assert value(samples, "edge_inferences_total", backend="simulator") == n
    by_class = Counter(str(r["class"]) for r in records)
    for label in map(str, range(10)):
        assert value(samples, "edge_predictions_total", **{"class": label}) == by_class[label]
    assert value(samples, "edge_frame_latency_seconds_count") == n
    assert value(samples, "edge_inference_energy_joules_count", backend="simulator", source="model") == n
    energy = value(samples, "edge_energy_joules_total", backend="simulator", source="model")
    assert energy == pytest.approx(sum(r["energy_j"] for r in records), rel=1e-9)
    for layer in ("conv0", "conv1", "fc2", "fc3"):
        assert value(samples, "edge_layer_output_events_count", layer=layer, source="simulator") == n
        events = sum(r["events"][layer] for r in records)
        assert value(samples, "edge_layer_output_events_sum", layer=layer, source="simulator") == events
    received = value(samples, "edge_frames_received_total")
    pipeline_drops = sum(
        value(samples, "edge_frames_dropped_total", reason=r) for r in ("queue_full", "bad_shape", "inference_error")
    )
    assert received == n + pipeline_drops


def test_2000_mnist_frames_over_a_real_pty(tmp_path: Path, mnist_frames, bundle: BundleUnderTest) -> None:
    images, _ = mnist_frames
    log = tmp_path / "predictions.jsonl"
    with (
        PtyPort() as port,
        running(
            {
                "model.bundle": str(bundle.path),
                "source.spec": f"serial:{port.path}",
                "source.queue_size": 4096,
                "predictions.path": str(log),
            }
        ) as daemon,
    ):
        ready(daemon)
        writer = PtyWriter(port)
        writer.run(SensorEmulator(writer.write, images, count=FRAMES).run)
        samples = wait_accounted(daemon, log, FRAMES)
        writer.join(10)
        records = read_log(log)
        assert value(samples, "edge_backend_active", backend="simulator") == 1  # auto, and no board here
        assert value(samples, "edge_sensor_received_bytes_total") == writer.bytes
    assert len(records) + dropped_total(samples) == FRAMES
    assert dropped_total(samples) == 0  # a pty loses nothing and the queue was large enough
    check_predictions(records, bundle, images)
    check_counts_agree(samples, records)


def test_corrupt_bytes_cost_only_the_frames_they_hit(tmp_path: Path, mnist_frames, bundle: BundleUnderTest) -> None:
    images = mnist_frames[0][:600]
    rng = np.random.default_rng(3)
    chunks = packets(images)
    damaged = set(range(5, 600, 10))
    for index in damaged:
        if index % 20 == 5:  # line noise: random non-zero bytes inserted mid-packet
            middle = len(chunks[index]) // 2
            noise = bytes(rng.integers(1, 256, int(rng.integers(1, 40))).astype(np.uint8))
            chunks[index] = chunks[index][:middle] + noise + chunks[index][middle:]
        else:  # a flipped byte
            chunks[index] = corrupt_packet(chunks[index])
    log = tmp_path / "predictions.jsonl"
    with (
        PtyPort() as port,
        running(
            {
                "model.bundle": str(bundle.path),
                "source.spec": f"serial:{port.path}",
                "source.queue_size": 1024,
                "predictions.path": str(log),
            }
        ) as daemon,
    ):
        ready(daemon)
        writer = PtyWriter(port).send_chunks(chunks)
        samples = wait_accounted(daemon, log, len(images))
        writer.join(10)
    records = read_log(log)
    # Each damaged frame is one frame lost (a gap) and one bad packet, counted apart (issue 15).
    assert value(samples, "edge_frames_dropped_total", reason="seq_gap") == len(damaged)
    assert total(samples, "edge_sensor_bad_packets_total") == len(damaged)
    assert len(records) + dropped_total(samples) == len(images)
    assert not damaged & {r["seq"] for r in records}
    check_predictions(records, bundle, images)
    check_counts_agree(samples, records)


def test_the_sensor_vanishes_and_comes_back(tmp_path: Path, mnist_frames, bundle: BundleUnderTest) -> None:
    """The pty hangs up mid-stream (frames unsent or still in its buffer are lost) and reappears at the same name.

    The lost frames must show up as ``seq_gap`` once the sensor resumes at sequence number 400.
    """
    images = mnist_frames[0][:800]
    link = tmp_path / "sensor"
    log = tmp_path / "predictions.jsonl"
    first = PtyPort(link)
    with running(
        {
            "model.bundle": str(bundle.path),
            "source.spec": f"serial:{link}",
            "source.queue_size": 1024,
            "predictions.path": str(log),
        }
    ) as daemon:
        ready(daemon)
        writer = PtyWriter(first)
        writer.run(SensorEmulator(writer.write, images[:400]).run)
        wait_for(lambda: inferred(scrape(daemon.url)) >= 100, 30, "the first frames to be inferred")
        writer.stop()  # the sensor stops mid-stream (first, so no write can hit a reused fd number) ...
        first.close()  # ... and the port hangs up with whatever is still unread: all lost
        wait_for(lambda: value(scrape(daemon.url), "edge_sensor_up") == 0, 30, "the daemon to see the hangup")
        assert http_get(f"{daemon.url}/readyz") == (503, "source not open\n")
        with PtyPort(link) as second:
            ready(daemon)
            writer = PtyWriter(second)
            writer.run(SensorEmulator(writer.write, images[400:], start_seq=400).run)
            samples = wait_accounted(daemon, log, len(images))
            writer.join(10)
    records = read_log(log)
    lost_in_hangup = value(samples, "edge_frames_dropped_total", reason="seq_gap")
    assert len(records) + dropped_total(samples) == len(images)
    assert {r["seq"] for r in records} >= set(range(400, 800))  # everything after the reconnect
    assert lost_in_hangup == 400 - len([r for r in records if r["seq"] < 400])
    check_predictions(records, bundle, images)


def test_ready_only_once_the_source_is_open_and_the_watchdog_pings(tmp_path: Path, bundle: BundleUnderTest) -> None:
    link = tmp_path / "sensor"
    notify = NotifyListener(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"})
    try:
        with running({"model.bundle": str(bundle.path), "source.spec": f"serial:{link}"}, notifier=notifier) as daemon:
            assert http_get(f"{daemon.url}/healthz") == (200, "ok\n")
            wait_for(lambda: notify.find("STATUS"), 10, "a STATUS line")
            assert http_get(f"{daemon.url}/readyz") == (503, "source not open\n")
            assert notify.find("READY") == []
            assert value(scrape(daemon.url), "edge_sensor_up") == 0
            wait_for(lambda: len(notify.find("WATCHDOG", "1")) >= 3, 10, "watchdog pings while idle")
            with PtyPort(link):
                ready = wait_for(lambda: notify.find("READY", "1"), 30, "READY=1")
                assert "serving a " in ready[0]["STATUS"] and "on simulator" in ready[0]["STATUS"]
                assert http_get(f"{daemon.url}/readyz")[0] == 200
        wait_for(lambda: notify.find("STOPPING", "1"), 10, "STOPPING=1")
    finally:
        notify.close()


class EngineModel:
    """A stand-in for a model mapped on a board: akida's own engine computes the outputs.

    ``map`` accepts the fake device; ``forward`` fails once the device is marked broken.
    """

    def __init__(self, path: Path) -> None:
        self._model = akida.Model(str(path))
        self.device: Any = None
        self.power_events: list[Any] = []

    def map(self, device: Any) -> None:
        self.device = device

    def forward(self, images: np.ndarray) -> np.ndarray:
        self.device.forwarded += len(images)
        if self.device.forwarded > self.device.fail_after:
            raise RuntimeError("akida: DMA timeout")
        return self._model.forward(images)


def test_a_board_failure_falls_back_to_the_simulator_without_losing_frames(
    tmp_path: Path, mnist_frames, bundle: BundleUnderTest
) -> None:
    images = mnist_frames[0][:600]
    np.save(tmp_path / "frames.npy", images)
    device = FakeDevice(time.monotonic)
    device.forwarded, device.fail_after = 0, 450
    log = tmp_path / "predictions.jsonl"
    overrides = {
        "model.bundle": str(bundle.path),
        "source.spec": f"replay:{tmp_path / 'frames.npy'}?rate=400",
        "source.queue_size": 1024,
        "predictions.path": str(log),
        "inference.power_window_s": 0.45,
        "inference.sample_every": 5,
    }
    with running(overrides, board=Board(devices=lambda: [device], load_model=EngineModel)) as daemon:
        assert value(scrape(daemon.url), "edge_accelerator_up") == 1
        samples = wait_accounted(daemon, log, len(images))
    records = read_log(log)
    assert sorted(r["seq"] for r in records) == list(range(600))  # the failed batch was re-run
    assert dropped_total(samples) == 0
    check_predictions(records, bundle, images)
    assert value(samples, "edge_backend_errors_total", backend="akida") == 1
    assert value(samples, "edge_backend_fallbacks_total", backend="akida") == 1
    assert value(samples, "edge_backend_active", backend="simulator") == 1
    assert value(samples, "edge_accelerator_up") == 0
    on_board = value(samples, "edge_inferences_total", backend="akida")
    assert 0 < on_board <= 450 and on_board + value(samples, "edge_inferences_total", backend="simulator") == 600
    assert value(samples, "edge_energy_joules_total", backend="akida", source="power_meter") > 0
    assert value(samples, "edge_accelerator_power_watts") == pytest.approx(1.0)
    sampled = value(samples, "edge_layer_output_events_count", layer="conv1", source="simulator_sample")
    assert sampled == pytest.approx(on_board / 5, abs=1)
    assert {r["backend"] for r in records} == {"akida", "simulator"}
    assert {r["energy_source"] for r in records if r["backend"] == "akida"} == {"power_meter"}


def serve_replay(tmp_path: Path, bundle: BundleUnderTest, images: np.ndarray, **overrides: Any) -> tuple[dict, list]:
    """Serve ``images`` from a replay (back-pressure: nothing dropped) and return the scrape and the log."""
    np.save(tmp_path / "frames.npy", images)
    log = tmp_path / "predictions.jsonl"
    settings = {
        "model.bundle": str(bundle.path),
        "source.spec": f"replay:{tmp_path / 'frames.npy'}",
        "predictions.path": str(log),
        **overrides,
    }
    with running(settings) as daemon:
        samples = wait_accounted(daemon, log, len(images))
    return samples, read_log(log)


def test_onnx_backend_agrees_with_the_simulator_and_samples_layers(
    tmp_path: Path, mnist_frames, bundle: BundleUnderTest
) -> None:
    images = mnist_frames[0][:300]
    samples, records = serve_replay(
        tmp_path, bundle, images, **{"inference.backend": "onnx", "inference.sample_every": 4}
    )
    assert len(records) == 300 and value(samples, "edge_inferences_total", backend="onnx") == 300
    check_predictions(records, bundle, images)
    assert value(samples, "edge_layer_output_events_count", layer="conv0", source="simulator_sample") == 75
    assert total(samples, "edge_energy_joules_total") == 0  # a CPU's energy is not the chip's: none reported
    assert {r["energy_j"] for r in records} == {None}
    assert value(samples, "edge_accelerator_up") == 0 and value(samples, "edge_backend_active", backend="onnx") == 1


def test_a_full_disk_under_the_prediction_log_is_counted_and_inference_goes_on(
    tmp_path: Path, mnist_frames, bundle: BundleUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    images = mnist_frames[0][:200]
    np.save(tmp_path / "frames.npy", images)
    settings = {
        "model.bundle": str(bundle.path),
        "source.spec": f"replay:{tmp_path / 'frames.npy'}",
        "predictions.path": "/dev/full",
    }
    with running(settings) as daemon:
        samples = scrape_when(
            daemon.url, lambda s: value(s, "edge_sink_errors_total", sink="jsonl") == 200, "200 records counted as lost"
        )
    assert inferred(samples) == 200
    assert len([r for r in caplog.records if "cannot write predictions to /dev/full" in r.getMessage()]) == 1


def test_sighup_rejects_what_cannot_be_read_and_keeps_serving(
    tmp_path: Path,
    mnist_frames,
    bundle: BundleUnderTest,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unreadable manifest, a binary config, or any read failure below them: a rejected reload, never an exit."""
    np.save(tmp_path / "frames.npy", mnist_frames[0][:200])
    unreadable = tmp_path / "unreadable"
    shutil.copytree(bundle.path, unreadable)
    # Tests run as root, which chmod does not stop: /proc/self/mem is a regular file whose first read fails (EIO).
    (unreadable / "manifest.json").unlink()
    (unreadable / "manifest.json").symlink_to("/proc/self/mem")
    config = tmp_path / "edge-runtime.toml"
    text = f'[model]\nbundle = "{bundle.path}"\n[source]\nspec = "replay:{tmp_path / "frames.npy"}?rate=500&loop=1"\n'
    config.write_text(text)

    def reload_rejected(daemon: Daemon, count: int) -> None:
        daemon.post(signal.SIGHUP)
        samples = scrape_when(
            daemon.url, lambda s: value(s, "edge_reloads_total", result="rejected") == count, f"rejected reload {count}"
        )
        assert value(samples, "edge_reloads_total", result="ok") == 0
        info = ("edge_model_info", (("input_shape", "28x28x1"), ("name", "a"), ("sha256", bundle.bundle.sha256)))
        assert samples[info] == 1  # still serving a
        before = inferred(samples)
        wait_for(lambda: inferred(scrape(daemon.url)) > before + 20, 30, "inference to go on after the rejection")

    with running({}, config) as daemon:
        wait_for(lambda: inferred(scrape(daemon.url)) >= 20, 30, "inferences on bundle a")
        config.write_text(text.replace(str(bundle.path), str(unreadable)))
        reload_rejected(daemon, 1)
        config.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00 a binary, not TOML\n")
        reload_rejected(daemon, 2)
        config.write_text(text)

        def denied(path: str) -> None:
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(daemon_mod, "verify", denied)  # a read failure no layer below turned into a user error
        reload_rejected(daemon, 3)
    rejected = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 3 and all("still serving a (" in line and "\n" not in line for line in rejected)
    assert "manifest.json: cannot be read (Input/output error)" in rejected[0]
    assert f"{config}: not a TOML file (not UTF-8 text" in rejected[1]
    assert "Permission denied" in rejected[2]


def test_a_replay_of_frames_the_model_cannot_take_is_refused_at_start(
    tmp_path: Path, bundle: BundleUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    """32x32 frames for a 28x28 model would all be dropped as bad_shape: a user error, not a silent daemon."""
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 32, 32), np.uint8))
    daemon = Daemon(
        None, {"model.bundle": str(bundle.path), "source.spec": f"replay:{wrong}", "metrics.listen": "127.0.0.1:0"}
    )
    with pytest.raises(ConfigError, match=r"frames are 32x32x1, the model takes 28x28x1"):
        daemon.start()
    assert (
        cli.main(["serve", "--model", str(bundle.path), "--source", f"replay:{wrong}", "--metrics-addr", "127.0.0.1:0"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-runtime: error: ") and "\n" not in err
    assert f"replay:{wrong}: frames are 32x32x1, the model takes 28x28x1" in err


def test_a_calibrated_device_profile_is_used_and_a_bad_path_refused(
    tmp_path: Path, mnist_frames, bundle: BundleUnderTest
) -> None:
    default = DeviceProfile.packaged("akd1000")
    c = default.coefficients
    calibrated = dataclasses.replace(
        default,
        version="site-calibrated",
        coefficients=dataclasses.replace(c, dyn_pj_per_synop=3 * c.dyn_pj_per_synop, floor_power_w=2 * c.floor_power_w),
    )
    calibrated.save(tmp_path / "profile.json")
    images = mnist_frames[0][:60]
    _, records = serve_replay(tmp_path, bundle, images, **{"inference.device_profile": str(tmp_path / "profile.json")})
    records.sort(key=lambda r: r["seq"])
    counters = Simulator(bundle.bundle.model).run(images).counters.layers
    mapping = bundle.bundle.manifest.mappings["akd1000"]
    got = np.array([r["energy_j"] for r in records])
    np.testing.assert_allclose(got, calibrated.bind(mapping).evaluate_counters(counters).total_j, rtol=1e-9)
    assert not np.allclose(got, default.bind(mapping).evaluate_counters(counters).total_j, rtol=1e-3)
    with pytest.raises(ConfigError, match=r"nowhere\.json: cannot read device profile"):
        Daemon(
            None,
            {
                "model.bundle": str(bundle.path),
                "source.spec": "replay:mnist-test",
                "inference.device_profile": str(tmp_path / "nowhere.json"),
            },
        )
    with pytest.raises(ConfigError, match=r"a profile for akd1000, but the device is 'akd1500': set inference\.device"):
        Daemon(
            None,
            {
                "model.bundle": str(bundle.path),
                "source.spec": "replay:mnist-test",
                "inference.device": "akd1500",
                "inference.device_profile": str(tmp_path / "profile.json"),
            },
        )
