"""Frames from a file or the MNIST test set, optionally paced and looped.

The replay source is the daemon's input for demos and accuracy runs (MNIST labels ride along), the
test double for the serial source, and the frame supplier of the sensor emulator.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import files
from ..errors import DataError
from .base import Frame, NullEvents, SourceEvents
from .spec import MNIST_TEST


def load_frames(path: str, mnist_cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images as (N, H, W, C) uint8 and their labels (MNIST) or None (an .npy file)."""
    if path == MNIST_TEST:
        from ..mnist import load_mnist  # lazy: only replay of MNIST needs it (and maybe a download)

        mnist = load_mnist(mnist_cache_dir)
        return files.as_hwc(mnist.test_images, MNIST_TEST), mnist.test_labels
    return files.load_frames(path), None


def next_due(due: float, period: float, now: float) -> float:
    """When the frame after the one due at ``due`` is due.

    Counting from the schedule, not from when the last frame went out, keeps per-frame overhead
    from adding up (no drift). If the consumer stalled for more than a period, restart the schedule
    at ``now`` rather than bursting out frames to catch up, as a real sensor would not either.
    """
    following = due + period
    return following if following >= now - period else now


class ReplaySource:
    """Plays ``images`` (N, H, W[, C]) in order; ``rate`` None means as fast as they are taken."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        rate: float | None = None,
        loop: bool = False,
        events: SourceEvents | None = None,
    ) -> None:
        self._images = files.as_hwc(images)
        if labels is not None and len(labels) != len(self._images):
            raise DataError(f"{len(labels)} labels for {len(self._images)} frames")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._labels = labels
        self._period = None if rate is None else 1.0 / rate
        self._loop = loop
        self._events = events or NullEvents()
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        self._events.sensor_up(True)
        count = len(self._images)
        indices = itertools.cycle(range(count)) if self._loop else range(count)
        due = time.monotonic()
        for seq, index in enumerate(indices):
            if self._wait_until(due):
                return
            if self._period is not None:
                due = next_due(due, self._period, time.monotonic())
            label = None if self._labels is None else int(self._labels[index])
            yield Frame(seq, self._images[index], time.monotonic(), label)

    def batches(self) -> Iterator[list[Frame]]:
        """:meth:`frames` one at a time: a replay has no reads to group, and a paced one must not bunch."""
        for frame in self.frames():
            yield [frame]

    def close(self) -> None:
        self._closed.set()

    def _wait_until(self, due: float) -> bool:
        """Sleep until ``due`` unless closed first; True if closed."""
        if self._period is None:
            return self._closed.is_set()
        return self._closed.wait(max(0.0, due - time.monotonic()))
