"""The serial reader process: owns the sensor's port, decodes packets, sends frames to the daemon.

:class:`~.serial_source.SerialSource` runs :func:`main` in a child process (why a process is
explained there) and talks to it over a socket pair, with multiprocessing's
:class:`~multiprocessing.connection.Connection` framing (pickled messages). The first message from
the parent is the settings (a dict); after that, any message from the parent, or its end of the
socket closing (the daemon died), means "stop".

To the parent goes a list of records, in order, for one or more reads (see ``Reader._pump``):

* ``("up", bool, text)``: the port opened, could not be opened, or was lost (``text`` is for the log);
* ``("bytes", n)``: raw bytes read;
* ``("corrupt", kind, detail)``: a packet dropped (:class:`~edge_runtime.protocol.BadPacket`);
* ``("frames", received_at, shape, pixels, [(seq, missing), ...])``: frames of one shape decoded from
  one read, their pixels concatenated in one bytes object (one copy per read, not per frame);
  ``received_at`` is ``time.monotonic()``, which is one system-wide clock on Linux.

The last message is ``[("end",)]`` once the parent asked to stop, or ``[("error", traceback)]`` on a bug.
This process ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or ``systemctl stop`` reaches the whole
process group, and the daemon, not the signal, decides when reading stops (after it drained us).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import serial

from ..protocol import BadPacket, DecodedFrame, FrameDecoder
from .serial_source import READER_IGNORES, Backoff

Record = tuple[Any, ...]
# Frames decoded before they are sent even though more bytes are waiting (see Reader._pump).
MAX_BATCH_FRAMES = 64


class ParentGone(Exception):
    """The daemon closed its end of the socket (it exited or died): stop at once."""


class Parent:
    """The connection to the daemon: records out, a stop request in."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.stop_requested = False

    def send(self, records: list[Record]) -> None:
        try:
            self._connection.send(records)
        except OSError as error:  # BrokenPipeError, ConnectionResetError: nobody is listening any more
            raise ParentGone from error

    def wait_for_stop(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a stop request; True once one came (or the parent is gone)."""
        if not self.stop_requested and self._connection.poll(timeout):
            with contextlib.suppress(EOFError, OSError):  # the parent is gone: stopping is all to do
                self._connection.recv()
            self.stop_requested = True
        return self.stop_requested


class Reader:
    """Opens ``url`` (reopening with backoff when it fails) and reports what it reads to ``parent``."""

    def __init__(self, parent: Parent, url: str, baudrate: int, read_timeout: float, backoff: Backoff,
                 max_payload: int) -> None:
        self._parent = parent
        self._url = url
        self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=read_timeout, exclusive=True,
                                           do_not_open=True)
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
        self._parent.send([("end",)])

    def _open(self) -> bool:
        try:
            self._port.open()
        except (serial.SerialException, OSError) as error:
            self._parent.send([("up", False, f"cannot open sensor port {self._url}: {error}; retrying")])
            return False
        self._parent.send([("up", True, f"sensor port {self._url} open")])
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
        batch: list[Record] = []
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
                batch.append(("up", False, f"lost sensor port {self._url}: {error}; reconnecting"))
                parent.send(batch)
                return received
            if chunk:
                received = True
                pending += add_records(batch, len(chunk), self._decoder.feed(chunk), time.monotonic())


def add_records(out: list[Record], n_bytes: int, decoded: Sequence[DecodedFrame | BadPacket], now: float) -> int:
    """Append what one read brought: its byte count, then bad packets and runs of frames, in order.

    A run holds frames of one shape, so the daemon wraps all their pixels in one array. Returns the
    number of frames appended.
    """
    out.append(("bytes", n_bytes))
    pixels: list[Any] = []
    frames: list[tuple[int, int]] = []
    shape: tuple[int, ...] = ()
    count = 0
    for item in decoded:
        if frames and (isinstance(item, BadPacket) or item.image.shape != shape):
            out.append(("frames", now, shape, b"".join(pixels), frames))
            count += len(frames)
            pixels, frames = [], []
        if isinstance(item, BadPacket):
            out.append(("corrupt", item.kind, item.detail))
        else:
            shape = item.image.shape
            pixels.append(item.image)  # a C-contiguous view of the decoded packet: joined without a copy of its own
            frames.append((item.seq, item.missing))
    if frames:
        out.append(("frames", now, shape, b"".join(pixels), frames))
        count += len(frames)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the parent on the socket whose fd is the first argument; the exit status."""
    for signum in READER_IGNORES:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, READER_IGNORES)  # SerialSource blocked them for the start
    args = sys.argv[1:] if argv is None else argv
    connection = Connection(int(args[0]))
    parent = Parent(connection)
    try:
        settings = connection.recv()
        reader = Reader(parent, settings["url"], settings["baudrate"], settings["read_timeout"],
                        Backoff(*settings["backoff"]), settings["max_payload"])
        reader.run()
    except (ParentGone, EOFError):
        return 0
    except Exception:
        try:
            parent.send([("error", traceback.format_exc())])
        except ParentGone:
            traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
