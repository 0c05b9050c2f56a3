"""Where per-inference records go besides the metrics: a rotating JSON-lines file and stdout.

Metrics answer "how is it doing"; these answer "what did it say about frame 1234". A sink must never
stop the daemon: a full disk, a revoked permission or a closed pipe is counted (records not
written) and logged once when it starts and once when it ends, and inference goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from .backends.base import BatchResult
from .sources import Frame

log = logging.getLogger(__name__)

Record = dict[str, Any]
# Called with the sink's name and how many records it could not write.
LossCounter = Callable[[str, int], None]


class Sink(Protocol):
    name: str

    def write(self, records: Sequence[Record]) -> None:
        """Write a batch; never raises for I/O trouble (it is counted instead)."""
        ...

    def close(self) -> None: ...


def prediction_records(
    frames: Sequence[Frame],
    result: BatchResult,
    backend: str,
    finished: float,
    duration: float,
    class_names: Sequence[str] | None = None,
) -> list[Record]:
    """One record per frame of a batch: what was predicted, how fast, at what cost.

    ``class`` is the predicted class's index; ``class_name`` follows it when the model names its
    classes (the bundle's ``class_names``), so records of models without names are as they were.

    ``finished`` is the monotonic time the batch's result was ready, ``duration`` the backend call.
    Per-layer events appear only for frames whose counters were computed (all on the simulator, a
    sample on the board); energy is null until the board's first power window closes. ``energy_j``
    is total energy (floor included, model.statistics' convention) from ``energy_source``; the
    modelled dynamic energy and on-chip latency, with the device profile behind them, come with it
    on the simulator and are null where nothing models them.
    """
    to_wall = time.time() - time.monotonic()  # monotonic -> unix time, for people and log shippers
    classes = np.argmax(result.scores, axis=1)
    sampled = {} if result.layers is None else {int(i): k for k, i in enumerate(result.layers.frames.tolist())}
    records = []
    for index, frame in enumerate(frames):
        cls = int(classes[index])
        energy = None if result.frame_energy is None else float(result.frame_energy[index])
        record: Record = {
            "seq": frame.seq,
            "time": round(frame.received_at + to_wall, 6),  # unix time the frame was received
            "class": cls,
            **({} if class_names is None else {"class_name": class_names[cls]}),
            "score": result.scores[index, cls].item(),
            "latency_s": round(finished - frame.received_at, 6),
            "inference_s": round(duration, 6),
            "backend": backend,
            "energy_j": None if energy is None or math.isnan(energy) else energy,
            "energy_source": result.energy_source,
            "dynamic_energy_j": _value(result.frame_dynamic, index),
            "chip_latency_s": _value(result.frame_chip_s, index),
            "energy_profile": result.energy_profile,
        }
        if index in sampled and result.layers is not None:
            k = sampled[index]
            record["events"] = {layer: int(v[k]) for layer, v in result.layers.events.items()}
        if frame.label is not None:
            record["label"] = frame.label
        records.append(record)
    return records


def _value(values: np.ndarray | None, index: int) -> float | None:
    return None if values is None else float(values[index])


def encode_records(records: Sequence[Record]) -> bytes:
    """One compact JSON object per line; a batch is encoded (and written) at once."""
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()


def rotated_name(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def rotate(path: Path, keep: int) -> None:
    """``path`` -> ``path.1`` -> ... -> ``path.keep``; the oldest falls off (RotatingFileHandler's scheme)."""
    rotated_name(path, keep).unlink(missing_ok=True)
    for index in range(keep - 1, 0, -1):
        older = rotated_name(path, index)
        if older.exists():
            os.replace(older, rotated_name(path, index + 1))
    if path.exists():
        os.replace(path, rotated_name(path, 1))


class _LossReporter:
    """Counts lost records and logs the first failure and the recovery, not every batch."""

    def __init__(self, name: str, target: str, count: LossCounter) -> None:
        self._name, self._target, self._count = name, target, count
        self.failing = False

    def failed(self, error: OSError, n: int) -> None:
        self._count(self._name, n)
        if not self.failing:
            self.failing = True
            log.error(
                "cannot write predictions to %s (%s); counting them as lost and carrying on",
                self._target,
                error.strerror or error,
            )

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            log.info("writing predictions to %s again", self._target)


class JsonLinesSink:
    """Appends records to ``path``; rotates before a write would take it past ``max_bytes``.

    The file is reopened after any error, so a sink that lost its directory or its disk space
    resumes by itself once the cause is fixed.
    """

    name = "jsonl"

    def __init__(self, path: Path, max_bytes: int, keep: int, count_lost: LossCounter) -> None:
        self._path, self._max_bytes, self._keep = path, max_bytes, keep
        self._file: Any = None
        self._size = 0
        self._loss = _LossReporter(self.name, str(path), count_lost)

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        data = encode_records(records)
        try:
            self._write(data)
        except OSError as error:
            self._close_quietly()
            self._loss.failed(error, len(records))
            return
        self._loss.succeeded()

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "ab")  # noqa: SIM115 - held open across batches, closed in close()
            self._size = self._file.tell()
        if self._size and self._size + len(data) > self._max_bytes:
            self._file.close()
            self._file = None
            rotate(self._path, self._keep)
            self._file = open(self._path, "ab")  # noqa: SIM115
            self._size = 0
        self._file.write(data)
        self._file.flush()  # a reader (tail -f, a shipper) sees whole batches, and a crash loses at most one
        self._size += len(data)

    def _close_quietly(self) -> None:
        if self._file is not None:
            # a failure here was already counted; the next write reopens the file
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_quietly()


class StdoutSink:
    """One JSON object per line on stdout, flushed per batch, so ``| jq`` sees predictions live.

    A closed pipe (the reader went away) does not come back: the sink counts and stops writing.
    """

    name = "stdout"

    def __init__(self, count_lost: LossCounter, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._loss = _LossReporter(self.name, "stdout", count_lost)
        self._closed_pipe = False
        self._count = count_lost

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._closed_pipe:
            self._count(self.name, len(records))
            return
        try:
            self._stream.write(encode_records(records).decode())
            self._stream.flush()
        except BrokenPipeError as error:
            self._closed_pipe = True
            self._loss.failed(error, len(records))
            self._silence()
        except OSError as error:
            self._loss.failed(error, len(records))
        else:
            self._loss.succeeded()

    def _silence(self) -> None:
        """Point the dead stream at /dev/null so the interpreter's final flush does not fail again.

        This is what the Python docs advise for SIGPIPE (library/signal, "Note on SIGPIPE").
        """
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # not a real file (a test's StringIO): nothing will flush it at exit

    def close(self) -> None:
        """Stdout belongs to the process; only flush it."""
        if not self._closed_pipe:
            with contextlib.suppress(OSError):  # nothing left to report to
                self._stream.flush()
