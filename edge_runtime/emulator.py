"""``edge-runtime emulate-sensor``: a sensor in software, so demos and tests need no hardware.

It sends frames with the serial protocol (edge_runtime.protocol) to a serial port, a pyserial URL
or a pseudo-terminal it creates (``--pty``), and can damage packets or skip sequence numbers on
purpose to show that the daemon counts both.
"""

from __future__ import annotations

import argparse
import logging
import os
import pty
import select
import signal
import threading
import tty
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from types import TracebackType

import numpy as np
import serial

from . import cliutil
from .errors import ConfigError, DataError, SourceError
from .files import as_hwc
from .interrupts import Terminated, stop_on_signals
from .protocol import DELIMITER, MAX_PAYLOAD_BYTES, SEQ_MODULUS, encode_frame
from .sources import DEFAULT_BAUD, MNIST_TEST, ReplaySource, load_frames

log = logging.getLogger(__name__)

DESCRIPTION = """\
A sensor in software: sends frames with the serial protocol (docs/protocol.md) to a serial port, a
pyserial URL or a pseudo-terminal it creates (--pty), and can damage packets or skip sequence
numbers on purpose to show that the daemon counts both.
"""

PTY_DIR = "/dev/pts/"


def is_every(index: int, n: int) -> bool:
    """True for the n-th, 2n-th, ... item (``index`` counts from 0); never when ``n`` is 0."""
    return n > 0 and (index + 1) % n == 0


def corrupt_packet(packet: bytes) -> bytes:
    """Change one byte in the middle of ``packet`` to another non-zero value.

    Keeping it non-zero leaves the delimiters alone, so exactly one packet is lost, as with a
    bit error on a real line, and a test can count on one "corrupt" per damaged packet.
    """
    middle = (len(packet) - 1) // 2
    damaged = packet[middle] ^ 0x01 or 0x03
    return packet[:middle] + bytes([damaged]) + packet[middle + 1 :]


class SensorEmulator:
    """Sends ``images`` as protocol packets through ``write``, paced like a sensor.

    ``count`` limits the sequence numbers used (skipped ones included), so ``count=10,
    drop_every=5`` writes 8 packets. ``corrupt_every`` counts packets actually written.
    Sequence numbers start at ``start_seq`` and wrap at 2**32, as a sender's uint32 counter does.
    """

    def __init__(
        self,
        write: Callable[[bytes], object],
        images: np.ndarray,
        *,
        rate: float | None = None,
        count: int | None = None,
        loop: bool = False,
        start_seq: int = 0,
        corrupt_every: int = 0,
        drop_every: int = 0,
    ) -> None:
        self._write = write
        self._source = ReplaySource(images, rate=rate, loop=loop)
        check_frame_size(as_hwc(images))
        self._count = count
        self._start_seq = start_seq
        self._corrupt_every = corrupt_every
        self._drop_every = drop_every

    def run(self) -> int:
        """Send until done (or :meth:`stop`); return the number of packets written."""
        self._write(DELIMITER)  # ends whatever half packet the receiver holds from before
        written = 0
        for index, frame in enumerate(islice(self._source.frames(), self._count)):
            if is_every(index, self._drop_every):
                continue
            packet = encode_frame((self._start_seq + index) % SEQ_MODULUS, frame.image)
            if is_every(written, self._corrupt_every):
                packet = corrupt_packet(packet)
            self._write(packet)
            written += 1
        return written

    def stop(self) -> None:
        """Thread-safe; :meth:`run` returns after the packet in progress."""
        self._source.close()


class PtyPort:
    """A pseudo-terminal standing in for a USB serial adapter.

    The slave side is set raw at once, so bytes written before a reader configures the port are
    not mangled by the terminal line discipline (echo, CR/LF mapping). We keep the slave open so
    the pty does not hang up between readers. ``link``, if given, is a symlink to the slave path,
    replaced atomically: like /dev/serial/by-id, a stable name across "replugs".

    ``link`` must not exist, or be a symlink into /dev/pts (one an earlier emulator left behind). Any
    other file or symlink is the user's, and replacing it (then removing it on exit) would lose it.
    """

    def __init__(self, link: Path | None = None) -> None:
        self.master, self._slave = pty.openpty()
        self._stopping = threading.Event()
        try:
            tty.setraw(self._slave)
            os.set_blocking(self.master, False)  # see write()
            self.path = os.ttyname(self._slave)
            self.link = link
            if link is not None:
                _make_link(self.path, link)
        except BaseException:
            os.close(self.master)
            os.close(self._slave)
            raise

    def write(self, data: bytes) -> None:
        """Every byte, waiting for room as a serial line would, until :meth:`stop_writing` is called.

        A pty buffers only a few KiB: a blocking write to a full one hangs for as long as nobody
        reads, and a thread stuck in it could never be joined. So the master is non-blocking and each
        wait for room is a short select; once stopped, a write returns within 50 ms, dropping the rest.
        """
        view = memoryview(data)
        while view and not self._stopping.is_set():
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                select.select([], [self.master], [], 0.05)

    def stop_writing(self) -> None:
        """Thread-safe: make a write in progress return promptly, and later ones at once."""
        self._stopping.set()

    def close(self) -> None:
        """Hang up (readers see the port vanish) and remove the link if it is still ours."""
        self.stop_writing()
        if self.link is not None and os.path.islink(self.link) and os.readlink(self.link) == self.path:
            self.link.unlink()
        os.close(self.master)
        os.close(self._slave)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _make_link(target: str, link: Path) -> None:
    """Point the symlink ``link`` at ``target``, replacing only a stale link to another pty."""
    if os.path.islink(link):
        if not os.readlink(link).startswith(PTY_DIR):
            raise ConfigError(
                f"--link {link}: a symlink to {os.readlink(link)}, not to a pty; refusing to replace "
                "it, choose another path"
            )
    elif os.path.lexists(link):
        raise ConfigError(
            f"--link {link}: already exists and is not a symlink; refusing to replace it, choose another path"
        )
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        os.symlink(target, temporary)
        try:
            os.replace(temporary, link)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:
        raise ConfigError(f"--link {link}: cannot create the symlink ({error.strerror or error})") from None


