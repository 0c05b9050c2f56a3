"""Frame sources: spec parsing, replay pacing and looping, and the serial source over real ptys."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.emulator import PtyPort, SensorEmulator
from edge_runtime.errors import ConfigError, DataError, SourceError
from edge_runtime.protocol import BadPacket, DecodedFrame
from edge_runtime.sources import (
    DEFAULT_BAUD,
    SOURCE_DROP_REASONS,
    Backoff,
    Frame,
    FrameSource,
    ReplaySource,
    ReplaySpec,
    SerialSource,
    SerialSpec,
    open_source,
    parse_source_spec,
)
from edge_runtime.sources import reader_wire as wire
from edge_runtime.sources.replay_source import next_due
from edge_runtime.sources.serial_reader import add_records
from edge_runtime.sources.serial_source import PACKAGE_ROOT, READER_BOOT

TIMEOUT = 5.0  # generous upper bound for anything that should take milliseconds
FAST = Backoff(initial=0.01, maximum=0.05)


def sample_images(n: int = 6, shape: tuple[int, int] = (4, 5)) -> np.ndarray:
    """``n`` distinct (H, W) frames with zeros in them; frame i starts with pixel value i."""
    pixels = (np.arange(n)[:, None] + np.arange(shape[0] * shape[1])[None, :] * 3) % 7 * 40
    return pixels.astype(np.uint8).reshape(n, *shape)


class RecordingEvents:
    """A thread-safe SourceEvents that tests can wait on."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.drops: Counter[str] = Counter()
        self.ups: list[bool] = []
        self.bytes = 0
        self.bad: Counter[str] = Counter()
        self.flushed = 0

    def dropped(self, reason: str, n: int = 1) -> None:
        assert reason in SOURCE_DROP_REASONS
        self._record(lambda: self.drops.update({reason: n}))

    def sensor_up(self, up: bool) -> None:
        self._record(lambda: self.ups.append(up))

    def bytes_received(self, n: int) -> None:
        self._record(lambda: setattr(self, "bytes", self.bytes + n))

    def bad_packet(self, kind: str) -> None:
        self._record(lambda: self.bad.update({kind: 1}))

    def bytes_flushed(self, n: int) -> None:
        self._record(lambda: setattr(self, "flushed", self.flushed + n))

    def _record(self, change: Callable[[], object]) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[RecordingEvents], bool]) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self), TIMEOUT), f"timed out; ups={self.ups}"


@contextmanager
def reading(source: FrameSource) -> Iterator[queue.Queue[Frame]]:
    """Iterate ``source`` in a thread as the daemon will; close it and check the thread ends."""
    received: queue.Queue[Frame] = queue.Queue()
    thread = threading.Thread(
        target=lambda: [received.put(f) for batch in source.batches() for f in batch], daemon=True
    )
    thread.start()
    try:
        yield received
    finally:
        source.close()
        thread.join(TIMEOUT)
    assert not thread.is_alive(), "batches() did not return after close()"


def take(received: queue.Queue[Frame], n: int) -> list[Frame]:
    return [received.get(timeout=TIMEOUT) for _ in range(n)]


# --- spec strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("serial:/dev/ttyUSB0", SerialSpec("/dev/ttyUSB0", DEFAULT_BAUD)),
        ("serial:/dev/ttyUSB0?baud=921600", SerialSpec("/dev/ttyUSB0", 921600)),
        ("serial:loop://", SerialSpec("loop://")),
        ("serial:socket://127.0.0.1:5000", SerialSpec("socket://127.0.0.1:5000")),
        ("serial:socket://h:1?logging=debug&baud=9600", SerialSpec("socket://h:1?logging=debug", 9600)),
        ("replay:mnist-test", ReplaySpec("mnist-test")),
        ("replay:/data/frames.npy?rate=12.5&loop=1", ReplaySpec("/data/frames.npy", 12.5, True)),
        ("replay:frames.npy?loop=0", ReplaySpec("frames.npy")),
    ],
)
def test_parse_valid_specs(spec: str, expected: object) -> None:
    assert parse_source_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "/dev/ttyUSB0",
        "camera:/dev/video0",
        "serial:",
        "serial:/dev/ttyUSB0?baud=fast",
        "serial:/dev/ttyUSB0?baud=0",
        "serial:/dev/ttyUSB0?parity=E",
        "serial:/dev/ttyUSB0?baud",
        "serial:/dev/ttyUSB0?baud=1&baud=2",
        "replay:frames.png",
        "replay:frames.npy?rate=0",
        "replay:frames.npy?rate=inf",
        "replay:frames.npy?rate=x",
        "replay:frames.npy?loop=yes",
        "replay:mnist-test?speed=3",
    ],
)
def test_parse_bad_specs_name_the_valid_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"valid forms: serial:.*replay:") as caught:
        parse_source_spec(spec)
    assert "\n" not in str(caught.value)


