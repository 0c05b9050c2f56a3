"""Frames from a sensor on a serial port (or any pyserial URL), surviving unplug and replug.

pyserial does not reopen a port by itself, so this source does: when the port cannot be opened or
a read fails (USB unplug raises SerialException), it reports the sensor down and retries with
capped exponential backoff, for ever, until :meth:`SerialSource.close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass

import serial

from ..errors import ConfigError
from ..protocol import MAX_PAYLOAD_BYTES, BadPacket, DecodedFrame, FrameDecoder
from .base import Frame, NullEvents, SourceEvents
from .spec import DEFAULT_BAUD

log = logging.getLogger(__name__)


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

    ``read_timeout`` bounds how long :meth:`close` takes to be noticed; the port object is only
    ever touched by the thread iterating :meth:`frames`, so nothing else needs locking.
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
            # Building the port object validates URL and settings without touching the device.
            self._port = serial.serial_for_url(
                url, baudrate=baudrate, timeout=read_timeout, exclusive=True, do_not_open=True
            )
        except (ValueError, serial.SerialException) as error:
            raise ConfigError(f"bad serial port {url!r}: {error}") from None
        self._url = url
        self._events = events or NullEvents()
        self._backoff = backoff
        self._max_payload = max_payload
        self._closed = threading.Event()
        self._up: bool | None = None

    def frames(self) -> Iterator[Frame]:
        decoder = FrameDecoder(self._max_payload)
        delays = self._backoff.delays()
        while not self._closed.is_set():
            if self._open():
                decoder.reset()
                try:
                    received = yield from self._pump(decoder)
                finally:
                    self._port.close()
                if received:  # the link worked: the next failure starts the backoff afresh
                    delays = self._backoff.delays()
            self._closed.wait(next(delays))

    def close(self) -> None:
        self._closed.set()

    def _open(self) -> bool:
        try:
            self._port.open()
        except (serial.SerialException, OSError) as error:
            self._set_up(False, f"cannot open sensor port {self._url}: {error}; retrying")
            return False
        self._set_up(True, f"sensor port {self._url} open")
        return True

    def _pump(self, decoder: FrameDecoder) -> Generator[Frame, None, bool]:
        """Yield frames until the port fails or the source is closed; return whether bytes came."""
        received = False
        while not self._closed.is_set():
            try:
                chunk = self._port.read(self._port.in_waiting or 1)
            except (serial.SerialException, OSError) as error:
                self._set_up(False, f"lost sensor port {self._url}: {error}; reconnecting")
                return received
            if chunk:
                received = True
                self._events.bytes_received(len(chunk))
                yield from self._frames(decoder.feed(chunk))
        return received

    def _frames(self, decoded: list[DecodedFrame | BadPacket]) -> Iterator[Frame]:
        now = time.monotonic()
        for item in decoded:
            if isinstance(item, BadPacket):
                log.debug("dropped packet from %s: %s (%s)", self._url, item.kind, item.detail)
                self._events.dropped("corrupt")
                continue
            if item.missing:
                self._events.dropped("seq_gap", item.missing)
            yield Frame(item.seq, item.image, now)

    def _set_up(self, up: bool, message: str) -> None:
        """Report and log link changes only, so a sensor unplugged for hours is one log line."""
        if up == self._up:
            log.debug("%s", message)
            return
        self._up = up
        log.log(logging.INFO if up else logging.WARNING, "%s", message)
        self._events.sensor_up(up)
