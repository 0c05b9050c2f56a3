"""The daemon's less-used life-cycle paths, each made to happen in-process against real parts.

* a reload that changes ``[source]`` or ``[metrics]`` (which need a restart) applies the rest and
  keeps the running ones;
* a reload that changes ``[predictions]`` swaps the sinks: every later record goes to the new log;
* a worker thread that fails (the serial reader process killed under us) ends ``wait()`` with 1,
  so systemd restarts the service;
* a SIGHUP before READY=1 (the sensor never came up) reloads without RELOADING=1 / READY=1, which
  systemd would take for the end of start-up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_support import BundleUnderTest, NotifyListener, build_bundle, scrape, scrape_when, total, value, wait_for
from test_daemon import read_log, ready

from edge_runtime.config import load_config
from edge_runtime.daemon import Daemon, restart_only_changes
from edge_runtime.emulator import PtyPort
from edge_runtime.sdnotify import Notifier


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, mnist_data) -> tuple[BundleUnderTest, BundleUnderTest]:
    images, labels = mnist_data.test_images[:200, :, :, None], mnist_data.test_labels[:200]
    root = tmp_path_factory.mktemp("reload")
    return build_bundle(root / "a", 1, images, labels), build_bundle(root / "b", 2, images, labels)


class Served:
    """A started daemon whose main loop runs in a thread; ``status`` is what ``wait()`` returned."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.status: list[int] = []
        self.loop = threading.Thread(target=lambda: self.status.append(daemon.wait()), daemon=True)

    def exited(self, timeout: float) -> int:
        """The exit status; fails (after posting SIGTERM to end the daemon) if it did not exit by itself."""
        self.loop.join(timeout)
        if self.loop.is_alive():
            self.daemon.post(signal.SIGTERM)
            self.loop.join(60)
            raise AssertionError(f"the daemon did not exit by itself within {timeout:.0f} s")
        return self.status[0]


@contextmanager
def serve(config: Path | None, overrides: dict[str, Any], **kwargs: Any) -> Iterator[Served]:
    """Like test_daemon.running, without its metrics.listen override (a test here changes [metrics])."""
    daemon = Daemon(config, overrides, **kwargs)
    daemon.start()
    served = Served(daemon)
    served.loop.start()
    try:
        yield served
    finally:
        if served.loop.is_alive():
            daemon.post(signal.SIGTERM)
            served.loop.join(60)


def write_config(path: Path, bundle: Path, source: str, listen: str, log: Path) -> None:
    path.write_text(
        f'[model]\nbundle = "{bundle}"\n[source]\nspec = "{source}"\n'
        f'[metrics]\nlisten = "{listen}"\n[predictions]\npath = "{log}"\n'
    )


def replay(tmp_path: Path, mnist_data, name: str, count: int) -> str:
    np.save(tmp_path / name, mnist_data.test_images[:count, :, :, None])
    return f"replay:{tmp_path / name}?rate=400&loop=1"


def test_restart_only_changes_names_source_and_metrics_only(tmp_path: Path) -> None:
    base = {"model.bundle": "/b", "source.spec": "replay:mnist-test", "metrics.listen": "127.0.0.1:0"}
    old = load_config(None, base)
    assert (
        restart_only_changes(
            old, load_config(None, {**base, "model.bundle": "/c", "source.queue_size": 64, "predictions.stdout": True})
        )
        == []
    )
    assert restart_only_changes(old, load_config(None, {**base, "source.queue_size": 8})) == ["[source]"]
    assert restart_only_changes(old, load_config(None, {**base, "metrics.listen": "127.0.0.1:1"})) == ["[metrics]"]
    both = load_config(None, {**base, "source.spec": "replay:mnist-test?rate=5", "metrics.listen": "[::1]:0"})
    assert restart_only_changes(old, both) == ["[source]", "[metrics]"]