def test_bad_pyserial_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nosuch://"):
        open_source("serial:nosuch://x")


# --- replay ----------------------------------------------------------------------------------


def test_next_due_follows_the_schedule_and_restarts_after_a_stall() -> None:
    assert next_due(10.0, 0.5, now=10.2) == 10.5  # on time
    assert next_due(10.0, 0.5, now=10.9) == 10.5  # a little late: catch up, no drift
    assert next_due(10.0, 0.5, now=12.0) == 12.0  # stalled: restart rather than burst


def test_replay_npy_as_fast_as_possible(tmp_path: Path) -> None:
    path = tmp_path / "frames.npy"
    np.save(path, sample_images(4))
    events = RecordingEvents()
    frames = list(open_source(f"replay:{path}", events).frames())
    assert [f.seq for f in frames] == [0, 1, 2, 3]
    assert all(f.label is None and f.image.shape == (4, 5, 1) for f in frames)
    assert np.array_equal(frames[2].image[..., 0], sample_images(4)[2])
    assert events.ups == [True]
    # The daemon takes a replay as single-frame batches (a paced replay must not bunch frames).
    assert [[f.seq for f in batch] for batch in open_source(f"replay:{path}").batches()] == [[0], [1], [2], [3]]


def test_replay_paces_frames_at_the_rate() -> None:
    """Never faster than the rate (a lower bound a slow host cannot break); exact timing is
    next_due's job and tested there without a clock."""
    rate, n = 200.0, 10
    frames = list(ReplaySource(sample_images(n), rate=rate).frames())
    assert len(frames) == n
    assert frames[-1].received_at - frames[0].received_at >= (n - 1) / rate - 1e-3


def test_replay_loops_with_labels_until_closed() -> None:
    source = ReplaySource(sample_images(3), np.array([7, 8, 9]), loop=True)
    frames = list(islice(source.frames(), 7))
    assert [f.seq for f in frames] == list(range(7))
    assert [f.label for f in frames] == [7, 8, 9, 7, 8, 9, 7]
    assert np.array_equal(frames[4].image, frames[1].image)
    source.close()
    assert list(source.frames()) == []  # closed is final, even for a looping source


def test_close_interrupts_a_slow_replay_promptly() -> None:
    """Frames are due 11 days apart: only close() interrupting the wait lets ``reading`` see the thread end."""
    source = ReplaySource(sample_images(3), rate=1e-6, loop=True)
    with reading(source) as received:
        take(received, 1)


def test_replay_of_the_mnist_test_set_carries_labels(mnist_data) -> None:
    source = open_source("replay:mnist-test")
    frames = list(islice(source.frames(), 3))
    assert [f.label for f in frames] == [int(v) for v in mnist_data.test_labels[:3]]
    assert frames[0].image.shape == (28, 28, 1)
    assert np.array_equal(frames[1].image[..., 0], mnist_data.test_images[1])


@pytest.mark.parametrize(
    "content",
    [np.zeros((3, 4, 4), np.float32), np.zeros((4,), np.uint8), np.zeros((0, 4, 4), np.uint8)],
)
def test_replay_refuses_malformed_frames_files(tmp_path: Path, content: np.ndarray) -> None:
    path = tmp_path / "frames.npy"
    np.save(path, content)
    with pytest.raises(DataError, match="frames"):
        open_source(f"replay:{path}")


