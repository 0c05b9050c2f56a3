"""End to end: emulated sensor -> pty -> ``edge-runtime serve`` -> a real Prometheus with our rules.

Why a real server and not only ``promtool test rules``: the unit tests prove the rules' arithmetic
on series we typed in. Only a scrape of the real daemon shows that the names, labels and types it
exports are the ones the rules expect, that the shipped config's file_sd and relabelling give each
series its site and instance, and that every rule evaluates without error on live data.

The Prometheus config is the shipped deploy/prometheus/prometheus.yml with only its intervals cut
to one second, so the test runs in seconds rather than minutes.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from bundle_fixtures import eval_set, random_default_model
from deploy_support import PROMETHEUS_DIR, alert_names, recording_rule_names, require_tool

from edge_runtime.emulator import PtyPort, SensorEmulator
from edge_runtime.mnist import Mnist
from exporter.bundle_build import export_model

pytestmark = pytest.mark.slow

SITE = "e2e"
RATE = 100  # frames/s from the emulated sensor: far below what the simulator takes, so nothing drops
DEADLINE_S = 30.0  # for each wait; the whole test takes ~10 s
POLL_S = 0.25
# What the test's copy of the shipped config changes: seconds instead of the fleet's 15 s.
FAST_INTERVALS = {
    "scrape_interval: 15s": "scrape_interval: 1s",
    "evaluation_interval: 15s": "evaluation_interval: 1s",
    "scrape_timeout: 10s": "scrape_timeout: 1s",
}

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(what: str, probe: Callable[[], T | None], diagnostics: Callable[[], str]) -> T:
    """Poll ``probe`` until it returns something other than None, or fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {DEADLINE_S:.0f} s waiting for {what}\n{diagnostics()}")


class Process:
    """A child process whose output goes to a file (a full pipe would stall it), killed for sure at the end."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """SIGTERM (both programs drain and exit cleanly on it), SIGKILL if that takes too long."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def bundle(tmp_path: Path, mnist_data: Mnist) -> Path:
    """A small random model with the energy model's expectation in its manifest (the real bundles have one)."""
    frames = mnist_data.test_images[:64, :, :, np.newaxis]
    model = random_default_model(np.random.default_rng(7), frames)
    out = tmp_path / "bundle"
    export_model(model, out, eval_set(frames, mnist_data.test_labels[:64]))
    return out


@pytest.fixture
def sensor(mnist_data: Mnist) -> Iterator[str]:
    """A pty fed with MNIST test frames by the emulator in a thread; yields the path the daemon opens."""
    with PtyPort() as port:
        emulator = SensorEmulator(port.write, mnist_data.test_images, rate=RATE, loop=True)
        thread = threading.Thread(target=emulator.run, name="e2e-sensor", daemon=True)
        thread.start()
        yield port.path
        emulator.stop()
        port.stop_writing()
        thread.join()


def prometheus_config(workdir: Path, target: str) -> Path:
    """The shipped config, rules and file_sd layout in ``workdir``, with one target and 1 s intervals."""
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    for slow, fast in FAST_INTERVALS.items():
        assert config.count(slow) == 1, f"prometheus.yml no longer says {slow!r}; update FAST_INTERVALS"
        config = config.replace(slow, fast)
    (workdir / "prometheus.yml").write_text(config)
    shutil.copytree(PROMETHEUS_DIR / "rules", workdir / "rules")
    (workdir / "targets").mkdir()
    (workdir / "targets" / "e2e.yml").write_text(json.dumps([{"targets": [target], "labels": {"site": SITE}}]))
    return workdir / "prometheus.yml"


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base

    def get_json(self, path: str, **params: str) -> Any:
        status, body = get(f"{self.base}{path}?{urllib.parse.urlencode(params)}")
        if status != 200:
            return None
        document = json.loads(body)
        return document["data"] if document.get("status") == "success" else None

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get_json("/api/v1/query", query=expr)
        return [] if data is None else data["result"]

    def values(self, expr: str) -> list[tuple[dict[str, str], float]]:
        return [(item["metric"], float(item["value"][1])) for item in self.query(expr)]