def check_frame_size(images: np.ndarray) -> None:
    """Refuse frames (N, H, W, C) that the serial protocol cannot carry, before any port is opened."""
    size = int(np.prod(images.shape[1:]))
    if size > MAX_PAYLOAD_BYTES or max(images.shape[1:]) > 0xFFFF:
        raise DataError(
            f"frames of {'x'.join(map(str, images.shape[1:]))} ({size} bytes) do not fit the serial "
            f"protocol: at most {MAX_PAYLOAD_BYTES} bytes per frame and 65535 per axis"
        )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "emulate-sensor",
        help="send frames like a serial sensor (to a port, a pyserial URL or a new pty)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--port", metavar="URL", help="serial device or pyserial URL, e.g. socket://HOST:PORT")
    target.add_argument(
        "--pty", action="store_true", help="create a pseudo-terminal and print its path (kept open until ^C)"
    )
    parser.add_argument("--link", type=Path, metavar="PATH", help="with --pty: symlink PATH to the pty")
    parser.add_argument("--baud", type=_positive_int, default=DEFAULT_BAUD, help="with --port (default %(default)s)")
    parser.add_argument(
        "--frames", default=MNIST_TEST, metavar="SOURCE", help=f"{MNIST_TEST} (default) or an .npy uint8 file"
    )
    parser.add_argument(
        "--rate", type=cliutil.positive_float, metavar="HZ", help="frames/s (default: as fast as possible)"
    )
    parser.add_argument("--count", type=_positive_int, metavar="N", help="stop after N sequence numbers")
    parser.add_argument("--loop", action="store_true", help="repeat the frames")
    parser.add_argument("--start-seq", type=_seq, default=0, metavar="N", help="first sequence number")
    parser.add_argument("--corrupt-every", type=_positive_int, default=0, metavar="N", help="damage every N-th packet")
    parser.add_argument("--drop-every", type=_positive_int, default=0, metavar="N", help="skip every N-th seq number")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Send until done (``--port``) or until stopped (``--pty``): SIGTERM exits 0, Ctrl-C 130."""
    if args.link is not None and not args.pty:
        raise ConfigError("--link only makes sense with --pty")
    images, _ = load_frames(args.frames)
    check_frame_size(images)
    stop_on_signals()
    try:
        if args.pty:
            return _run_on_pty(args, images)
        return _run_on_port(args, images)
    except Terminated:  # scripts and harnesses stop us so: the pty and its link are gone by now
        log.info("terminated: stopping")
        return 0


def _emulator(args: argparse.Namespace, write: Callable[[bytes], object], images: np.ndarray) -> SensorEmulator:
    return SensorEmulator(
        write,
        images,
        rate=args.rate,
        count=args.count,
        loop=args.loop,
        start_seq=args.start_seq,
        corrupt_every=args.corrupt_every,
        drop_every=args.drop_every,
    )


def _run_on_pty(args: argparse.Namespace, images: np.ndarray) -> int:
    with PtyPort(args.link) as port:
        print(port.path, flush=True)
        log.info("emulating a sensor on %s%s", port.path, f" (linked as {args.link})" if args.link else "")
        written = _emulator(args, port.write, images).run()
        log.info("sent %d packets; keeping the pty open until interrupted", written)
        # Closing now would hang up the pty and discard what the reader has not read yet.
        signal.pause()
    return 0


def _run_on_port(args: argparse.Namespace, images: np.ndarray) -> int:
    try:
        port = serial.serial_for_url(args.port, baudrate=args.baud, exclusive=True, do_not_open=True)
        port.open()
    except (ValueError, serial.SerialException) as error:
        raise SourceError(f"cannot open {args.port}: {error}") from None
    with port:
        log.info("emulating a sensor on %s", args.port)
        try:
            written = _emulator(args, port.write, images).run()
            port.flush()
        except (serial.SerialException, OSError) as error:
            raise SourceError(f"lost {args.port}: {error}") from None
    log.info("sent %d packets", written)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seq(text: str) -> int:
    value = int(text)
    if not 0 <= value < SEQ_MODULUS:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEQ_MODULUS - 1}, got {text}")
    return value
