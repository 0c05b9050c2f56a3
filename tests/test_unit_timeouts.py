"""The daemon's timeouts agree with the systemd unit, and a user error does not restart-loop the service.

Issue 15, items 4 and 5: the reload's backend is built on the thread that pings the watchdog, so
a board mapping allowed 60 s was killed by ``WatchdogSec=30``; a stop could take 60 + 60 s against
``TimeoutStopSec=30``; and exit status 2 (a user error) was restarted ten times into the start limit.
"""

from __future__ import annotations

import inspect
import signal
import threading
from pathlib import Path

import numpy as np
from daemon_support import NotifyListener, scrape_when, value
from test_systemd import UNIT, directives

from edge_runtime import timeouts
from edge_runtime.cliutil import EXIT_USER_ERROR
from edge_runtime.daemon import Daemon
from edge_runtime.pipeline import IDLE_WAKE_S, Pipeline
from edge_runtime.sdnotify import Notifier
from edge_runtime.sources.serial_source import STOP_GRACE_S

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "mnist-zeroaware"


def seconds(unit_value: str) -> float:
    """A systemd time span as written in our unit ("30", "30s", "2min")."""
    for suffix, scale in (("min", 60.0), ("s", 1.0)):
        if unit_value.endswith(suffix):
            return float(unit_value[: -len(suffix)]) * scale
    return float(unit_value)


UNIT_SETTINGS = directives(UNIT.read_text())


def test_the_unit_gives_a_stop_the_time_the_daemon_takes() -> None:
    stop = seconds(UNIT_SETTINGS["TimeoutStopSec"][0])
    # Stopping the serial reader (its grace period, twice: finish reading, then exit) fits the budget too.
    assert 2 * STOP_GRACE_S < timeouts.STOP_TIMEOUT_S
    assert stop >= timeouts.STOP_TIMEOUT_S + timeouts.STOP_MARGIN_S
    # ... and it is the budget the daemon's stop uses, for reading and draining together.
    assert inspect.signature(Pipeline.stop).parameters["timeout"].default == timeouts.STOP_TIMEOUT_S


def test_the_watchdog_is_pinged_well_within_its_period_and_a_reload_asks_for_more() -> None:
    watchdog = seconds(UNIT_SETTINGS["WatchdogSec"][0])
    assert watchdog / 2 > IDLE_WAKE_S  # the idle loop wakes up in time to ping at half the period
    # A reload may take SWAP_TIMEOUT_S on the pinging thread: either the unit allows it, or the daemon
    # asks for at least that much (test below) before it starts.
    assert watchdog > timeouts.SWAP_TIMEOUT_S or timeouts.RELOAD_ALLOWANCE_S > timeouts.SWAP_TIMEOUT_S


def test_a_user_error_exit_is_not_restarted() -> None:
    assert UNIT_SETTINGS["Restart"] == ["on-failure"]
    prevented = " ".join(UNIT_SETTINGS.get("RestartPreventExitStatus", [])).split()
    assert str(EXIT_USER_ERROR) in prevented
    readme = (UNIT.parent.parent / "deploy" / "README.md").read_text()
    assert "RestartPreventExitStatus=2" in readme


def test_a_reload_extends_the_watchdog_for_its_duration_and_restores_it(tmp_path: Path) -> None:
    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((4, 28, 28, 1), np.uint8))
    listener = NotifyListener(tmp_path / "notify.sock")
    watchdog_usec = int(seconds(UNIT_SETTINGS["WatchdogSec"][0]) * 1e6)
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(watchdog_usec)})
    daemon = Daemon(
        None,
        {
            "model.bundle": str(BUNDLE),
            "source.spec": f"replay:{frames}?rate=20&loop=1",
            "metrics.listen": "127.0.0.1:0",
        },
        notifier=notifier,
    )
    daemon.start()
    status: list[int] = []
    loop = threading.Thread(target=lambda: status.append(daemon.wait()), daemon=True)
    loop.start()
    try:
        daemon.post(signal.SIGHUP)
        scrape_when(daemon.url, lambda s: value(s, "edge_reloads_total", result="ok") == 1, "the reload")
    finally:
        daemon.post(signal.SIGTERM)
        loop.join(60)
        listener.close()
    assert status == [0]
    allowance = int(timeouts.RELOAD_ALLOWANCE_S * 1e6)
    extended, restored = listener.find("WATCHDOG_USEC")  # in the order sent, and no other
    assert int(extended["WATCHDOG_USEC"]) == int(extended["EXTEND_TIMEOUT_USEC"]) == allowance
    assert allowance > timeouts.SWAP_TIMEOUT_S * 1e6
    assert int(restored["WATCHDOG_USEC"]) == watchdog_usec
