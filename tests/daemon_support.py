"""What the daemon tests share: bundles, an HTTP scraper, a systemd notify listener, waiting helpers.

No sleeps: every wait polls a condition (HTTP, a socket, a file) against a deadline and fails with
what it last saw.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import akida
import numpy as np
from bundle_fixtures import make_bundle
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.emulator import PtyPort
from edge_runtime.protocol import DELIMITER, encode_frame

REPO = Path(__file__).resolve().parent.parent
EDGE_RUNTIME = Path(sys.executable).with_name("edge-runtime")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, urllib.error.URLError) as error:  # e.g. the server is not listening yet
            last = error
        else:
            if last:
                return last
        time.sleep(interval)  # a polling interval, not a guess at how long something takes
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str) -> Samples:
    """Every sample at ``base_url/metrics`` as {(name, sorted labels): value}."""
    status, text = http_get(f"{base_url}/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape_when(base_url: str, condition: Callable[[Samples], object], what: str, timeout: float = 60) -> Samples:
    """The first scrape for which ``condition`` holds."""

    def attempt() -> Samples | None:
        samples = scrape(base_url)
        return samples if condition(samples) else None

    return wait_for(attempt, timeout, what)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series that does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, key), v in samples.items() if n == name and wanted <= set(key))


def dropped_total(samples: Samples) -> float:
    return total(samples, "edge_frames_dropped_total")


@dataclass(frozen=True)
class BundleUnderTest:
    path: Path
    bundle: Bundle

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Classes akida's own engine gives offline for the bundle's .fbz: the reference the daemon's
        predictions must match. Not our simulator, which is what the daemon serves on this host: a
        simulator-backend run compared with the simulator would compare the code with itself."""
        outputs = akida.Model(str(self.bundle.fbz_path)).forward(np.ascontiguousarray(frames, np.uint8))
        return np.argmax(outputs.reshape(len(frames), -1), axis=1)


def build_bundle(path: Path, seed: int, frames: np.ndarray, labels: np.ndarray) -> BundleUnderTest:
    make_bundle(path, np.random.default_rng(seed), frames, labels.astype(np.int64))
    return BundleUnderTest(path, load_bundle(path))


class NotifyListener:
    """Plays systemd's side of sd_notify: a datagram socket whose messages are collected in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)

    def find(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        with self._lock:
            return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


def packets(frames: np.ndarray, start_seq: int = 0) -> list[bytes]:
    """Protocol packets for ``frames``, encoded ahead so sending costs nothing but the write."""
    return [encode_frame(start_seq + i, frame) for i, frame in enumerate(frames)]


@dataclass
class DaemonProcess:
    """``edge-runtime serve`` as a child process, with its notify messages, stdout lines and stderr."""

    process: subprocess.Popen[str]
    notify: NotifyListener
    stdout_lines: list[str]
    stderr_lines: list[str]
    _readers: list[threading.Thread]

    @property
    def url(self) -> str:
        """The metrics URL the daemon put in its log (it listens on port 0: any free port)."""
        line = wait_for(
            lambda: next((s for s in self.stderr_lines if "metrics at http://" in s), None),
            30,
            "the daemon's 'metrics at' log line",
            interval=0.05,
        )
        return line.split("metrics at ")[1].split("/metrics")[0]

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code


def _pump(stream: Any, lines: list[str]) -> threading.Thread:
    def run() -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@contextmanager
def daemon_process(tmp_path: Path, args: list[str], watchdog_usec: int | None = None) -> Iterator[DaemonProcess]:
    """Run ``edge-runtime serve ARGS`` with NOTIFY_SOCKET pointing at a listener; kill it if the test fails."""
    notify = NotifyListener(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    process = subprocess.Popen(
        [str(EDGE_RUNTIME), "serve", "--metrics-addr", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    stdout_lines: list[str] = []
    stderr_lines: list[str] = []
    readers = [_pump(process.stdout, stdout_lines), _pump(process.stderr, stderr_lines)]
    child = DaemonProcess(process, notify, stdout_lines, stderr_lines, readers)
    try:
        yield child
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        notify.close()


class WriterStopped(Exception):
    """Raised inside the sending thread when the test stops a :class:`PtyWriter`."""


class PtyWriter:
    """Sends through a :class:`PtyPort` from a thread, counting bytes; :meth:`stop` ends the thread.

    Once stopped, a write raises :class:`WriterStopped`, so whatever is sending gives up at once.
    """

    def __init__(self, port: PtyPort) -> None:
        self._port = port
        self._stop = threading.Event()
        self.bytes = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        if not self._stop.is_set():
            self._port.write(data)  # returns early once stopped
        if self._stop.is_set():
            raise WriterStopped
        self.bytes += len(data)

    def run(self, send: Callable[[], object]) -> PtyWriter:
        """Call ``send`` (which writes through :meth:`write`) in a thread."""

        def target() -> None:
            try:
                send()
            except WriterStopped:
                pass
            except OSError as error:  # the pty was closed under us
                self.error = error

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        return self

    def send_chunks(self, chunks: list[bytes]) -> PtyWriter:
        """Send a leading delimiter (ends any half packet), then ``chunks`` as they are."""

        def send() -> None:
            self.write(DELIMITER)
            for chunk in chunks:
                self.write(chunk)

        return self.run(send)

    def join(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still sending after {timeout} s ({self.bytes} bytes written)"
        assert self.error is None, self.error

    def stop(self) -> None:
        self._stop.set()
        self._port.stop_writing()
        if self._thread is not None:
            self._thread.join(10)


class FakeMeter:
    """akida.PowerMeter's surface: ``floor`` in mW and ``events()`` -> [PowerEvent(ts ms, power mW)]."""

    def __init__(self, clock, milliwatts: float = 1000.0, floor: float = 900.0) -> None:
        self.floor = floor
        self._clock, self._mw, self._next = clock, milliwatts, 0

    def events(self) -> list[SimpleNamespace]:
        now_ms = int(self._clock() * 1000)
        out = []
        while self._next <= now_ms:
            out.append(SimpleNamespace(ts=self._next, power=self._mw, voltage=0, current=0))
            self._next += 141
        return out


class FakeDevice:
    """akida.HardwareDevice's surface the backend uses: ``desc`` and ``soc`` (None: no SoC driver)."""

    def __init__(self, clock, with_soc: bool = True) -> None:
        self.desc = "fake AKD1000"
        self.soc = SimpleNamespace(power_measurement_enabled=False, power_meter=FakeMeter(clock)) if with_soc else None
        self.broken = False
