"""Frame sources for the daemon: a sensor on a serial port, or a replay of stored frames.

Chosen by a SPEC string (see :mod:`.spec`) through an explicit table, not by discovery.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..frame_fit import mismatch
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
    frame_max: int = 255,
) -> FrameSource:
    """Build the source ``spec`` names. Loads replay data now; opens no port until ``batches()``.

    Raises ConfigError for a bad spec or port URL, DataError for a missing or malformed frames file.
    ``frame_shape`` and ``frame_max`` (the model's input and its largest value) are checked against
    replayed frames now (:mod:`edge_runtime.frame_fit`); a sensor's frames can only be checked as they come.
    """
    if isinstance(spec, str):
        spec = parse_source_spec(spec)
    if isinstance(spec, SerialSpec):
        return SerialSource(spec.url, baudrate=spec.baudrate, events=events, backoff=backoff)
    images, labels = load_frames(spec.path, mnist_cache_dir)
    problem = mismatch(images, frame_shape, frame_max) if frame_shape is not None else None
    if problem is not None:
        raise ConfigError(f"replay:{spec.path}: {problem}: replay frames of the model's input")
    return ReplaySource(images, labels, rate=spec.rate, loop=spec.loop, events=events)
