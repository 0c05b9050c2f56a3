"""The wire protocol: COBS, packets, the incremental decoder and the sequence rules."""

from __future__ import annotations

import re
import zlib
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.protocol import (
    CRC,
    DELIMITER,
    HEADER,
    MAGIC,
    MAX_PAYLOAD_BYTES,
    MAX_SEQ_GAP,
    SEQ_MODULUS,
    VERSION,
    BadPacket,
    DecodedFrame,
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    encode_frame,
    max_packet_len,
    missing_between,
    parse_packet,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def frame_image(seq: int, shape: tuple[int, int, int] = (3, 4, 2)) -> np.ndarray:
    """A frame whose pixels depend on ``seq`` and include zeros, so COBS has work to do."""
    return ((np.arange(np.prod(shape)) * 7 + seq) % 5 * 60).astype(np.uint8).reshape(shape)


def raw_packet(fields: dict[str, object], payload: bytes) -> bytes:
    """A packet with any header values but a correct CRC, to reach the header checks."""
    header = {"magic": MAGIC, "version": VERSION, "dtype": 1, "seq": 0, "h": 1, "w": 1, "c": 1}
    header["length"] = len(payload)
    header.update(fields)
    body = HEADER.pack(*header.values()) + payload
    return cobs_encode(body + CRC.pack(zlib.crc32(body))) + DELIMITER


def frames_of(results: list[DecodedFrame | BadPacket]) -> list[DecodedFrame]:
    return [item for item in results if isinstance(item, DecodedFrame)]


def bad_of(results: list[DecodedFrame | BadPacket]) -> list[BadPacket]:
    return [item for item in results if isinstance(item, BadPacket)]


# --- COBS ------------------------------------------------------------------------------------

# Vectors from the COBS literature (Cheshire & Baker; the Wikipedia table).
COBS_VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)) + b"\x00", b"\xff" + bytes(range(1, 255)) + b"\x01\x01"),
    (b"\x00" + bytes(range(1, 255)), b"\x01\xff" + bytes(range(1, 255)) + b"\x01"),
]


@pytest.mark.parametrize(("data", "encoded"), COBS_VECTORS)
def test_cobs_known_vectors(data: bytes, encoded: bytes) -> None:
    assert cobs_encode(data) == encoded
    assert cobs_decode(encoded) == data


def test_cobs_decode_accepts_the_canonical_form_without_trailing_block() -> None:
    data = bytes(range(1, 255))
    assert cobs_decode(b"\xff" + data) == data == cobs_decode(b"\xff" + data + b"\x01")


@pytest.mark.parametrize("encoded", [b"\x05\x11\x22", b"\x02\x00", b"\x03\x11\x22\x02"])
def test_cobs_decode_refuses_impossible_input(encoded: bytes) -> None:
    with pytest.raises(ValueError):
        cobs_decode(encoded)


