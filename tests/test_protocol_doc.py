"""docs/protocol.md states the numbers and rules the code implements (issue 15, item 11).

A sender is written from that page alone, so its figures are checked against the reference
implementation here: packet overhead, an MNIST frame's size before and on the wire, the buffer
limit formula, the zero-dimension rule and which bytes flush the line.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from edge_runtime.protocol import (
    CRC,
    HEADER,
    MAGIC,
    VERSION,
    BadPacket,
    FrameDecoder,
    cobs_encode,
    encode_frame,
    max_packet_len,
    parse_packet,
)

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_the_overhead_and_an_mnist_frames_size_are_the_codes(mnist_data) -> None:
    overhead = HEADER.size + CRC.size
    sizes = {len(encode_frame(i, image[:, :, None])) for i, image in enumerate(mnist_data.test_images)}
    match = re.search(
        r"a packet carries (\d+) bytes besides the pixels .*?28×28×1 frame is (\d+) \+ 784 = (\d+) "
        r"bytes before COBS and (\d+) on the wire",
        DOC,
        re.DOTALL,
    )
    assert match, "the throughput guide's sentence changed"
    carried, again, before, wire = map(int, match.groups())
    assert carried == again == overhead
    assert before == overhead + 784
    assert sizes == {wire}  # every MNIST test frame, delimiter included


def test_the_limits_table_gives_the_receivers_buffer_limit() -> None:
    assert re.search(rf"\| unencoded packet\s+\| {HEADER.size + CRC.size} \+ payload bytes", DOC)
    match = re.search(r"\((\d+) \+ payload\) \+ ⌊\((\d+) \+ payload\) / 254⌋ \+ 1 bytes \((\d+) at 4 MiB\)", DOC)
    assert match, "the encoded packet limit's formula changed"
    a, b, at_max = map(int, match.groups())
    for payload in (0, 1, 784, 253, 254, 4 << 20):
        assert (a + payload) + (b + payload) // 254 + 1 == max_packet_len(payload)
    assert at_max == max_packet_len(4 << 20)


def test_a_zero_dimension_is_refused_as_the_doc_says() -> None:
    assert "H, W or C is 0" in DOC
    for shape in ((0, 2, 1), (2, 0, 1), (2, 2, 0)):
        body = HEADER.pack(MAGIC, VERSION, 1, 1, *shape, 0)
        packet = cobs_encode(body + CRC.pack(zlib.crc32(body)))
        result = parse_packet(packet)
        assert isinstance(result, BadPacket) and result.kind == "shape", shape


def test_flushing_with_00_is_free_and_with_01_00_is_a_bad_packet() -> None:
    assert "Flush with `00`, never with `01 00`" in DOC
    first, second = (encode_frame(seq, np.ones((2, 2, 1), np.uint8)) for seq in (1, 2))
    flushed = FrameDecoder().feed(b"\x00" + first + b"\x00\x00\x00" + second)
    assert [type(r).__name__ for r in flushed] == ["DecodedFrame", "DecodedFrame"]
    results = FrameDecoder().feed(b"\x00" + first + b"\x01\x00" + second)
    assert [r.kind for r in results if isinstance(r, BadPacket)] == ["short"]
