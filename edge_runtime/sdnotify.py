"""systemd's notify protocol (``Type=notify``) without a dependency on libsystemd.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by ``$NOTIFY_SOCKET``
(sd_notify(3); systemd ships a self-contained Python example in
``man/notify-selfcontained-example.py``). A leading ``@`` names a socket in the abstract namespace.
Outside systemd the variable is unset and every call is a no-op, so the daemon runs the same way
from a terminal, a test or a unit.

The watchdog interval comes from ``$WATCHDOG_USEC`` (honoured only if ``$WATCHDOG_PID`` is unset or
is our pid, as sd_watchdog_enabled(3) says); the daemon pings at half of it from its inference loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str:
    """Turn ``$NOTIFY_SOCKET`` into an ``AF_UNIX`` address: ``@name`` is abstract (``\\0name``)."""
    return "\0" + value[1:] if value.startswith("@") else value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked of us."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2e6


def format_message(fields: Mapping[str, str | int]) -> bytes:
    """``KEY=VALUE`` lines; newlines inside a value would start a bogus field, so they become spaces."""
    return "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()).encode()


class Notifier:
    """Sends state changes to the service manager; silent when not started by systemd.

    A lost datagram must never stop the daemon: send errors are logged once and otherwise ignored
    (systemd will notice a missing READY or watchdog ping by itself).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = socket_address(address) if address[:1] in ("/", "@") else None
        self.watchdog_interval = watchdog_interval(environ, pid)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(format_message(fields), self._address)
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %r: %s", self._address, error)

    def ready(self, status: str) -> None:
        self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.notify(STATUS=status)

    def reloading(self) -> None:
        """``RELOADING=1`` must carry ``MONOTONIC_USEC`` (CLOCK_MONOTONIC) since systemd 253."""
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(STOPPING=1, STATUS="stopping: draining the queue")

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)
