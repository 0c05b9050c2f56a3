"""Ctrl-C and SIGTERM for the commands that run until stopped (``demo``, ``emulate-sensor``).

Why the handlers are installed explicitly: Python installs its SIGINT handler (the one raising
KeyboardInterrupt) only if SIGINT was not ignored when the interpreter started. A background job
of a non-interactive shell (``cmd &``) and some CI runners start us with SIGINT ignored, and then
Ctrl-C, or a harness's SIGINT, did nothing at all. (``serve`` routes its signals through the
daemon's mailbox instead, see mailbox.install_signal_handlers.)
"""

from __future__ import annotations

import signal
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a request to stop, not an interruption.

    A KeyboardInterrupt, so everything that unwinds on Ctrl-C (closing the pty, draining the
    daemon, printing the summary) does the same on SIGTERM; a command that ends normally on it
    catches this class and exits 0.
    """


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def stop_on_signals() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`, whatever we inherited."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
