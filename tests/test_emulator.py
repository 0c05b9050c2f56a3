"""The sensor emulator: what it sends, the faults it injects, and the emulate-sensor command."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import cli
from edge_runtime.emulator import PtyPort, SensorEmulator, corrupt_packet, is_every
from edge_runtime.errors import DataError
from edge_runtime.protocol import DELIMITER, SEQ_MODULUS, BadPacket, DecodedFrame, FrameDecoder, encode_frame
from edge_runtime.sources import Backoff, SerialSource

TIMEOUT = 5.0


def sample_images(n: int) -> np.ndarray:
    return (np.arange(n * 12).reshape(n, 3, 4) % 5 * 50).astype(np.uint8)


def decode(data: bytes) -> tuple[list[DecodedFrame], int]:
    results = FrameDecoder().feed(data)
    frames = [item for item in results if isinstance(item, DecodedFrame)]
    return frames, sum(isinstance(item, BadPacket) for item in results)


def emulate(images: np.ndarray, **options: object) -> tuple[list[bytes], int]:
    written: list[bytes] = []
    count = SensorEmulator(written.append, images, **options).run()
    return written, count


@pytest.mark.parametrize(("index", "n", "expected"), [(0, 0, False), (0, 1, True), (2, 3, True), (3, 3, False)])
def test_is_every(index: int, n: int, expected: bool) -> None:
    assert is_every(index, n) is expected


@pytest.mark.parametrize("seq", range(8))
def test_corrupt_packet_costs_exactly_that_packet(seq: int) -> None:
    image = np.full((2, 3, 1), seq, np.uint8)  # seq 1 puts a 0x01 byte in the middle: still changed
    packet = encode_frame(seq, image)
    damaged = corrupt_packet(packet)
    assert len(damaged) == len(packet)
    assert sum(a != b for a, b in zip(packet, damaged, strict=True)) == 1
    assert damaged.count(0) == 1 and damaged.endswith(DELIMITER)
    frames, bad = decode(DELIMITER + damaged + encode_frame(seq + 1, image))
    assert [f.seq for f in frames] == [seq + 1] and bad == 1


def test_emulator_sends_numbered_frames_after_a_flush() -> None:
    images = sample_images(4)
    written, count = emulate(images, start_seq=SEQ_MODULUS - 2)
    assert written[0] == DELIMITER and count == 4
    frames, bad = decode(b"".join(written))
    assert [f.seq for f in frames] == [SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1] and bad == 0
    assert [f.missing for f in frames] == [0, 0, 0, 0]
    assert all(np.array_equal(f.image[..., 0], image) for f, image in zip(frames, images, strict=True))


def test_emulator_count_loop_and_faults() -> None:
    written, count = emulate(sample_images(3), count=10, loop=True, drop_every=5, corrupt_every=4)
    assert count == 8  # 10 sequence numbers, 4 and 9 skipped
    frames, bad = decode(b"".join(written))
    assert bad == 2  # packets 4 and 8 (seqs 3 and 8)
    assert [f.seq for f in frames] == [0, 1, 2, 5, 6, 7]
    assert [f.missing for f in frames] == [0, 0, 0, 2, 0, 0]  # 3 corrupt + 4 skipped: a gap of 2


def test_stop_ends_a_looping_emulator_from_another_thread() -> None:
    sent = threading.Event()
    emulator = SensorEmulator(lambda packet: sent.set(), sample_images(2), rate=0.2, loop=True)
    thread = threading.Thread(target=emulator.run)
    thread.start()
    assert sent.wait(TIMEOUT)
    emulator.stop()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def frames_file(tmp_path: Path) -> Path:
    path = tmp_path / "frames.npy"
    np.save(path, sample_images(3))
    return path


def test_command_sends_to_a_pyserial_url(frames_file: Path) -> None:
    received = bytearray()

    def serve(server: socket.socket) -> None:
        connection, _ = server.accept()
        with connection:
            while chunk := connection.recv(4096):
                received.extend(chunk)

    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=serve, args=(server,))
        thread.start()
        host, port = server.getsockname()
        argv = ["emulate-sensor", "--port", f"socket://{host}:{port}", "--frames", str(frames_file)]
        assert cli.main([*argv, "--count", "5", "--loop", "--start-seq", "9", "--drop-every", "2"]) == 0
        thread.join(TIMEOUT)
    frames, bad = decode(bytes(received))
    assert [(f.seq, f.missing) for f in frames] == [(9, 0), (11, 1), (13, 1)] and bad == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "loop://", "--link", "x"], "--link only makes sense with --pty"),
        (["--port", "nosuch://x"], "cannot open nosuch://x"),
        (["--port", "loop://", "--frames", "absent.npy"], "absent.npy: no such frames file"),
    ],
)
def test_command_errors_are_one_line(
    argv: list[str], message: str, frames_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--frames" not in argv:
        argv = [*argv, "--frames", str(frames_file)]
    assert cli.main(["emulate-sensor", *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_command_pty_mode_serves_a_reader_until_terminated(frames_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "sensor"
    command = [sys.executable, "-m", "edge_runtime.cli", "emulate-sensor", "--pty", "--link", str(link)]
    options = ["--frames", str(frames_file), "--rate", "200", "--loop"]
    process = subprocess.Popen([*command, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 10.0)
        assert ready, "the emulator printed no pty path"
        path = process.stdout.readline().strip()
        assert path.startswith("/dev/") and os.readlink(link) == path
        source = SerialSource(str(link), backoff=Backoff(0.01, 0.05), read_timeout=0.05)
        batches = source.batches()
        seqs: list[int] = []
        while len(seqs) < 4:
            seqs += [frame.seq for frame in next(batches)]
        source.close()
        batches.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert process.returncode == 0 and "Traceback" not in stderr  # SIGTERM: a request to stop (issue 15)
    assert not os.path.lexists(link)


@pytest.fixture
def keep_sigterm():
    """``emulate-sensor --pty`` maps SIGTERM to KeyboardInterrupt; keep that out of the test process."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _link_target(tmp_path: Path, kind: str) -> Path:
    if kind == "file":
        (tmp_path / "notes.txt").write_text("my notes")
        return tmp_path / "notes.txt"
    if kind == "dir":
        (tmp_path / "somedir").mkdir()
        (tmp_path / "somedir" / "keep").write_text("x")
        return tmp_path / "somedir"
    if kind == "user-symlink":
        (tmp_path / "notes.txt").write_text("my notes")
        os.symlink(tmp_path / "notes.txt", tmp_path / "link")
        return tmp_path / "link"
    return tmp_path / "nonexistent" / "dir" / "x"


