"""Frame sources for the daemon: a sensor on a serial port, or a replay of stored frames.

Chosen by a SPEC string (see :mod:`.spec`) through an explicit table, not by discovery.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import SOURCE_DROP_REASONS, Frame, FrameSource, NullEvents, SourceEvents
from .replay_source import ReplaySource, load_frames
from .serial_source import DEFAULT_BACKOFF, Backoff, SerialSource
from .spec import (
    DEFAULT_BAUD,
    MNIST_TEST,
    VALID_FORMS,
    ReplaySpec,
    SerialSpec,
    SourceSpec,
    parse_source_spec,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BAUD",
    "MNIST_TEST",
    "SOURCE_DROP_REASONS",
    "VALID_FORMS",
    "Backoff",
    "Frame",
    "FrameSource",
    "NullEvents",
    "ReplaySource",
    "ReplaySpec",
    "SerialSource",
    "SerialSpec",
    "SourceEvents",
    "SourceSpec",
    "load_frames",
    "open_source",
    "parse_source_spec",
]


def open_source(
    spec: str | SourceSpec,
    events: SourceEvents | None = None,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    mnist_cache_dir: Path | None = None,
    frame_shape: tuple[int, ...] | None = None,
) -> FrameSource:
    """Build the source ``spec`` names. Loads replay data now; opens no port until ``batches()``.

    Raises ConfigError for a bad spec or port URL, DataError for a missing or malformed frames file.
    ``frame_shape`` (the model's input) is checked against replayed frames now, because every one
    of them would otherwise be dropped as bad_shape; a sensor's frames can only be checked as they come.
    """
    if isinstance(spec, str):
        spec = parse_source_spec(spec)
    if isinstance(spec, SerialSpec):
        return SerialSource(spec.url, baudrate=spec.baudrate, events=events, backoff=backoff)
    images, labels = load_frames(spec.path, mnist_cache_dir)
    if frame_shape is not None and images.shape[1:] != tuple(frame_shape):
        raise ConfigError(
            f"replay:{spec.path}: frames are {'x'.join(map(str, images.shape[1:]))}, the model takes "
            f"{'x'.join(map(str, frame_shape))}: replay frames of the model's input shape"
        )
    return ReplaySource(images, labels, rate=spec.rate, loop=spec.loop, events=events)
