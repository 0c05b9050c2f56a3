"""How signals and worker threads wake the daemon's main thread: one byte per message, through a pipe."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Mailbox:
    """Wakes the daemon's main thread; posts are single bytes written to a pipe.

    Writing one byte to a pipe is atomic and async-signal-safe, so the same mailbox takes Python's
    ``signal.set_wakeup_fd`` (signal numbers, all < 128) and codes from worker threads (>= 128).
    """

    SOURCE_CHANGED = 0xF0
    FATAL = 0xF1

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def write_fd(self) -> int:
        return self._write

    def post(self, code: int) -> None:
        # BlockingIOError: 64 KiB of unread wake-ups, so the main thread is already due to wake.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, bytes([code]))

    def wait(self, timeout: float | None = None) -> bytes:
        """Block until something was posted (or ``timeout``); return every code pending."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self._read, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def install_signal_handlers(mailbox: Mailbox) -> None:
    """Route SIGHUP, SIGTERM and SIGINT to the mailbox (main thread only, as Python requires).

    The handlers do nothing themselves: ``set_wakeup_fd`` writes each signal's number to the
    mailbox, and the main loop acts on it.
    """
    for signum in (signal.SIGHUP, *STOP_SIGNALS):
        signal.signal(signum, _ignore)
    signal.set_wakeup_fd(mailbox.write_fd, warn_on_full_buffer=False)


def _ignore(signum: int, frame: Any) -> None:
    """Replaces the default actions (SIGINT's KeyboardInterrupt, SIGHUP's exit)."""