def _snapshot(tmp_path: Path) -> dict[str, object]:
    return {
        str(p): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir")
        for p in sorted(tmp_path.rglob("*"))
    }


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("file", "already exists and is not a symlink"),
        ("dir", "already exists and is not a symlink"),
        ("user-symlink", "not to a pty; refusing to replace it"),
        ("missing-dir", "cannot create the symlink (No such file or directory)"),
    ],
)
def test_pty_link_never_replaces_a_users_file(
    kind: str, message: str, frames_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_sigterm: None
) -> None:
    link = _link_target(tmp_path, kind)
    before = _snapshot(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    assert cli.main(["emulate-sensor", "--pty", "--link", str(link), "--frames", str(frames_file)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error, error
    assert _snapshot(tmp_path) == before  # nothing replaced, removed, or left behind
    assert len(os.listdir("/proc/self/fd")) == fds  # the pty was closed again


def test_pty_link_replaces_a_stale_link_to_another_pty(tmp_path: Path) -> None:
    link = tmp_path / "sensor"
    os.symlink("/dev/pts/9999", link)
    with PtyPort(link) as port:
        assert os.readlink(link) == port.path
    assert not os.path.lexists(link)


def test_oversize_frames_are_refused_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "big.npy", np.zeros((1, 2048, 2048, 3), np.uint8))
    assert cli.main(["emulate-sensor", "--port", "loop://", "--frames", str(tmp_path / "big.npy")]) == 2
    error = capsys.readouterr().err
    assert "2048x2048x3 (12582912 bytes) do not fit the serial protocol" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    with pytest.raises(DataError, match="do not fit"):
        SensorEmulator(lambda data: None, np.zeros((1, 70000, 1, 1), np.uint8))
