"""The serial reader process: owns the sensor's port, decodes packets, sends frames to the daemon.

:class:`~.serial_source.SerialSource` runs :func:`main` in a child process (why a process is
explained there) and talks to it over a socket pair in the fixed binary format of
:mod:`.reader_wire` (no pickle: this process parses untrusted bytes, so the daemon must not trust
what it says beyond the format's checks). The first message from the parent is the settings;
after that, any byte from the parent, or its end of the socket closing (the daemon died), means
"stop".

To the parent go records, in order, one or more reads' worth per send (see ``Reader._pump``): the
link going up or down, bytes read, bytes flushed when the port opened, bad packets by kind, and
runs of frames of one shape decoded from one read (their pixels in one record, so one copy per
read, not per frame; ``received_at`` is ``time.monotonic()``, one system-wide clock on Linux).
The last record is END once the parent asked to stop, or FAILED with a traceback on a bug.
This process ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or ``systemctl stop`` reaches the whole
process group, and the daemon, not the signal, decides when reading stops (after it drained us).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import termios
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import serial

from ..protocol import BadPacket, DecodedFrame, FrameDecoder
from . import reader_wire as wire
from .serial_source import MAX_BATCH_FRAMES, READER_IGNORES, Backoff


class ParentGone(Exception):
    """The daemon closed its end of the socket (it exited or died): stop at once."""


class Parent:
    """The connection to the daemon: records out, a stop request in."""

    def __init__(self, connection: socket.socket) -> None:
        self._connection = connection
        self.stop_requested = False

    def receive_settings(self) -> dict[str, Any]:
        head = self._read_exactly(wire.SETTINGS_LENGTH.size)
        (length,) = wire.SETTINGS_LENGTH.unpack(head)
        if length > wire.MAX_SETTINGS_BYTES:
            raise wire.WireError(f"settings of {length} bytes")
        return wire.parse_settings(self._read_exactly(length))

    def _read_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self._connection.recv(n - len(data))
            if not chunk:
                raise ParentGone
            data += chunk
        return bytes(data)

    def send(self, records: list[bytes]) -> None:
        try:
            self._connection.sendall(b"".join(records))
        except OSError as error:  # BrokenPipeError, ConnectionResetError: nobody is listening any more
            raise ParentGone from error

    def wait_for_stop(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a stop request; True once one came (or the parent is gone)."""
        if not self.stop_requested and select.select([self._connection], [], [], timeout)[0]:
            with contextlib.suppress(OSError):  # the parent is gone: stopping is all to do
                self._connection.recv(1)
            self.stop_requested = True
        return self.stop_requested


