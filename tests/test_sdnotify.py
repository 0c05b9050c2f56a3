"""sd_notify without libsystemd: real datagrams to a real unix socket, filesystem and abstract."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from edge_runtime.sdnotify import Notifier, format_message, socket_address, watchdog_interval


def receive(sock: socket.socket) -> dict[str, str]:
    sock.settimeout(5)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


@pytest.fixture
def path_socket(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    yield sock, str(tmp_path / "notify")
    sock.close()


def test_abstract_names_start_with_a_nul_byte() -> None:
    assert socket_address("@/org/freedesktop/systemd1/notify") == "\0/org/freedesktop/systemd1/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=42) == expected


def test_a_newline_in_a_value_cannot_forge_a_field() -> None:
    assert format_message({"STATUS": "lost port\nREADY=1"}) == b"STATUS=lost port READY=1"


def test_messages_reach_a_filesystem_socket(path_socket) -> None:
    sock, path = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready("serving")
    assert receive(sock) == {"READY": "1", "STATUS": "serving"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    message = receive(sock)
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.watchdog()
    assert receive(sock) == {"WATCHDOG": "1"}
    notifier.stopping()
    assert receive(sock)["STOPPING"] == "1"


def test_messages_reach_an_abstract_socket() -> None:
    name = f"edge-runtime-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("waiting for the sensor")
        assert receive(sock) == {"STATUS": "waiting for the sensor"}


def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")  # nothing to send to, nothing raised


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    for _ in range(3):
        notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1