def test_replay_of_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such frames file"):
        open_source(f"replay:{tmp_path / 'absent.npy'}")


# --- serial over a real pseudo-terminal ------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    delays = list(islice(Backoff(initial=0.1, maximum=1.0).delays(), 6))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def serial_source(link: Path, events: RecordingEvents) -> SerialSource:
    return SerialSource(str(link), events=events, backoff=FAST, read_timeout=0.05)


def test_serial_source_receives_frames_from_the_emulator(tmp_path: Path) -> None:
    images = sample_images(5)
    events = RecordingEvents()
    with PtyPort(tmp_path / "sensor") as port:
        source = serial_source(port.link, events)
        with reading(source) as received:
            events.wait_for(lambda e: e.ups == [True])
            SensorEmulator(port.write, images, start_seq=40).run()
            frames = take(received, 5)
    assert [f.seq for f in frames] == [40, 41, 42, 43, 44]
    assert all(np.array_equal(f.image[..., 0], image) for f, image in zip(frames, images, strict=True))
    assert frames[0].label is None and frames[0].received_at <= time.monotonic()
    assert events.bytes > 5 * images[0].size and not events.drops


def test_serial_source_counts_corrupt_packets_and_gaps(tmp_path: Path) -> None:
    events = RecordingEvents()
    with PtyPort(tmp_path / "sensor") as port, reading(serial_source(port.link, events)) as received:
        events.wait_for(lambda e: e.ups == [True])
        # seqs 0..11; 3, 7, 11 never sent; sent packets 3, 6, 9 (seqs 2, 6, 10) damaged.
        SensorEmulator(port.write, sample_images(12), corrupt_every=3, drop_every=4).run()
        frames = take(received, 6)
        events.wait_for(lambda e: e.bad["crc"] == 3)
    assert [f.seq for f in frames] == [0, 1, 4, 5, 8, 9]
    # Frames lost are the gaps (2, 3 and 6, 7; 10 and 11 are lost unseen: nothing came after them);
    # the three damaged packets are counted apart, as packets (issue 15).
    assert events.drops == {"seq_gap": 4} and events.bad == {"crc": 3}


def test_serial_source_reconnects_when_the_port_vanishes(tmp_path: Path) -> None:
    link = tmp_path / "sensor"
    images = sample_images(6)
    events = RecordingEvents()
    first = PtyPort(link)
    with reading(serial_source(link, events)) as received:
        events.wait_for(lambda e: e.ups == [True])
        SensorEmulator(first.write, images[:3]).run()
        before = take(received, 3)
        first.close()  # unplugged: the device node and its by-id link disappear
        events.wait_for(lambda e: e.ups == [True, False])
        with PtyPort(link) as second:  # plugged back in, under a new /dev/pts number
            events.wait_for(lambda e: e.ups == [True, False, True])
            SensorEmulator(second.write, images[3:], start_seq=5).run()
            after = take(received, 3)
    assert [f.seq for f in before + after] == [0, 1, 2, 5, 6, 7]
    assert np.array_equal(after[0].image[..., 0], images[3])
    assert events.drops == {"seq_gap": 2}  # 3 and 4 were produced while unplugged


def test_serial_source_retries_a_missing_port_until_closed(tmp_path: Path) -> None:
    events = RecordingEvents()
    source = serial_source(tmp_path / "not-plugged-in", events)
    with reading(source) as received:
        events.wait_for(lambda e: e.ups == [False])
    assert received.empty()


def test_serial_source_over_a_pyserial_socket_url() -> None:
    events = RecordingEvents()
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        source = open_source(f"serial:socket://{host}:{port}", events, backoff=FAST)
        with reading(source) as received:
            connection, _ = server.accept()
            with connection:
                # pyserial empties its input when opening: send only once the port is open.
                events.wait_for(lambda e: e.ups == [True])
                SensorEmulator(connection.sendall, sample_images(3)).run()
                frames = take(received, 3)
    assert [f.seq for f in frames] == [0, 1, 2]


