"""A reload whose swap timed out never applies, and the daemon and the pipeline agree on what serves.

The race (issue 15, item 3): the inference thread takes the swap request, the caller's wait expires
while the new backend is still being built, the daemon reports "rejected" and closes the new sinks,
and then the thread installed the new backend, shape and sinks anyway. Here the build is held on an
event until the caller has given up, so the losing order is forced, not hoped for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from edge_runtime.backends.base import BatchResult
from edge_runtime.daemon import DROP_REASONS
from edge_runtime.errors import BackendError
from edge_runtime.health import Health
from edge_runtime.mailbox import Mailbox
from edge_runtime.metrics import Metrics
from edge_runtime.pipeline import Pipeline
from edge_runtime.sdnotify import Notifier
from edge_runtime.sinks import prediction_records
from edge_runtime.sources import Frame


class QuietSource:
    """A sensor that sends nothing until closed: the inference loop idles and applies swaps."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def batches(self) -> Iterator[list[Frame]]:
        self._closed.wait(60)
        return iter(())

    def close(self) -> None:
        self._closed.set()


class NamedBackend:
    """Infers zeros under a given name and records whether it was closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = threading.Event()

    def infer(self, images: np.ndarray) -> BatchResult:
        return BatchResult(scores=np.zeros((len(images), 10), np.int32))

    def close(self) -> None:
        self.closed.set()


class RecordingSink:
    def __init__(self) -> None:
        self.closed = 0

    def write(self, records: object) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


@contextmanager
def pipeline_with(backend: NamedBackend, sinks: list[RecordingSink]) -> Iterator[Pipeline]:
    mailbox = Mailbox()
    pipeline = Pipeline(
        QuietSource(),
        backend,
        fallback=lambda: backend,
        metrics=Metrics(CollectorRegistry(), DROP_REASONS),
        health=Health(),
        mailbox=mailbox,
        notifier=Notifier({}),
        sinks=sinks,
        make_records=prediction_records,
        input_shape=(2, 2, 1),
        queue_size=4,
        max_batch=2,
        backpressure=False,
    )
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.stop(timeout=30)
        mailbox.close()


def swap_that_times_out_mid_build(
    pipeline: Pipeline, build: NamedBackend, shape: tuple[int, ...], sinks: list[RecordingSink]
) -> threading.Event:
    """Call ``swap`` so that its wait expires while the inference thread is building ``build``.

    The build waits until the caller has given up, so the order is forced. If the thread did not
    even take the request before the wait ended (a busy host), the request was withdrawn untouched
    and the attempt is repeated with a longer wait. Returns the event that lets the build finish.
    """
    release = threading.Event()
    for timeout in (1.0, 4.0, 16.0):
        taken = threading.Event()

        def slow_build(taken: threading.Event = taken) -> NamedBackend:
            taken.set()
            assert release.wait(60)
            return build

        with pytest.raises(BackendError, match="did not take the new model"):
            pipeline.swap(slow_build, lambda: build, shape, sinks, timeout)
        if taken.is_set():
            return release
    raise AssertionError("the inference thread never took a swap request")


def test_a_swap_that_timed_out_is_closed_unused_and_the_old_backend_keeps_serving() -> None:
    old, new = NamedBackend("simulator"), NamedBackend("onnx")
    old_sink, new_sink = RecordingSink(), RecordingSink()
    with pipeline_with(old, [old_sink]) as pipeline:
        release = swap_that_times_out_mid_build(pipeline, new, (4, 4, 1), [new_sink])
        release.set()
        assert new.closed.wait(30), "the backend built after the timeout was never closed"
        assert pipeline.backend_name == "simulator"
        assert not old.closed.is_set() and old_sink.closed == 0
        assert new_sink.closed == 0  # the caller's to close: it was never installed
        # The next swap is applied normally and replaces the old backend (closing it).
        assert pipeline.swap(lambda: NamedBackend("onnx"), lambda: old, (2, 2, 1), None, timeout=30) == "onnx"
        assert old.closed.is_set()


def test_a_swap_applied_just_as_the_wait_expires_is_reported_as_applied() -> None:
    """The other order: built and installed, then the caller looks. It must not say "timed out"."""
    old = NamedBackend("simulator")
    with pipeline_with(old, []) as pipeline:
        built = NamedBackend("onnx")
        assert pipeline.swap(lambda: built, lambda: old, (2, 2, 1), None, timeout=30) == "onnx"
        assert old.closed.is_set() and not built.closed.is_set()