@contextlib.contextmanager
def discarding_waiting(url: str) -> Iterator[int]:
    """Around pyserial's ``open()``: drop, and count, the bytes the tty holds from before we listened.

    Why: ``open()`` flushes the input, so a sensor that starts sending before the daemon listens
    loses those bytes, and they used to vanish without a count. They are stale (we cannot tell
    when they were sent), so they are dropped rather than decoded, but counted: read until the tty
    has nothing more (a raw tty gives up everything it holds, a pty's second buffer included), plus
    what a canonical-mode tty holds back for want of a newline (``FIONREAD``), which the open then
    flushes. Our descriptor stays open across pyserial's open, so closing it cannot hang up the
    line or drop DTR; a port another process holds locked (pyserial's ``exclusive``) is not read.
    Bytes arriving between the count and the open are not in it. Pyserial URLs (socket://,
    loop://) have no such buffer: 0.
    """
    fd = None
    count = 0
    with contextlib.suppress(OSError):  # the open itself reports why a port cannot be used
        if "://" not in url and stat.S_ISCHR(os.stat(url).st_mode):
            fd = os.open(url, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: someone else's port
            fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(BlockingIOError):  # nothing (more) to read
                while chunk := os.read(fd, 1 << 16):
                    count += len(chunk)
            count += struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    try:
        yield count
    finally:
        if fd is not None:
            os.close(fd)


class Reader:
    """Opens ``url`` (reopening with backoff when it fails) and reports what it reads to ``parent``."""

    def __init__(
        self, parent: Parent, url: str, baudrate: int, read_timeout: float, backoff: Backoff, max_payload: int
    ) -> None:
        self._parent = parent
        self._url = url
        self._port = serial.serial_for_url(
            url, baudrate=baudrate, timeout=read_timeout, exclusive=True, do_not_open=True
        )
        self._backoff = backoff
        self._decoder = FrameDecoder(max_payload)

    def run(self) -> None:
        """Read until the parent asks to stop, then say "end"."""
        delays = self._backoff.delays()
        while not self._parent.stop_requested:
            if self._open():
                self._decoder.reset()
                try:
                    received = self._pump()
                finally:
                    self._port.close()
                if received:  # the link worked: the next failure starts the backoff afresh
                    delays = self._backoff.delays()
            if self._parent.wait_for_stop(next(delays)):
                break
        self._parent.send([wire.end()])

    def _open(self) -> bool:
        try:
            with discarding_waiting(self._url) as flushed:
                self._port.open()
        except (serial.SerialException, OSError) as error:
            self._parent.send([wire.up(False, f"cannot open sensor port {self._url}: {error}; retrying")])
            return False
        records = [wire.up(True, f"sensor port {self._url} open")]
        if flushed:
            records.append(wire.flushed(flushed))
        self._parent.send(records)
        return True

    def _pump(self) -> bool:
        """Read until the port fails or the parent asks to stop; return whether bytes came.

        Reads are sent in batches: whenever the port has nothing more waiting (so a frame is never
        held back while we wait for the next one) or :data:`MAX_BATCH_FRAMES` frames are pending.
        A sensor at a steady rate therefore gets one message per packet, a burst one per batch,
        and the daemon wakes up once per batch rather than once per read. A stop request is looked
        for at the same moments, so within a read timeout or a batch.
        """
        port, parent = self._port, self._parent
        received = False
        batch: list[bytes] = []
        pending = 0
        while True:
            try:
                waiting = port.in_waiting
                if not waiting or pending >= MAX_BATCH_FRAMES:
                    if batch:
                        parent.send(batch)
                        batch, pending = [], 0
                    if parent.wait_for_stop(0):
                        return received
                # What is there (4 KiB at most from a pty), or wait up to the timeout for 1 byte.
                chunk = port.read(waiting or 1)
            except (serial.SerialException, OSError) as error:
                batch.append(wire.up(False, f"lost sensor port {self._url}: {error}; reconnecting"))
                parent.send(batch)
                return received
            if chunk:
                received = True
                pending += add_records(batch, len(chunk), self._decoder.feed(chunk), time.monotonic())


def add_records(out: list[bytes], n_bytes: int, decoded: Sequence[DecodedFrame | BadPacket], now: float) -> int:
    """Append what one read brought: its byte count, then bad packets and runs of frames, in order.

    A run holds frames of one shape, so the daemon wraps all their pixels in one array. Returns the
    number of frames appended.
    """
    out.append(wire.received(n_bytes))
    pixels: list[Any] = []
    ids: list[tuple[int, int]] = []
    shape: tuple[int, ...] = ()
    count = 0
    for item in decoded:
        if ids and (isinstance(item, BadPacket) or item.image.shape != shape):
            out.append(wire.frames(now, shape, ids, pixels))
            count += len(ids)
            pixels, ids = [], []
        if isinstance(item, BadPacket):
            out.append(wire.bad(item.kind, item.detail))
        else:
            shape = item.image.shape
            pixels.append(item.image)  # a C-contiguous view of the decoded packet: joined without a copy of its own
            ids.append((item.seq, item.missing))
    if ids:
        out.append(wire.frames(now, shape, ids, pixels))
        count += len(ids)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the parent on the socket whose fd is the first argument; the exit status."""
    for signum in READER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, READER_IGNORES)  # SerialSource blocked them for the start
    args = sys.argv[1:] if argv is None else argv
    connection = socket.socket(fileno=int(args[0]))
    parent = Parent(connection)
    try:
        settings = parent.receive_settings()
        reader = Reader(
            parent,
            settings["url"],
            settings["baudrate"],
            settings["read_timeout"],
            Backoff(*settings["backoff"]),
            settings["max_payload"],
        )
        reader.run()
    except ParentGone:
        return 0
    except Exception:
        try:
            parent.send([wire.failed(traceback.format_exc())])
        except ParentGone:
            traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
