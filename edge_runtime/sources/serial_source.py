"""Frames from a sensor on a serial port (or any pyserial URL), surviving unplug and replug.

The port is read, and its packets decoded, by a child process (:mod:`.serial_reader`); this module
is the daemon's side of it. Why a process and not the pipeline's reader thread: decoding a packet
(COBS and the protocol checks, edge_runtime.protocol) is Python code, 25-30 µs of CPU per MNIST
frame, and a Python process runs one thread at a time (the GIL). In the reader thread it held the
GIL for 30-45 µs a frame, time the inference thread could not use even with a second core idle.
In its own process decoding runs beside inference, and the daemon's process spends a few µs a frame
on the source: parsing one binary record per run of frames (up to 64; :mod:`.reader_wire`, no
pickle, because the reader parses untrusted bytes) and wrapping the pixels in one array
(bench/daemon.py). The reader process costs as much CPU as the thread did, so this pays where a
core is free, as on an edge host serving one sensor; on a host whose every core is busy,
throughput follows the total CPU per frame either way.

What stays the same: :meth:`SerialSource.batches` yields the frames and reports every fault
through :class:`~.base.SourceEvents` from the thread iterating it, in order (the sequence gaps
within a run of frames are reported together, before the run).
pyserial does not reopen a port by itself, so the reader does: when the port cannot be opened or a
read fails (USB unplug raises SerialException), the sensor is reported down and the port retried
with capped exponential backoff, for ever, until :meth:`SerialSource.close`. ``close`` asks the
reader to stop; it does within a read timeout or a batch, and everything it decoded is still
yielded, so every frame it received is accounted for. The reader ignores SIGINT, SIGTERM and
SIGHUP (the daemon decides when reading stops) and exits when the daemon's end of its socket
closes, so it cannot outlive a killed daemon; if it dies, :meth:`SerialSource.batches` raises.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import serial

from ..errors import ConfigError, SourceError
from ..protocol import MAX_PAYLOAD_BYTES
from . import reader_wire as wire
from .base import Frame, NullEvents, SourceEvents
from .spec import DEFAULT_BAUD

log = logging.getLogger(__name__)

# The reader process runs this, with the directory edge_runtime was imported from (put on its path
# if not there already, so it runs this very code even from a source tree) and its socket's fd.
READER_BOOT = (
    "import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
    "from edge_runtime.sources.serial_reader import main; sys.exit(main(sys.argv[2:]))"
)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
READER_IGNORES = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
# After close(), how long the reader may take to finish its read and say "end" before it is killed.
STOP_GRACE_S = 5.0
# How often the receiving loop looks at close() and the grace deadline when no message comes.
POLL_S = 0.5
# One recv from the reader: a full batch of MNIST frames (64 x ~800 bytes) in one call.
RECV_BYTES = 1 << 20
# The reader sends at most this many frames per record (serial_reader.MAX_BATCH_FRAMES, kept here
# because that module imports this one); it bounds what the daemon buffers for one record.
MAX_BATCH_FRAMES = 64


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial``, then times ``factor`` each failure, never above ``maximum``."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * self.factor)


DEFAULT_BACKOFF = Backoff()


class SerialSource:
    """Reads protocol packets (edge_runtime.protocol) from ``url`` and yields decoded frames.

    ``read_timeout`` bounds how long :meth:`close` takes to be noticed by the reader process,
    which alone touches the port. :meth:`batches` starts that process and stops it when it returns.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUD,
        events: SourceEvents | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        read_timeout: float = 0.1,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        try:
            # Building a port object validates URL and settings without touching the device.
            serial.serial_for_url(url, baudrate=baudrate, timeout=read_timeout, exclusive=True, do_not_open=True)
        except (ValueError, serial.SerialException) as error:
            raise ConfigError(f"bad serial port {url!r}: {error}") from None
        self._url = url
        self._max_payload = max_payload
        self._settings = {
            "url": url,
            "baudrate": baudrate,
            "read_timeout": read_timeout,
            "backoff": astuple(backoff),
            "max_payload": max_payload,
        }
        self._events = events or NullEvents()
        self._closed = threading.Event()
        self._lock = threading.Lock()  # close() (any thread) and batches() both send to the reader
        self._connection: socket.socket | None = None
        self._pid: int | None = None
        self._up: bool | None = None

    def batches(self) -> Iterator[list[Frame]]:
        """The frames the reader decoded, one list per run (a read's frames, split at bad packets)."""
        if self._closed.is_set():
            return
        process, connection = self._start_reader()
        try:
            yield from self._receive(connection)
        finally:
            self._stop_reader(process, connection)

    @property
    def reader_pid(self) -> int | None:
        """The reader process while :meth:`batches` runs (for diagnostics and tests), else None."""
        return self._pid

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._connection is not None:
                self._ask_to_stop(self._connection)

    # --- the reader process ------------------------------------------------------------------

    def _start_reader(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        connection, theirs = socket.socketpair()
        with theirs:
            # The reader ignores the stop signals (see serial_reader); blocked from before it
            # exists, a Ctrl-C or SIGTERM to the process group cannot kill it while it starts up.
            # The mask is this thread's only and is inherited across exec.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, READER_IGNORES)
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", READER_BOOT, str(PACKAGE_ROOT), str(theirs.fileno())],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        with contextlib.suppress(OSError):  # it died at once: batches() says so when it reads the end
            connection.sendall(wire.settings(self._settings))
        with self._lock:
            self._connection = connection
            self._pid = process.pid
            if self._closed.is_set():  # close() came while we were starting
                self._ask_to_stop(connection)
        return process, connection

    @staticmethod
    def _ask_to_stop(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the reader is gone already
            connection.sendall(b"\x00")

    def _stop_reader(self, process: subprocess.Popen[bytes], connection: socket.socket) -> None:
        with self._lock:
            self._connection = None
            self._pid = None
            connection.close()  # the reader sees its parent gone (if it has not ended) and stops
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("serial reader process (pid %d) did not stop; killing it", process.pid)
            process.kill()
            process.wait()

    def _receive(self, connection: socket.socket) -> Iterator[list[Frame]]:
        """Yield frames and report events from the reader's records until it says END."""
        records = wire.RecordReader(MAX_BATCH_FRAMES * self._max_payload)
        # recv_into one buffer: recv(1 MiB) allocates 1 MiB per call, ~30 us, more than parsing a frame.
        scratch = bytearray(RECV_BYTES)
        deadline: float | None = None
        while True:
            if deadline is None and self._closed.is_set():
                deadline = time.monotonic() + STOP_GRACE_S
            if not select.select([connection], [], [], POLL_S)[0]:
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("serial reader did not finish within %.0f s of close()", STOP_GRACE_S)
                    return
                continue
            received = connection.recv_into(scratch)
            if not received:
                if self._closed.is_set():
                    return  # killed while we were stopping anyway
                raise SourceError(f"the serial reader process for {self._url} exited unexpectedly")
            try:
                batch = records.feed(memoryview(scratch)[:received])
            except wire.WireError as error:
                raise SourceError(
                    f"the serial reader process for {self._url} sent a malformed record ({error}); stopping it"
                ) from None
            for record in batch:
                if isinstance(record, wire.Frames):
                    yield self._frames(record)
                elif isinstance(record, wire.Received):
                    self._events.bytes_received(record.n)
                elif isinstance(record, wire.Bad):
                    log.debug("dropped packet from %s: %s (%s)", self._url, record.kind, record.detail)
                    self._events.bad_packet(record.kind)
                elif isinstance(record, wire.Flushed):
                    log.warning(
                        "%d bytes were waiting in %s when it opened (sent before we listened); discarded",
                        record.n,
                        self._url,
                    )
                    self._events.bytes_flushed(record.n)
                elif isinstance(record, wire.Up):
                    self._set_up(record.up, record.text)
                elif isinstance(record, wire.End):
                    return
                else:
                    raise RuntimeError(f"the serial reader process for {self._url} failed:\n{record.text}")

    def _frames(self, record: wire.Frames) -> list[Frame]:
        """One run of frames; a gap before any of them is reported before the run is yielded."""
        # Read-only views into the record's pixels: no copy per frame.
        images = np.frombuffer(record.pixels, np.uint8).reshape(len(record.ids), *record.shape)
        missing = sum(gap for _, gap in record.ids)
        if missing:
            self._events.dropped("seq_gap", missing)
        at = record.received_at
        return [Frame(seq, image, at) for (seq, _), image in zip(record.ids, images, strict=True)]

    def _set_up(self, up: bool, message: str) -> None:
        """Report and log link changes only, so a sensor unplugged for hours is one log line."""
        if up == self._up:
            log.debug("%s", message)
            return
        self._up = up
        log.log(logging.INFO if up else logging.WARNING, "%s", message)
        self._events.sensor_up(up)