# --- the serial reader process ---------------------------------------------------------------


def test_a_read_becomes_byte_count_then_bad_packets_and_runs_of_one_shape_in_order() -> None:
    small, large = np.zeros((2, 2, 1), np.uint8), np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    decoded = [
        DecodedFrame(1, small),
        DecodedFrame(2, small + 1, missing=3),
        BadPacket("crc", "CRC32 mismatch"),
        DecodedFrame(5, small + 2),
        DecodedFrame(6, large),
    ]
    out: list = []
    assert add_records(out, 99, decoded, 7.5) == 4
    records = wire.RecordReader(1 << 20).feed(b"".join(out))
    assert [type(r).__name__ for r in records] == ["Received", "Frames", "Bad", "Frames", "Frames"]
    assert records[0] == wire.Received(99) and records[2] == wire.Bad("crc", "CRC32 mismatch")
    assert records[1] == wire.Frames(7.5, (2, 2, 1), [(1, 0), (2, 3)], bytes(4) + bytes([1] * 4))
    assert records[3][1:] == ((2, 2, 1), [(5, 0)], bytes([2] * 4))
    assert records[4][1:] == ((3, 4, 1), [(6, 0)], large.tobytes())


def test_gaps_within_one_run_of_frames_are_reported_together_before_the_run() -> None:
    events = RecordingEvents()
    source = SerialSource("/dev/null", events=events)
    pixels = bytes(range(12))
    frames = source._frames(wire.Frames(2.5, (2, 2, 1), [(5, 0), (8, 2), (10, 1)], pixels))
    assert events.drops == {"seq_gap": 3}
    assert [f.seq for f in frames] == [5, 8, 10] and all(f.received_at == 2.5 for f in frames)
    assert [f.image.ravel().tolist() for f in frames] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def reading_until_error(source: SerialSource) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in source.batches():
                pass
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_stop_signals_do_not_reach_the_reader_process(tmp_path: Path) -> None:
    """Ctrl-C or systemctl stop signal the whole process group: the daemon decides when reading ends."""
    events = RecordingEvents()
    with PtyPort(tmp_path / "sensor") as port:
        source = serial_source(port.link, events)
        with reading(source) as received:
            events.wait_for(lambda e: e.ups == [True])
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                os.kill(source.reader_pid, signum)
            SensorEmulator(port.write, sample_images(3)).run()
            assert [f.seq for f in take(received, 3)] == [0, 1, 2]
    assert source.reader_pid is None


def test_frames_raises_when_the_reader_process_dies(tmp_path: Path) -> None:
    events = RecordingEvents()
    with PtyPort(tmp_path / "sensor") as port:
        source = serial_source(port.link, events)
        thread, errors = reading_until_error(source)
        events.wait_for(lambda e: e.ups == [True])
        os.kill(source.reader_pid, signal.SIGKILL)
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SourceError) and "exited unexpectedly" in str(errors[0])


def test_the_reader_process_stops_when_the_daemon_is_gone(tmp_path: Path) -> None:
    """Without close(), e.g. the daemon was killed: its end of the socket closes and the reader exits."""
    ours, theirs = socket.socketpair()
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-c", READER_BOOT, str(PACKAGE_ROOT), str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
    connection = ours
    try:
        connection.sendall(
            wire.settings(
                {
                    "url": str(tmp_path / "absent"),
                    "baudrate": DEFAULT_BAUD,
                    "read_timeout": 0.05,
                    "backoff": (5.0, 5.0, 2.0),
                    "max_payload": 1024,
                }
            )
        )
        connection.settimeout(TIMEOUT)
        [record] = wire.RecordReader(1 << 20).feed(connection.recv(1 << 16))
        assert isinstance(record, wire.Up) and not record.up  # now waiting 5 s before it retries
        connection.close()
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
