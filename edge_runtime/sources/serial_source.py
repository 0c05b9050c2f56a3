"""Frames from a sensor on a serial port (or any pyserial URL), surviving unplug and replug.

The port is read, and its packets decoded, by a child process (:mod:`.serial_reader`); this module
is the daemon's side of it. Why a process and not the pipeline's reader thread: decoding a packet
(COBS and the protocol checks, edge_runtime.protocol) is Python code, 25-30 µs of CPU per MNIST
frame, and a Python process runs one thread at a time (the GIL). In the reader thread it held the
GIL for 30-45 µs a frame, time the inference thread could not use even with a second core idle.
In its own process decoding runs beside inference, and the daemon's process spends 5-7 µs a frame
on the source: unpickling one message per batch of reads (up to 64 frames) and wrapping the pixels
without copying them (bench/daemon.py; 2-core host). The reader process costs as much CPU as the
thread did, so this pays where a core is free, as on an edge host serving one sensor; on a host
whose every core is busy, throughput follows the total CPU per frame either way.

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
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import serial

from ..errors import ConfigError, SourceError
from ..protocol import MAX_PAYLOAD_BYTES
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
        self._settings = {"url": url, "baudrate": baudrate, "read_timeout": read_timeout,
                          "backoff": astuple(backoff), "max_payload": max_payload}
        self._events = events or NullEvents()
        self._closed = threading.Event()
        self._lock = threading.Lock()  # close() (any thread) and batches() both send to the reader
        self._connection: Connection | None = None
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

    def _start_reader(self) -> tuple[subprocess.Popen[bytes], Connection]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            # The reader ignores the stop signals (see serial_reader); blocked from before it
            # exists, a Ctrl-C or SIGTERM to the process group cannot kill it while it starts up.
            # The mask is this thread's only and is inherited across exec.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, READER_IGNORES)
            try:
                process = subprocess.Popen(
                    [sys.executable, "-c", READER_BOOT, str(PACKAGE_ROOT), str(theirs.fileno())],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            connection = Connection(ours.detach())
        with contextlib.suppress(OSError):  # it died at once: batches() says so when it reads the end
            connection.send(self._settings)
        with self._lock:
            self._connection = connection
            self._pid = process.pid
            if self._closed.is_set():  # close() came while we were starting
                self._ask_to_stop(connection)
        return process, connection

    @staticmethod
    def _ask_to_stop(connection: Connection) -> None:
        with contextlib.suppress(OSError):  # the reader is gone already
            connection.send(None)

    def _stop_reader(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
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

    def _receive(self, connection: Connection) -> Iterator[list[Frame]]:
        """Yield frames and report events from the reader's messages until it says "end"."""
        deadline: float | None = None
        while True:
            if deadline is None and self._closed.is_set():
                deadline = time.monotonic() + STOP_GRACE_S
            if not connection.poll(POLL_S):
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("serial reader did not finish within %.0f s of close()", STOP_GRACE_S)
                    return
                continue
            try:
                message: list[tuple[Any, ...]] = connection.recv()
            except EOFError:
                if self._closed.is_set():
                    return  # killed while we were stopping anyway
                raise SourceError(f"the serial reader process for {self._url} exited unexpectedly") from None
            for record in message:
                kind = record[0]
                if kind == "frames":
                    yield self._frames(*record[1:])
                elif kind == "bytes":
                    self._events.bytes_received(record[1])
                elif kind == "corrupt":
                    log.debug("dropped packet from %s: %s (%s)", self._url, record[1], record[2])
                    self._events.dropped("corrupt")
                elif kind == "up":
                    self._set_up(record[1], record[2])
                elif kind == "end":
                    return
                elif kind == "error":
                    raise RuntimeError(f"the serial reader process for {self._url} failed:\n{record[1]}")
                else:
                    raise RuntimeError(f"unknown message from the serial reader: {record!r}")

    def _frames(self, received_at: float, shape: tuple[int, ...], pixels: bytes,
                frames: list[tuple[int, int]]) -> list[Frame]:
        """One run of frames; a gap before any of them is reported before the run is yielded."""
        # Read-only views into the message: no copy per frame.
        images = np.frombuffer(pixels, np.uint8).reshape(len(frames), *shape)
        missing = sum(gap for _, gap in frames)
        if missing:
            self._events.dropped("seq_gap", missing)
        return [Frame(seq, image, received_at) for (seq, _), image in zip(frames, images, strict=True)]

    def _set_up(self, up: bool, message: str) -> None:
        """Report and log link changes only, so a sensor unplugged for hours is one log line."""
        if up == self._up:
            log.debug("%s", message)
            return
        self._up = up
        log.log(logging.INFO if up else logging.WARNING, "%s", message)
        self._events.sensor_up(up)