def test_prometheus_scrapes_the_daemon_and_evaluates_the_rules(
    tmp_path: Path, bundle: Path, sensor: str, processes: list[Process]
) -> None:
    daemon_port, prometheus_port = free_port(), free_port()
    daemon = Process(
        "daemon",
        [
            sys.executable,
            "-m",
            "edge_runtime.cli",
            "serve",
            "--model",
            str(bundle),
            "--source",
            f"serial:{sensor}",
            "--metrics-addr",
            f"127.0.0.1:{daemon_port}",
            "--backend",
            "simulator",
        ],
        tmp_path,
    )
    processes.append(daemon)
    wait_for(
        "the daemon to be ready",
        lambda: True if get(f"http://127.0.0.1:{daemon_port}/readyz")[0] == 200 else None,
        daemon.output,
    )

    config = prometheus_config(tmp_path, f"127.0.0.1:{daemon_port}")
    prometheus = Process(
        "prometheus",
        [
            require_tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        tmp_path,
    )
    processes.append(prometheus)
    api = PrometheusApi(f"http://127.0.0.1:{prometheus_port}")

    def diagnostics() -> str:
        return f"--- daemon:\n{daemon.output()}\n--- prometheus:\n{prometheus.output()}"

    def positive(expr: str) -> list[tuple[dict[str, str], float]] | None:
        """The samples of ``expr`` once there are some and all are > 0 (and not NaN)."""
        values = api.values(expr)
        return values if values and all(value > 0 for _, value in values) else None

    # Raw series: inferences, energy, per-layer sparsity and events, with labels from the scrape config.
    [(inferences, _)] = wait_for(
        "inferences", lambda: positive('edge_inferences_total{backend="simulator"}'), diagnostics
    )
    assert inferences["instance"] == "127.0.0.1" and inferences["site"] == SITE and inferences["job"] == "edge-runtime"
    assert wait_for("energy", lambda: positive("edge_energy_joules_total"), diagnostics)
    layers = wait_for("layer sparsity", lambda: positive("edge_layer_activation_sparsity_ratio_count"), diagnostics)
    assert {labels["layer"] for labels, _ in layers} == {"conv0", "conv1", "fc2", "fc3"}
    assert wait_for("layer events", lambda: positive("edge_layer_output_events_count"), diagnostics)

    # Recording rules, evaluated by the server on the live series.
    # Until a series has 5 minutes of history its 5m rates read low (rate() divides by the whole
    # window), so the test checks throughput with irate (the last two scrapes) and the rules' ratios,
    # which are exact from the start.
    # Only that a rate exists: how fast this shared host serves is bench/'s to measure, not a test's.
    assert wait_for("throughput", lambda: positive("sum(irate(edge_inferences_total[5s]))"), diagnostics)
    [(power, _)] = wait_for("power", lambda: positive("edge:power_watts:rate5m"), diagnostics)
    assert power["source"] == "model" and power["site"] == SITE
    assert wait_for("inferences per second", lambda: positive("edge:inferences:rate5m"), diagnostics)
    [(_, joules)] = wait_for(
        "energy per inference", lambda: positive("edge:energy_per_inference_joules:mean5m"), diagnostics
    )
    assert 1e-7 < joules < 0.1
    # On the simulator the joules counter and the energy histogram grow together: watts / (inferences/s)
    # gives the histogram's mean energy per inference (up to a batch counted between two reads of a scrape).
    [(_, consistency)] = wait_for(
        "power over throughput",
        lambda: positive(
            "(edge:power_watts:rate5m / ignoring (source) edge:inferences:rate5m)"
            " / ignoring (source) edge:energy_per_inference_joules:mean5m"
        ),
        diagnostics,
    )
    assert consistency == pytest.approx(1, rel=0.05)
    [(_, ratio)] = wait_for(
        "energy against the manifest", lambda: positive("edge:energy_per_inference_over_expected:ratio5m"), diagnostics
    )
    assert 0.5 < ratio < 2  # the same energy model, on MNIST frames like the manifest's
    sparsity = wait_for(
        "mean layer sparsity", lambda: api.values("edge:layer_activation_sparsity_ratio:mean5m") or None, diagnostics
    )
    assert len(sparsity) == 4 and all(0 <= value <= 1 for _, value in sparsity)
    density = wait_for(
        "density against the manifest",
        lambda: positive("edge:layer_activation_density_over_expected:ratio5m"),
        diagnostics,
    )
    assert all(math.isfinite(value) for _, value in density)
    [(_, dropped)] = wait_for("drop ratio", lambda: api.values("edge:frames_dropped:ratio_rate5m") or None, diagnostics)
    assert 0 <= dropped <= 1  # a ratio; how many frames a loaded host drops is not the rules' property

    # Every rule loaded and none failed to evaluate; with a healthy daemon nothing fires.
    groups = api.get_json("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules if r["type"] == "recording"} == recording_rule_names()
    assert {r["name"] for r in rules if r["type"] == "alerting"} == alert_names()
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert api.get_json("/api/v1/alerts")["alerts"] == []

    processes.remove(daemon)
    assert daemon.stop() == 0, daemon.output()