@given(st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


# --- packets ---------------------------------------------------------------------------------


def test_documented_example_matches_the_encoder() -> None:
    """docs/protocol.md holds two ```hex blocks: the packet before COBS, then the wire bytes."""
    blocks = re.findall(r"```hex\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    raw, wire = (bytes.fromhex(block) for block in blocks)
    packet = encode_frame(7, np.array([[0, 1], [2, 255]], np.uint8).reshape(2, 2, 1))
    assert packet == wire
    assert cobs_decode(packet[:-1]) == raw


@pytest.mark.parametrize("shape", [(1, 1, 1), (28, 28, 1), (5, 7, 3), (300, 2, 1)])
def test_encode_then_parse_round_trip(shape: tuple[int, int, int]) -> None:
    image = frame_image(3, shape)
    packet = encode_frame(3, image)
    assert packet.endswith(DELIMITER) and DELIMITER not in packet[:-1]
    item = parse_packet(packet[:-1])
    assert isinstance(item, DecodedFrame)
    assert item.seq == 3 and item.image.shape == shape and np.array_equal(item.image, image)


def test_encode_wraps_sequence_numbers() -> None:
    item = parse_packet(encode_frame(SEQ_MODULUS + 5, frame_image(0))[:-1])
    assert isinstance(item, DecodedFrame) and item.seq == 5


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((2, 2, 1), np.float32),  # dtype other than uint8
        np.zeros((2, 2), np.uint8),  # not (H, W, C)
        np.zeros((0, 2, 1), np.uint8),  # empty axis
        np.zeros((70000, 1, 1), np.uint8),  # height beyond uint16
    ],
)
def test_encode_refuses_frames_the_protocol_cannot_carry(image: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_frame(0, image)


def test_encode_refuses_frames_above_the_size_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        encode_frame(0, np.zeros((10, 10, 1), np.uint8), max_payload=99)


@pytest.mark.parametrize(
    ("fields", "payload", "kind"),
    [
        ({"magic": b"XY"}, b"\x01", "magic"),
        ({"version": 2}, b"\x01", "version"),
        ({"dtype": 2}, b"\x01", "dtype"),
        ({"length": 5}, b"\x01", "length"),
        ({"h": 2}, b"\x01", "shape"),
        ({"h": 0, "length": 0}, b"", "shape"),
        # Absurd dimensions are refused from the header alone: nothing of that size is allocated.
        ({"h": 65535, "w": 65535, "c": 65535}, b"\x01", "shape"),
    ],
)
def test_parse_refuses_bad_headers_even_with_a_good_crc(fields: dict, payload: bytes, kind: str) -> None:
    item = parse_packet(raw_packet(fields, payload)[:-1])
    assert isinstance(item, BadPacket) and item.kind == kind


def test_parse_refuses_payload_over_the_receivers_limit() -> None:
    packet = encode_frame(0, np.ones((10, 10, 1), np.uint8))
    item = parse_packet(packet[:-1], max_payload=50)
    assert isinstance(item, BadPacket) and item.kind == "oversize"


def test_parse_reports_crc_damage_and_short_packets() -> None:
    body = bytearray(cobs_decode(encode_frame(1, frame_image(1))[:-1]))
    body[20] ^= 0x40
    crc_item = parse_packet(cobs_encode(bytes(body)))
    short_item = parse_packet(cobs_encode(b"AK\x01"))
    assert isinstance(crc_item, BadPacket) and crc_item.kind == "crc"
    assert isinstance(short_item, BadPacket) and short_item.kind == "short"


@pytest.mark.parametrize("length", [0, 1, HEADER.size, HEADER.size + CRC.size - 1])
def test_anything_shorter_than_header_and_crc_is_short(length: int) -> None:
    """Up to one byte short of 18 + 4 bytes: 'short', never read as a CRC or a header."""
    item = parse_packet(cobs_encode(bytes(range(1, length + 1))))
    assert isinstance(item, BadPacket) and item.kind == "short"


def test_the_largest_dimension_the_header_holds_is_carried() -> None:
    """65535 is the last value a uint16 field takes: a frame that wide is legal, one wider is not."""
    image = frame_image(4, (1, 65535, 1))
    item = parse_packet(encode_frame(4, image)[:-1])
    assert isinstance(item, DecodedFrame) and np.array_equal(item.image, image)
    with pytest.raises(ValueError):
        encode_frame(4, frame_image(4, (1, 65536, 1)))


@pytest.mark.parametrize("fill", [0x00, 0xFF])  # all zeros (1-byte COBS blocks), none (the most COBS overhead)
def test_a_packet_at_the_receivers_limit_passes_the_decoder(fill: int) -> None:
    """max_packet_len bounds the decoder's buffer; a frame of exactly max_payload bytes must still fit under it."""
    image = np.full((8, 127, 1), fill, np.uint8)  # 1016 bytes: header + payload + CRC spans several full blocks
    packet = encode_frame(9, image, max_payload=image.size)
    assert len(packet) - 1 <= max_packet_len(image.size)
    for step in (len(packet), 7):  # parsed whole from one chunk, and collected in the buffer from pieces
        decoder = FrameDecoder(max_payload=image.size)
        decoder.feed(DELIMITER)
        results = [r for i in range(0, len(packet), step) for r in decoder.feed(packet[i : i + step])]
        assert [f.seq for f in frames_of(results)] == [9] and not bad_of(results)


# --- the incremental decoder -----------------------------------------------------------------


def stream(seqs: list[int]) -> bytes:
    return DELIMITER + b"".join(encode_frame(seq, frame_image(seq)) for seq in seqs)


def test_decoder_handles_merged_and_byte_by_byte_chunks() -> None:
    data = stream(list(range(5)))
    merged = FrameDecoder().feed(data)
    decoder = FrameDecoder()
    one_by_one = [item for i in range(len(data)) for item in decoder.feed(data[i : i + 1])]
    for results in (merged, one_by_one):
        assert [f.seq for f in frames_of(results)] == [0, 1, 2, 3, 4]
        assert all(np.array_equal(f.image, frame_image(f.seq)) for f in frames_of(results))
        assert not bad_of(results)


@given(st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_decoder_result_does_not_depend_on_chunking(cuts: list[int]) -> None:
    data = stream(list(range(4)))
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    decoder = FrameDecoder()
    results = [item for a, b in pairwise(bounds) for item in decoder.feed(data[a:b])]
    assert [f.seq for f in frames_of(results)] == [0, 1, 2, 3]
    assert not bad_of(results)


def test_damage_mid_stream_loses_only_the_damaged_frame() -> None:
    packets = [bytearray(encode_frame(seq, frame_image(seq))) for seq in range(5)]
    packets[2][10] = packets[2][10] ^ 0x10 or 0x01
    results = FrameDecoder().feed(DELIMITER + b"".join(packets))
    assert [f.seq for f in frames_of(results)] == [0, 1, 3, 4]
    assert len(bad_of(results)) == 1
    # Frames lost are the sequence gap; the damaged packet is reported apart, as a packet (issue 15).
    assert [f.missing for f in frames_of(results)] == [0, 0, 1, 0]


def test_decoder_resyncs_after_garbage_and_ignores_empty_packets() -> None:
    decoder = FrameDecoder()
    results = decoder.feed(DELIMITER + b"\x07garbage\x13" + DELIMITER * 3 + encode_frame(9, frame_image(9)))
    assert [f.seq for f in frames_of(results)] == [9]
    assert [b.kind for b in bad_of(results)] == ["cobs"]


def test_decoder_drops_a_bad_first_packet_silently_but_keeps_a_good_one() -> None:
    """Before the first 0x00 the receiver may have joined mid-packet: that is not corruption."""
    tail = encode_frame(1, frame_image(1))[7:]
    results = FrameDecoder().feed(tail + encode_frame(2, frame_image(2)))
    assert [f.seq for f in frames_of(results)] == [2] and not bad_of(results)
    assert [f.seq for f in frames_of(FrameDecoder().feed(encode_frame(5, frame_image(5))))] == [5]


def test_decoder_reset_forgets_the_partial_packet_but_not_the_sequence() -> None:
    decoder = FrameDecoder()
    decoder.feed(stream([0, 1]))
    decoder.feed(encode_frame(2, frame_image(2))[:15])  # the port vanished mid-packet
    decoder.reset()
    results = decoder.feed(encode_frame(4, frame_image(4)))
    assert not bad_of(results)
    assert [(f.seq, f.missing) for f in frames_of(results)] == [(4, 2)]


def test_decoder_bounds_its_buffer_without_a_delimiter() -> None:
    decoder = FrameDecoder(max_payload=100)
    limit = max_packet_len(100)
    results = decoder.feed(DELIMITER + b"\x01" * limit)
    assert not results  # a packet of exactly the limit may still be legal
    results = decoder.feed(b"\x01" * (3 * limit))
    assert [b.kind for b in bad_of(results)] == ["oversize"]
    results = decoder.feed(b"\x01" + DELIMITER + encode_frame(3, frame_image(3)))
    assert [f.seq for f in frames_of(results)] == [3] and not bad_of(results)


# --- sequence numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "seq", "missing"),
    [
        (None, 123, 0),  # first frame
        (5, 6, 0),
        (5, 9, 3),
        (SEQ_MODULUS - 1, 0, 0),  # wraparound in order
        (SEQ_MODULUS - 2, 1, 2),  # gap across the wrap: 2**32-1 and 0 missing
        (5, 5, 0),  # repeat: sender restarted
        (1000, 0, 0),  # step back: sender restarted
        (5, 5 + MAX_SEQ_GAP + 1, MAX_SEQ_GAP),
        (5, 5 + MAX_SEQ_GAP + 2, 0),  # too far ahead: a restart, not billions lost
    ],
)
def test_missing_between(last: int | None, seq: int, missing: int) -> None:
    assert missing_between(last, seq) == missing


def test_decoder_counts_gaps_across_wraparound_and_restarts() -> None:
    top = SEQ_MODULUS - 1
    results = FrameDecoder().feed(stream([top - 3, top - 1, top, 2, 3, 0, 1]))
    assert [(f.seq, f.missing) for f in frames_of(results)] == [
        (top - 3, 0),
        (top - 1, 1),
        (top, 0),
        (2, 2),
        (3, 0),
        (0, 0),  # sender restarted
        (1, 0),
    ]


def test_bad_packets_do_not_change_the_following_gap() -> None:
    """Noise between frames is a bad packet, not a lost frame: the gap alone counts frames (issue 15)."""
    good = [encode_frame(seq, frame_image(seq)) for seq in (0, 4)]
    results = FrameDecoder().feed(DELIMITER + good[0] + b"\x05junk" + DELIMITER + good[1])
    assert len(bad_of(results)) == 1
    assert [(f.seq, f.missing) for f in frames_of(results)] == [(0, 0), (4, 3)]  # 1, 2 and 3 lost


# --- fuzzing ---------------------------------------------------------------------------------

VALID = encode_frame(77, frame_image(77))


def reference_cobs_decode(encoded: bytes) -> bytes | None:
    """COBS decoding as the original paper states it, one block at a time: None where no encoder could
    have produced ``encoded``. An independent reference for the protocol module's faster decoder."""
    out, i = bytearray(), 0
    while i < len(encoded):
        code = encoded[i]
        block = encoded[i + 1 : i + code]
        if code == 0 or len(block) != code - 1 or 0 in block:
            return None
        out += block
        i += code
        if code != 0xFF and i < len(encoded):
            out.append(0)
    return bytes(out)


def reference_frames(stream: bytes, max_payload: int) -> list[tuple[int, tuple[int, ...], bytes]]:
    """(seq, shape, pixels) of every packet in ``stream`` that passes every check, written from
    docs/protocol.md with the header layout spelled out here rather than taken from the module.

    ``stream`` starts with a delimiter, so every 0x00-terminated segment is a whole packet; the bytes
    after the last 0x00 are an unfinished packet and yield nothing.
    """
    frames = []
    for segment in stream.split(b"\x00")[:-1]:
        body = reference_cobs_decode(segment)
        if body is None or len(body) < 18 + 4:
            continue
        if zlib.crc32(body[:-4]) != int.from_bytes(body[-4:], "little"):
            continue
        magic, version, dtype = body[0:2], body[2], body[3]
        seq = int.from_bytes(body[4:8], "little")
        height, width, channels = (int.from_bytes(body[k : k + 2], "little") for k in (8, 10, 12))
        length = int.from_bytes(body[14:18], "little")
        payload = body[18:-4]
        if (magic, version, dtype) != (b"AK", 1, 1) or length != len(payload) or length > max_payload:
            continue
        if 0 in (height, width, channels) or height * width * channels != length:
            continue
        frames.append((seq, (height, width, channels), payload))
    return frames


def decoded(results: list[DecodedFrame | BadPacket]) -> list[tuple[int, tuple[int, ...], bytes]]:
    assert all(isinstance(item, DecodedFrame | BadPacket) for item in results)
    return [(f.seq, f.image.shape, f.image.tobytes()) for f in frames_of(results)]


def test_the_reference_decoder_reads_what_the_encoder_writes() -> None:
    """The reference is only worth something if it accepts good packets and refuses damaged ones."""
    packets = [encode_frame(seq, frame_image(seq, (seq + 1, 300, 1))) for seq in range(3)]
    damaged = bytearray(packets[1])
    damaged[40] ^= 0x10
    stream = DELIMITER + packets[0] + bytes(damaged) + packets[2]
    assert [seq for seq, _, _ in reference_frames(stream, 1 << 20)] == [0, 2]
    assert reference_frames(stream, 299) == []  # every payload is over that limit


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_random_bytes_never_raise_and_the_next_packet_gets_through(garbage: bytes, step: int) -> None:
    decoder = FrameDecoder(max_payload=1000)
    results = [item for i in range(0, len(garbage), step) for item in decoder.feed(garbage[i : i + step])]
    after = decoder.feed(DELIMITER + VALID)
    stream = DELIMITER + garbage + DELIMITER + VALID
    assert decoded(results + after) == reference_frames(stream, 1000)
    assert [f.seq for f in frames_of(after)] == [77]


def damaged_packet(seq: int, index: int, flip: int) -> bytes:
    """A good packet for ``seq`` with the bits ``flip`` of one byte flipped (its delimiter included)."""
    data = bytearray(encode_frame(seq, frame_image(seq)))
    data[index % len(data)] ^= flip
    return bytes(data)


piece = st.one_of(
    st.binary(max_size=200),  # line noise
    st.integers(0, 2**32 - 1).map(lambda seq: encode_frame(seq, frame_image(seq))),  # a good packet
    st.builds(damaged_packet, st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.integers(1, 255)),
)


@settings(max_examples=300)
@given(st.lists(piece, max_size=12), st.integers(min_value=1, max_value=97))
def test_a_stream_of_noise_good_and_damaged_packets_decodes_as_the_reference_says(
    pieces: list[bytes], step: int
) -> None:
    """Only the packets an independent decoder accepts come out, in order, whatever the read sizes."""
    stream = DELIMITER + b"".join(pieces) + DELIMITER
    decoder = FrameDecoder(max_payload=1000)
    results = [item for i in range(0, len(stream), step) for item in decoder.feed(stream[i : i + step])]
    assert decoded(results) == reference_frames(stream, 1000)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID) - 1), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.just(0)),
)


def mutate(packet: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(packet)
    for op, index, value in edits:
        index %= len(data) or 1
        if op == "flip" and data:
            data[index] ^= value
        elif op == "insert":
            data.insert(index, value)
        elif data:
            del data[index]
    return bytes(data)


@settings(max_examples=300)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_packets_yield_only_the_original_or_nothing(edits: list[tuple[str, int, int]]) -> None:
    decoder = FrameDecoder()
    decoder.feed(DELIMITER)
    results = decoder.feed(mutate(VALID, edits))
    after = decoder.feed(DELIMITER + VALID)  # the first 0x00 ends the mutant if its own was lost
    assert decoded(results + after) == reference_frames(
        DELIMITER + mutate(VALID, edits) + DELIMITER + VALID, MAX_PAYLOAD_BYTES
    )
    for frame in frames_of(results + after):
        assert frame.seq == 77 and np.array_equal(frame.image, frame_image(77))
    assert isinstance(after[-1], DecodedFrame)  # the packet after the damage gets through
