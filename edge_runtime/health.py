"""What /readyz reports and how the sources' fault reports reach it: readiness, staleness, SourceListener."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from .mailbox import Mailbox
from .metrics import Metrics

# A source with an expected frame rate is stale after this many expected periods without a frame,
# and never sooner than STALE_MIN_S (so a fast sensor's short hiccup is not an outage).
STALE_PERIODS = 10
STALE_MIN_S = 5.0


def stale_after(expected_rate: float | None) -> float:
    """Seconds without a good frame after which a source at ``expected_rate`` Hz is stale (inf: never)."""
    return max(STALE_MIN_S, STALE_PERIODS / expected_rate) if expected_rate else float("inf")


@dataclass
class Health:
    """What /readyz reports; written by the pipeline and daemon, read by HTTP threads.

    ``expected_rate`` (frames/s; None: unknown) makes a silent sensor visible: an open port with
    no frames for :func:`stale_after` seconds is not ready, and its silence is exported.
    """

    model_loaded: bool = False
    source_open: bool = False
    source_seen: bool = False  # the source has been open at least once (readiness for systemd)
    source_finished: bool = False
    expected_rate: float | None = None
    # time.monotonic() of the last good frame, or of the source opening if that came later
    last_frame_at: float = field(default_factory=time.monotonic)

    def silence_s(self) -> float:
        return max(0.0, time.monotonic() - self.last_frame_at)

    def readiness(self) -> tuple[bool, str]:
        if not self.model_loaded:
            return False, "model not loaded"
        if self.source_finished:
            return False, "source finished (replay ended)"
        if not self.source_open:
            return False, "source not open"
        silence, limit = self.silence_s(), stale_after(self.expected_rate)
        if silence > limit:
            return False, (
                f"source stale: no frame for {silence:.0f} s (expected {self.expected_rate:g} frames/s, "
                f"stale after {limit:g} s)"
            )
        return True, "ready"


class SourceListener:
    """The sources' fault reports (SourceEvents), turned into metrics, health and a wake-up."""

    def __init__(self, metrics: Metrics, health: Health, mailbox: Mailbox) -> None:
        self._metrics, self._health, self._mailbox = metrics, health, mailbox
        self.dropped_counts: collections.Counter[str] = collections.Counter()
        self.bad_packet_counts: collections.Counter[str] = collections.Counter()

    def dropped(self, reason: str, n: int = 1) -> None:
        self.dropped_counts[reason] += n
        self._metrics.dropped(reason, n)

    def sensor_up(self, up: bool) -> None:
        self._metrics.sensor_up.set(1 if up else 0)
        if up:
            self._health.last_frame_at = time.monotonic()
        self._health.source_open = up
        self._health.source_seen |= up
        self._mailbox.post(Mailbox.SOURCE_CHANGED)

    def bytes_received(self, n: int) -> None:
        self._metrics.sensor_bytes.inc(n)

    def bad_packet(self, kind: str) -> None:
        self.bad_packet_counts[kind] += 1
        self._metrics.bad_packet(kind)

    def bytes_flushed(self, n: int) -> None:
        self._metrics.sensor_flushed_bytes.inc(n)
