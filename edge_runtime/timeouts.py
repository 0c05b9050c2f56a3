"""How long the daemon's life-cycle steps may take: the one place for these numbers.

They must agree with ``systemd/edge-runtime.service`` (``WatchdogSec=``, ``TimeoutStopSec=``), which
``tests/test_unit_timeouts.py`` checks, because a disagreement turns a slow but healthy step into a
kill by the service manager (a reload mapping a model on the board outlasting the watchdog) or a
SIGKILL mid-drain (a stop budget longer than ``TimeoutStopSec``).
"""

from __future__ import annotations

# Building a backend on reload may map a model onto the board: allow for a slow device, not a hung one.
SWAP_TIMEOUT_S = 60.0
# While a reload builds its backend the inference thread cannot ping the watchdog, so the daemon asks
# systemd for this much more time (EXTEND_TIMEOUT_USEC) and this watchdog (WATCHDOG_USEC), then
# restores the unit's watchdog once the reload has ended.
RELOAD_ALLOWANCE_S = SWAP_TIMEOUT_S + 10.0
# SIGTERM: stop reading (the serial reader gets STOP_GRACE_S of it), then infer what is queued; the
# whole stop, reader and drain together, ends within this budget and the process exits.
STOP_TIMEOUT_S = 20.0
# What the unit must leave on top of STOP_TIMEOUT_S for releasing the port, the HTTP server and Python's exit.
STOP_MARGIN_S = 5.0
