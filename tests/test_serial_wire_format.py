"""The serial reader's messages to the daemon: a checked binary format, and no pickle (issue 15, item 6).

The reader process parses untrusted wire bytes, so it is the one an attacker on the sensor line
would take over. Before, the daemon unpickled whatever it sent. The first test plays that
compromised reader for real: a child process in the reader's place sends a pickle that, if
unpickled, creates a file; the daemon must refuse it as a malformed record and the file must not
exist.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import SourceError
from edge_runtime.protocol import BAD_PACKET_KINDS
from edge_runtime.sources import SerialSource, serial_source
from edge_runtime.sources import reader_wire as wire

# Runs in the reader's place: sends one multiprocessing-framed pickle that opens MARKER for writing.
EVIL_READER = """
import pickle, socket, struct, sys
marker = sys.argv[1] + "/../unpickled"
class Evil:
    def __reduce__(self):
        return (open, (marker, "w"))
s = socket.socket(fileno=int(sys.argv[2]))
data = pickle.dumps([Evil()])
s.sendall(struct.pack("!i", len(data)) + data)
s.recv(1)
"""


def test_a_compromised_reader_cannot_run_code_in_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setattr(serial_source, "READER_BOOT", EVIL_READER)
    monkeypatch.setattr(serial_source, "PACKAGE_ROOT", root)
    source = SerialSource("/dev/null")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in source.batches():
                pass
        except BaseException as error:  # whatever the daemon's side makes of it
            errors.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(60)
    source.close()
    assert not (tmp_path / "unpickled").exists(), "the daemon unpickled what the reader sent"
    assert len(errors) == 1 and isinstance(errors[0], SourceError) and "malformed record" in str(errors[0])


def sample_records() -> list[bytes]:
    pixels = [np.full((2, 3, 1), i, np.uint8) for i in range(3)]
    return [
        wire.up(True, "sensor port /dev/ttyUSB0 open"),
        wire.flushed(8081),
        wire.received(2431),
        wire.bad("crc", "CRC32 mismatch"),
        wire.frames(12.5, (2, 3, 1), [(7, 0), (9, 1), (10, 0)], pixels),
        wire.up(False, "lost sensor port: é"),
        wire.failed("Traceback ..."),
        wire.end(),
    ]


def test_records_survive_any_cut_of_the_stream() -> None:
    stream = b"".join(sample_records())
    expected = wire.RecordReader(1 << 16).feed(stream)
    assert expected == [
        wire.Up(True, "sensor port /dev/ttyUSB0 open"),
        wire.Flushed(8081),
        wire.Received(2431),
        wire.Bad("crc", "CRC32 mismatch"),
        wire.Frames(12.5, (2, 3, 1), [(7, 0), (9, 1), (10, 0)], bytes([0] * 6 + [1] * 6 + [2] * 6)),
        wire.Up(False, "lost sensor port: é"),
        wire.Failed("Traceback ..."),
        wire.End(),
    ]
    reader = wire.RecordReader(1 << 16)
    one_byte_at_a_time = [record for i in range(len(stream)) for record in reader.feed(stream[i : i + 1])]
    assert one_byte_at_a_time == expected


def cut_frames_record() -> bytes:
    """A frames record one pixel short, its length field saying so: complete, but wrong inside."""
    record = wire.frames(1.0, (2, 2, 1), [(1, 0)], [bytes(4)])[:-1]
    return record[:1] + struct.pack("<I", len(record) - wire.RECORD.size) + record[wire.RECORD.size :]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (struct.pack("<BI", 0, 0), "unknown record kind 0"),
        (struct.pack("<BI", wire.FRAMES, 0xFFFFFFFF), "exceeds"),  # a 4 GiB claim: refused before buffering
        (struct.pack("<BI", wire.BAD, 5) + b"evil\x00", "unknown bad-packet kind"),
        (struct.pack("<BI", wire.RECEIVED, 3) + b"abc", "count record"),
        (struct.pack("<BI", wire.UP, 1) + b"\x07", "malformed link record"),
        (struct.pack("<BI", wire.END, 1) + b"x", "end record with a body"),
        (cut_frames_record(), "does not hold"),
    ],
)
def test_malformed_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(wire.WireError, match=why):
        wire.RecordReader(1 << 16).feed(data)


def test_frame_records_with_an_impossible_shape_or_time_are_refused() -> None:
    for head in (
        wire.FRAMES_HEAD.pack(1.0, 0, 2, 1, 1),
        wire.FRAMES_HEAD.pack(float("nan"), 2, 2, 1, 1),
        wire.FRAMES_HEAD.pack(1.0, 2, 2, 1, 0),
    ):
        body = head + wire.FRAME_ID.pack(1, 0) + bytes(4)
        with pytest.raises(wire.WireError, match="frames record"):
            wire.RecordReader(1 << 16).feed(struct.pack("<BI", wire.FRAMES, len(body)) + body)


def test_every_bad_packet_kind_of_the_protocol_crosses() -> None:
    stream = b"".join(wire.bad(kind, "x") for kind in BAD_PACKET_KINDS)
    assert [r.kind for r in wire.RecordReader(1 << 16).feed(stream)] == list(BAD_PACKET_KINDS)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=97))
def test_random_bytes_give_records_or_a_wire_error_and_nothing_else(data: bytes, chunk: int) -> None:
    reader = wire.RecordReader(1 << 12)
    try:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
    except wire.WireError:
        pass


def test_settings_round_trip_and_reject_non_objects() -> None:
    encoded = wire.settings({"url": "/dev/ttyUSB0", "baudrate": 921600, "backoff": [0.1, 5.0, 2.0]})
    (length,) = wire.SETTINGS_LENGTH.unpack_from(encoded)
    assert wire.parse_settings(encoded[wire.SETTINGS_LENGTH.size :][:length])["baudrate"] == 921600
    with pytest.raises(wire.WireError):
        wire.parse_settings(b"[1, 2]")
