"""What the serial reader process sends the daemon: a fixed binary format, never pickle.

Why not pickle (multiprocessing's Connection did that): the reader parses untrusted wire bytes, so
it is the process an attacker on the sensor line would compromise first, and unpickling its
messages would hand them the daemon too. Here every message is a record of known kind and layout,
checked field by field; a malformed one is a :class:`WireError`, never code run or memory
claimed beyond a fixed limit.

A record is ``kind (uint8) | body length (uint32) | body``, little-endian:

========  ===========================================================================
kind      body
========  ===========================================================================
UP        ``up (uint8 0/1) | text (UTF-8, for the log)``: the port opened, failed or was lost
RECEIVED  ``n (uint64)``: raw bytes read
FLUSHED   ``n (uint64)``: bytes waiting in the port when it opened, discarded by the open
BAD       ``kind (ASCII, one of protocol.BAD_PACKET_KINDS) | 0x00 | detail (UTF-8)``: a dropped packet
FRAMES    ``received_at (float64) | H, W, C (uint16 each) | count (uint32)`` then ``count`` pairs of
          ``seq, missing (uint32 each)`` then the ``count`` frames' pixels, H*W*C bytes each
END       empty: the reader stopped as asked
FAILED    ``traceback (UTF-8)``: the reader hit a bug
========  ===========================================================================

The daemon's settings go the other way once, as a length-prefixed JSON object; after that any
byte from the daemon, or its end of the socket closing, means "stop".
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..protocol import BAD_PACKET_KINDS

RECORD = struct.Struct("<BI")
FRAMES_HEAD = struct.Struct("<dHHHI")
FRAME_ID = struct.Struct("<II")
COUNT = struct.Struct("<Q")
SETTINGS_LENGTH = struct.Struct("<I")
MAX_SETTINGS_BYTES = 1 << 16
# Longest text record (a traceback, a log line) the daemon accepts.
MAX_TEXT_BYTES = 1 << 16
UP, RECEIVED, FLUSHED, BAD, FRAMES, END, FAILED = range(1, 8)
_BAD_KINDS = frozenset(BAD_PACKET_KINDS)


class WireError(Exception):
    """A record no honest reader would send: the reader is broken or compromised."""


class Up(NamedTuple):
    up: bool
    text: str


class Received(NamedTuple):
    n: int


class Flushed(NamedTuple):
    n: int


class Bad(NamedTuple):
    kind: str
    detail: str


class Frames(NamedTuple):
    """``pixels`` holds the ``len(ids)`` frames of ``shape`` back to back; ``ids`` are (seq, missing)."""

    received_at: float
    shape: tuple[int, int, int]
    ids: list[tuple[int, int]]
    pixels: bytes


class End(NamedTuple):
    pass


class Failed(NamedTuple):
    text: str


Record = Up | Received | Flushed | Bad | Frames | End | Failed


# --- the reader's side: records to bytes --------------------------------------------------------


def _record(kind: int, body: bytes) -> bytes:
    return RECORD.pack(kind, len(body)) + body


def up(is_up: bool, text: str) -> bytes:
    return _record(UP, bytes([is_up]) + text.encode()[: MAX_TEXT_BYTES - 1])


def received(n: int) -> bytes:
    return _record(RECEIVED, COUNT.pack(n))


def flushed(n: int) -> bytes:
    return _record(FLUSHED, COUNT.pack(n))


def bad(kind: str, detail: str) -> bytes:
    return _record(BAD, kind.encode("ascii") + b"\x00" + detail.encode()[: MAX_TEXT_BYTES // 2])


def frames(received_at: float, shape: tuple[int, ...], ids: Sequence[tuple[int, int]], pixels: Sequence[Any]) -> bytes:
    """One record for frames of one ``shape``; ``pixels`` are buffers (one per frame), joined in one copy."""
    height, width, channels = shape
    head = FRAMES_HEAD.pack(received_at, height, width, channels, len(ids))
    body = b"".join([head, *(FRAME_ID.pack(seq, missing) for seq, missing in ids), *pixels])
    return RECORD.pack(FRAMES, len(body)) + body


def end() -> bytes:
    return _record(END, b"")


def failed(text: str) -> bytes:
    return _record(FAILED, text.encode()[-MAX_TEXT_BYTES:])


def settings(values: dict[str, Any]) -> bytes:
    data = json.dumps(values).encode()
    return SETTINGS_LENGTH.pack(len(data)) + data


def parse_settings(data: bytes) -> dict[str, Any]:
    """The settings sent by :func:`settings` (``data`` without its length prefix)."""
    values = json.loads(data)
    if not isinstance(values, dict):
        raise WireError("settings are not a JSON object")
    return values


# --- the daemon's side: bytes to records --------------------------------------------------------


class RecordReader:
    """Splits the reader's byte stream, cut anywhere, into checked records.

    ``max_frames_bytes`` bounds a FRAMES record (the reader's batch limit times the largest frame),
    so a hostile length field cannot make the daemon buffer more than that.
    """

    def __init__(self, max_frames_bytes: int) -> None:
        self._limit = max(max_frames_bytes, MAX_TEXT_BYTES) + FRAMES_HEAD.size
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[Record]:
        self._buffer += data
        records: list[Record] = []
        start, end = 0, len(self._buffer)
        view = memoryview(self._buffer)
        try:
            while end - start >= RECORD.size:
                kind, length = RECORD.unpack_from(view, start)
                if length > self._limit:
                    raise WireError(f"record of {length} bytes exceeds the {self._limit}-byte limit")
                if end - start - RECORD.size < length:
                    break
                body = bytes(view[start + RECORD.size : start + RECORD.size + length])
                records.append(_parse(kind, body))
                start += RECORD.size + length
        finally:
            view.release()
        del self._buffer[:start]
        return records


def _parse(kind: int, body: bytes) -> Record:
    if kind == FRAMES:
        return _parse_frames(body)
    if kind in (RECEIVED, FLUSHED):
        if len(body) != COUNT.size:
            raise WireError(f"count record of {len(body)} bytes")
        (n,) = COUNT.unpack(body)
        return Received(n) if kind == RECEIVED else Flushed(n)
    if kind == UP:
        if not body or body[0] > 1:
            raise WireError("malformed link record")
        return Up(bool(body[0]), body[1:].decode(errors="replace"))
    if kind == BAD:
        name, sep, detail = body.partition(b"\x00")
        bad_kind = name.decode("ascii", errors="replace")
        if not sep or bad_kind not in _BAD_KINDS:
            raise WireError(f"unknown bad-packet kind {name[:32]!r}")
        return Bad(bad_kind, detail.decode(errors="replace"))
    if kind == END:
        if body:
            raise WireError("end record with a body")
        return End()
    if kind == FAILED:
        return Failed(body.decode(errors="replace"))
    raise WireError(f"unknown record kind {kind}")


def _parse_frames(body: bytes) -> Frames:
    if len(body) < FRAMES_HEAD.size:
        raise WireError("frames record shorter than its header")
    received_at, height, width, channels, count = FRAMES_HEAD.unpack_from(body)
    if not math.isfinite(received_at) or 0 in (height, width, channels, count):
        raise WireError(f"frames record with time {received_at}, shape {height}x{width}x{channels}, count {count}")
    ids_end = FRAMES_HEAD.size + count * FRAME_ID.size
    if len(body) != ids_end + count * height * width * channels:
        raise WireError(
            f"frames record of {len(body)} bytes does not hold {count} frames of {height}x{width}x{channels}"
        )
    ids = list(FRAME_ID.iter_unpack(body[FRAMES_HEAD.size : ids_end]))
    return Frames(received_at, (height, width, channels), ids, body[ids_end:])