def test_a_reload_keeps_source_and_metrics_and_applies_the_rest(
    tmp_path: Path, mnist_data, bundles, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = bundles
    source, other = replay(tmp_path, mnist_data, "frames.npy", 200), replay(tmp_path, mnist_data, "other.npy", 50)
    config, log = tmp_path / "edge-runtime.toml", tmp_path / "predictions.jsonl"
    write_config(config, a.path, source, "127.0.0.1:0", log)
    with caplog.at_level(logging.WARNING), serve(config, {}) as served:
        daemon = served.daemon
        url, before = daemon.url, daemon.config
        scrape_when(url, lambda s: total(s, "edge_inferences_total") >= 20, "inferences on bundle a")
        write_config(config, b.path, other, "127.0.0.1:9", log)  # a new bundle, a new source and a new port
        daemon.post(signal.SIGHUP)
        samples = scrape_when(url, lambda s: value(s, "edge_reloads_total", result="ok") == 1, "the reload")
        assert daemon.url == url  # still listening where it was, and answering
        assert daemon.bundle is not None and daemon.bundle.path == b.path  # the bundle change was applied
        assert daemon.config.source == before.source and daemon.config.metrics == before.metrics
        assert value(samples, "edge_reloads_total", result="rejected") == 0
        # A second SIGHUP with the same file: the kept settings are still different, the warning repeats.
        daemon.post(signal.SIGHUP)
        scrape_when(url, lambda s: value(s, "edge_reloads_total", result="ok") == 2, "the second reload")
        assert daemon.config.source == before.source
    warnings = [r.getMessage() for r in caplog.records if "need a restart" in r.getMessage()]
    assert warnings == ["reload: changes to [source], [metrics] need a restart; keeping the running ones"] * 2


def test_a_reload_that_moves_the_prediction_log_swaps_the_sink(tmp_path: Path, mnist_data, bundles) -> None:
    a, _ = bundles
    source = replay(tmp_path, mnist_data, "frames.npy", 200)
    config, first, second = tmp_path / "edge-runtime.toml", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    write_config(config, a.path, source, "127.0.0.1:0", first)
    with serve(config, {}) as served:
        daemon = served.daemon
        wait_for(lambda: first.exists() and len(read_log(first)) >= 20, 30, "records in the first log")
        write_config(config, a.path, source, "127.0.0.1:0", second)
        daemon.post(signal.SIGHUP)
        scrape_when(daemon.url, lambda s: value(s, "edge_reloads_total", result="ok") == 1, "the reload")
        in_first = len(read_log(first))  # the swap is done: nothing more may arrive here
        wait_for(lambda: second.exists() and len(read_log(second)) >= 20, 30, "records in the second log")
        assert daemon.config.predictions.path == str(second)
    old, new = read_log(first), read_log(second)
    assert len(old) == in_first
    assert max(r["seq"] for r in old) < min(r["seq"] for r in new)  # one stream, cut once


def reader_processes() -> list[int]:
    """Child processes of this one running the serial reader."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as handle:
            pids += [int(pid) for pid in handle.read().split()]
    found = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"serial_reader" in handle.read():
                    found.append(pid)
        except FileNotFoundError:  # it exited meanwhile
            pass
    return found


def test_a_failed_worker_thread_ends_the_daemon_with_status_1(bundles, caplog: pytest.LogCaptureFixture) -> None:
    a, _ = bundles
    with (
        caplog.at_level(logging.ERROR),
        PtyPort() as port,
        serve(
            None, {"model.bundle": str(a.path), "source.spec": f"serial:{port.path}", "metrics.listen": "127.0.0.1:0"}
        ) as served,
    ):
        ready(served.daemon)
        (pid,) = wait_for(reader_processes, 30, "the serial reader process")
        os.kill(pid, signal.SIGKILL)  # the reader dies: the source's thread fails
        assert served.exited(30) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "frame source failed" in messages
    assert "a worker thread failed; exiting so the service manager restarts us" in messages


def test_sighup_before_ready_reloads_without_telling_systemd_it_is_reloading(tmp_path: Path, bundles) -> None:
    a, b = bundles
    link = tmp_path / "sensor"  # no sensor yet: the daemon cannot be ready
    notify = NotifyListener(tmp_path / "notify")
    config = tmp_path / "edge-runtime.toml"
    write_config(config, a.path, f"serial:{link}", "127.0.0.1:0", tmp_path / "p.jsonl")
    try:
        with serve(config, {}, notifier=Notifier({"NOTIFY_SOCKET": str(notify.path)})) as served:
            daemon = served.daemon
            wait_for(lambda: notify.find("STATUS"), 10, "a STATUS line")
            write_config(config, b.path, f"serial:{link}", "127.0.0.1:0", tmp_path / "p.jsonl")
            daemon.post(signal.SIGHUP)
            scrape_when(daemon.url, lambda s: value(s, "edge_reloads_total", result="ok") == 1, "the early reload")
            assert value(scrape(daemon.url), "edge_sensor_up") == 0
            with PtyPort(link):
                ready(daemon)
                wait_for(lambda: notify.find("READY", "1"), 30, "READY=1 once the sensor is there")
                daemon.post(signal.SIGHUP)
                wait_for(lambda: len(notify.find("READY", "1")) == 2, 30, "READY=1 after the second reload")
    finally:
        notify.close()
    sequence = [key for m in notify.messages for key in ("READY", "RELOADING", "STOPPING") if key in m]
    assert sequence == ["READY", "RELOADING", "READY", "STOPPING"]
    first_ready = notify.find("READY", "1")[0]
    assert "serving b (" in first_ready["STATUS"]  # the early reload was applied before start-up ended
