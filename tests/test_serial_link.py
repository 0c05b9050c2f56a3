"""The serial reader's link handling on real ptys: the reconnect backoff and the exclusive port lock.

* Backoff: the delays between attempts grow while the port cannot be opened, or opens but brings
  nothing; once a link has carried bytes, the next failure starts again at the initial delay (a
  sensor that worked for hours and is replugged comes back at once, not after the 5 s cap).
  :class:`~edge_runtime.sources.serial_reader.Reader` is driven by a scripted parent that records
  each delay it is asked to wait and plugs, talks on or unplugs the pty at each step, so the
  sequence of delays is exact and nothing is timed.
* Lock: the reader opens the port with an exclusive lock (flock, as pyserial does it), so a second
  reader (a stray ``screen``, another daemon) cannot steal bytes from it, nor it from them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import serial

from edge_runtime.emulator import PtyPort
from edge_runtime.protocol import DELIMITER, MAX_PAYLOAD_BYTES, encode_frame
from edge_runtime.sources import reader_wire as wire
from edge_runtime.sources.serial_reader import Reader
from edge_runtime.sources.serial_source import Backoff, SerialSource

BACKOFF = Backoff(initial=0.1, maximum=5.0, factor=2.0)


class ScriptedParent:
    """The reader's parent: records what it is sent; each backoff wait runs the next step of a script.

    A step returns what the port does once it is open: a function called at each of the reader's
    polls (``wait_for_stop(0)``, when nothing is waiting), or None to ask the reader to stop.
    """

    def __init__(self, steps: list[Callable[[], Callable[[], None] | None]]) -> None:
        self.records: list[wire.Record] = []
        self._wire = wire.RecordReader(MAX_PAYLOAD_BYTES)
        self.delays: list[float] = []
        self.stop_requested = False
        self._steps = steps
        self._on_poll: Callable[[], None] = lambda: None

    def send(self, records: list[bytes]) -> None:
        """The reader's records as the daemon would read them off the socket (the binary wire format)."""
        for record in records:
            self.records.extend(self._wire.feed(record))

    def wait_for_stop(self, timeout: float) -> bool:
        if timeout == 0:  # a poll while the port is open
            self._on_poll()
            return self.stop_requested
        self.delays.append(timeout)
        on_poll = self._steps.pop(0)() if self._steps else None
        if on_poll is None:
            self.stop_requested = True
        else:
            self._on_poll = on_poll
        return self.stop_requested

    def bytes_seen(self) -> int:
        return sum(r.n for r in self.records if isinstance(r, wire.Received))


def test_the_backoff_grows_until_a_link_carries_bytes_then_starts_again(tmp_path: Path) -> None:
    link = tmp_path / "sensor"
    ports: list[PtyPort] = []
    parent: ScriptedParent

    def unplugged() -> Callable[[], None]:
        return lambda: None  # the link does not exist: the open fails, no poll happens

    def silent() -> Callable[[], None]:
        ports.append(PtyPort(link))
        return ports[-1].close  # opens, then hangs up before sending anything

    def talking() -> Callable[[], None]:
        port = PtyPort(link)
        ports.append(port)
        sent = [False]

        def poll() -> None:
            if not sent[0]:
                port.write(encode_frame(0, np.ones((4, 4, 1), np.uint8)) + DELIMITER)
                sent[0] = True
            elif parent.bytes_seen():
                port.close()  # unplugged after the frame arrived

        return poll

    parent = ScriptedParent([unplugged, silent, talking, lambda: None])
    Reader(parent, str(link), 115200, 0.05, BACKOFF, MAX_PAYLOAD_BYTES).run()
    # failed open, failed open, opened but silent (no reset), carried bytes (reset), then stop
    assert parent.delays == [0.1, 0.2, 0.4, 0.1]
    assert parent.bytes_seen() > 0 and isinstance(parent.records[-1], wire.End)
    ups = [r.up for r in parent.records if isinstance(r, wire.Up)]
    assert ups == [False, False, True, False, True, False]


class UpEvents:
    """SourceEvents that record link changes and let a test wait for the next one."""

    def __init__(self) -> None:
        self.ups: list[bool] = []
        self._changed = threading.Condition()

    def sensor_up(self, up: bool) -> None:
        with self._changed:
            self.ups.append(up)
            self._changed.notify_all()

    def dropped(self, reason: str, n: int = 1) -> None:
        pass

    def bytes_received(self, n: int) -> None:
        pass

    def wait(self, count: int, timeout: float = 30) -> list[bool]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.ups) >= count, timeout):
                raise AssertionError(f"only {self.ups} link changes after {timeout:.0f} s, expected {count}")
            return list(self.ups)


def reading(source: SerialSource) -> threading.Thread:
    thread = threading.Thread(target=lambda: [None for _ in source.batches()], daemon=True)
    thread.start()
    return thread


def test_a_port_locked_by_another_reader_is_not_opened_until_it_is_free() -> None:
    with PtyPort() as port:
        holder = serial.Serial(port.path, exclusive=True)
        events = UpEvents()
        source = SerialSource(port.path, events=events, backoff=Backoff(0.05, 0.2), read_timeout=0.05)
        thread = reading(source)
        try:
            assert events.wait(1) == [False]  # the first attempt found the lock taken
            holder.close()
            assert events.wait(2) == [False, True]
        finally:
            holder.close()
            source.close()
            thread.join(30)
        assert not thread.is_alive()


def test_a_port_the_daemon_reads_cannot_be_opened_exclusively_by_another() -> None:
    with PtyPort() as port:
        events = UpEvents()
        source = SerialSource(port.path, events=events, backoff=Backoff(0.05, 0.2), read_timeout=0.05)
        thread = reading(source)
        try:
            assert events.wait(1) == [True]
            with pytest.raises(serial.SerialException, match="Could not exclusively lock port"):
                serial.Serial(port.path, exclusive=True)
        finally:
            source.close()
            thread.join(30)
        assert not thread.is_alive()
