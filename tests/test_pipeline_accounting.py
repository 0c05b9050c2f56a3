"""The pipeline's own drop reasons and failure paths, each made to happen: ``bad_shape``,
``inference_error`` (the simulator failing, or a failed fallback) and a drain that does not finish.

In the daemon's end-to-end tests these reasons are added into the totals but are always 0, so a
wrong count there could not show. Here a finite source feeds a pipeline whose backend fails on
chosen frames (``max_batch=1``: one frame a call, so which frames fail is exact), and every frame is
checked to be inferred once or counted once under the right reason. The last test sends frames of
the wrong shape through a real pty to the whole daemon.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from daemon_support import BundleUnderTest, PtyWriter, build_bundle, scrape, value, wait_for
from prometheus_client import CollectorRegistry
from test_daemon import check_predictions, read_log, ready, running, wait_accounted

from edge_runtime.backends.base import Backend, BatchResult
from edge_runtime.daemon import DROP_REASONS
from edge_runtime.emulator import PtyPort
from edge_runtime.errors import BackendError, ConfigError
from edge_runtime.health import Health, SourceListener
from edge_runtime.mailbox import Mailbox
from edge_runtime.metrics import Metrics
from edge_runtime.pipeline import Pipeline, Totals
from edge_runtime.protocol import DELIMITER, encode_frame
from edge_runtime.sdnotify import Notifier
from edge_runtime.sinks import Record, prediction_records
from edge_runtime.sources import Frame

SHAPE = (2, 2, 1)


def frame(seq: int, shape: tuple[int, ...] = SHAPE) -> Frame:
    """Pixel value ``seq``: the backends below predict class ``seq % 10`` from it."""
    return Frame(seq, np.full(shape, seq, np.uint8), 0.0)


class FiniteSource:
    """Yields its batches and ends, like a replay that ran out (so ``Pipeline.stop`` drains it all)."""

    def __init__(self, batches: list[list[Frame]]) -> None:
        self._batches = batches

    def batches(self) -> Iterator[list[Frame]]:
        yield from self._batches

    def close(self) -> None:
        pass


class FailingBackend:
    """Predicts ``pixel % 10``; raises BackendError for a batch holding a frame whose pixel is in ``fail``."""

    def __init__(self, name: str, fail: frozenset[int] = frozenset()) -> None:
        self.name, self._fail = name, fail
        self.closed = False

    def infer(self, images: np.ndarray) -> BatchResult:
        seqs = images.reshape(len(images), -1)[:, 0].astype(int)
        if set(seqs.tolist()) & self._fail:
            raise BackendError(f"{self.name}: DMA timeout")
        return BatchResult(scores=np.eye(10, dtype=np.int32)[seqs % 10])

    def close(self) -> None:
        self.closed = True


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: Sequence[Record]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        pass


def build(
    source: FiniteSource,
    backend: Backend,
    fallback: Callable[[], Backend],
    registry: CollectorRegistry,
    mailbox: Mailbox,
    sinks: list[ListSink],
    queue_size: int = 64,
    max_batch: int = 1,
) -> Pipeline:
    """A pipeline as the daemon builds one, on a registry, mailbox and sinks of the test's own."""
    return Pipeline(
        source,
        backend,
        fallback=fallback,
        metrics=Metrics(registry, DROP_REASONS),
        health=Health(),
        mailbox=mailbox,
        notifier=Notifier({}),
        sinks=sinks,
        make_records=prediction_records,
        input_shape=SHAPE,
        queue_size=queue_size,
        max_batch=max_batch,
        backpressure=True,
    )


def run(
    batches: list[list[Frame]], backend: Backend, fallback: Callable[[], Backend], max_batch: int = 1
) -> tuple[Totals, CollectorRegistry, ListSink]:
    """Serve ``batches`` to the end; the accounting, the metrics and what reached the sink."""
    registry, mailbox, sink = CollectorRegistry(), Mailbox(), ListSink()
    pipeline = build(FiniteSource(batches), backend, fallback, registry, mailbox, [sink], max_batch=max_batch)
    pipeline.start()
    try:
        totals = pipeline.stop(timeout=60)  # the source is finite: stop waits for it, then drains the queue
    finally:
        mailbox.close()
    return totals, registry, sink


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("edge_frames_dropped_total", {"reason": reason})


def counter(registry: CollectorRegistry, name: str, backend: str) -> float:
    return registry.get_sample_value(name, {"backend": backend})


def no_fallback() -> Backend:
    raise AssertionError("no fallback expected")


def test_frames_of_another_shape_are_dropped_as_bad_shape_and_the_rest_inferred() -> None:
    wrong = {3, 4, 9}
    batches = [
        [frame(s, (3, 3, 1) if s in wrong else SHAPE) for s in range(0, 6)],
        [frame(s, (2, 2, 3) if s in wrong else SHAPE) for s in range(6, 12)],
        [frame(12, (1, 1, 1))],
    ]  # a batch with no frame of the model's shape
    totals, registry, sink = run(batches, FailingBackend("simulator"), no_fallback, max_batch=8)
    assert totals.received == 13
    assert totals.dropped == {"bad_shape": 4} == {"bad_shape": dropped(registry, "bad_shape")}
    assert totals.inferred == 9 == counter(registry, "edge_inferences_total", "simulator")
    assert sorted(r["seq"] for r in sink.records) == sorted(set(range(12)) - wrong)
    assert all(r["class"] == r["seq"] % 10 for r in sink.records)


def test_a_simulator_failure_drops_its_batch_as_inference_error_and_inference_goes_on() -> None:
    totals, registry, sink = run(
        [[frame(s) for s in range(10)]], FailingBackend("simulator", frozenset({2, 7})), no_fallback
    )
    assert totals.dropped == {"inference_error": 2} == {"inference_error": dropped(registry, "inference_error")}
    assert totals.inferred == 8 and totals.received == 10
    assert [r["seq"] for r in sink.records] == [0, 1, 3, 4, 5, 6, 8, 9]
    assert counter(registry, "edge_backend_errors_total", "simulator") == 2
    assert counter(registry, "edge_backend_fallbacks_total", "simulator") == 0  # the simulator has no fallback


@pytest.mark.parametrize(
    "failure",
    [BackendError("simulator: out of memory"), ConfigError("unknown backend 'simulator'")],
    ids=["backend", "config"],
)
def test_a_failed_fallback_drops_the_batch_as_inference_error(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    board = FailingBackend("akida", frozenset({5}))
    built: list[int] = []

    def fallback() -> Backend:
        built.append(1)
        raise failure

    with caplog.at_level(logging.ERROR):
        totals, registry, sink = run([[frame(s) for s in range(6)]], board, fallback)
    assert built == [1] and board.closed
    assert totals.dropped == {"inference_error": 1} == {"inference_error": dropped(registry, "inference_error")}
    assert [r["seq"] for r in sink.records] == [0, 1, 2, 3, 4] and {r["backend"] for r in sink.records} == {"akida"}
    assert counter(registry, "edge_backend_errors_total", "akida") == 1
    assert counter(registry, "edge_backend_errors_total", "simulator") == 1  # the fallback's failure
    assert counter(registry, "edge_backend_fallbacks_total", "akida") == 1
    assert any(
        "fallback to the simulator failed" in r.getMessage() and str(failure) in r.getMessage() for r in caplog.records
    )


def test_a_board_failure_re_runs_its_batch_on_the_fallback_and_serves_on() -> None:
    board, simulator = FailingBackend("akida", frozenset({3})), FailingBackend("simulator")
    totals, registry, sink = run([[frame(s) for s in range(6)]], board, lambda: simulator)
    assert totals.dropped == {} and totals.inferred == 6
    assert [(r["seq"], r["backend"]) for r in sink.records] == [
        (0, "akida"),
        (1, "akida"),
        (2, "akida"),
        (3, "simulator"),
        (4, "simulator"),
        (5, "simulator"),
    ]
    assert all(r["class"] == r["seq"] % 10 for r in sink.records)  # the failed frame was re-run, not lost
    assert registry.get_sample_value("edge_backend_active", {"backend": "simulator"}) == 1
    assert registry.get_sample_value("edge_backend_active", {"backend": "akida"}) == 0
    assert counter(registry, "edge_backend_fallbacks_total", "akida") == 1 and board.closed


def test_the_source_listener_counts_source_drops_under_their_reason() -> None:
    registry, mailbox = CollectorRegistry(), Mailbox()
    try:
        listener = SourceListener(Metrics(registry, DROP_REASONS), Health(), mailbox)
        listener.dropped("corrupt")
        listener.dropped("seq_gap", 4)
    finally:
        mailbox.close()
    assert listener.dropped_counts == {"corrupt": 1, "seq_gap": 4}
    assert (dropped(registry, "corrupt"), dropped(registry, "seq_gap")) == (1, 4)


class HungBackend:
    """Never returns from ``infer`` until released: an accelerator that stopped answering."""

    name = "akida"

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def infer(self, images: np.ndarray) -> BatchResult:
        self.entered.set()
        assert self.release.wait(60), "never released"
        return BatchResult(scores=np.zeros((len(images), 10), np.int32))

    def close(self) -> None:
        pass


def test_stop_gives_up_on_a_drain_that_does_not_finish_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    backend = HungBackend()
    registry, mailbox = CollectorRegistry(), Mailbox()
    pipeline = build(FiniteSource([[frame(0)], [frame(1)]]), backend, no_fallback, registry, mailbox, [], queue_size=4)
    pipeline.start()
    assert backend.entered.wait(30), "the inference thread never called the backend"
    result: list[Totals] = []
    stopper = threading.Thread(target=lambda: result.append(pipeline.stop(timeout=0.2)), daemon=True)
    with caplog.at_level(logging.ERROR):
        stopper.start()
        stopper.join(30)  # bounds a hang only: stop() must return after its own 0.2 s timeout
        alive = stopper.is_alive()
        backend.release.set()
    mailbox.close()
    assert not alive, "stop() did not return while the backend hung"
    assert result[0].inferred == 0 and result[0].received == 2
    assert any("did not finish draining" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, mnist_data) -> BundleUnderTest:
    images, labels = mnist_data.test_images[:200, :, :, None], mnist_data.test_labels[:200]
    return build_bundle(tmp_path_factory.mktemp("shape") / "a", 1, images, labels)


def test_the_daemon_counts_frames_of_the_wrong_shape_from_a_sensor(
    tmp_path: Path, mnist_data, bundle: BundleUnderTest
) -> None:
    """A sensor sends 14x14 frames among its 28x28 ones: each is one ``bad_shape``, the rest are served right."""
    images = mnist_data.test_images[:120, :, :, None]
    small = set(range(7, 120, 8))
    chunks = [encode_frame(seq, image[::2, ::2] if seq in small else image) for seq, image in enumerate(images)]
    log = tmp_path / "predictions.jsonl"
    with (
        PtyPort() as port,
        running(
            {
                "model.bundle": str(bundle.path),
                "source.spec": f"serial:{port.path}",
                "source.queue_size": 256,
                "predictions.path": str(log),
            }
        ) as daemon,
    ):
        ready(daemon)
        writer = PtyWriter(port).send_chunks([DELIMITER, *chunks])
        samples = wait_accounted(daemon, log, len(images))
        writer.join(10)
        wait_for(
            lambda: value(scrape(daemon.url), "edge_frames_received_total") == len(images), 10, "every frame received"
        )
    records = read_log(log)
    assert value(samples, "edge_frames_dropped_total", reason="bad_shape") == len(small)
    assert value(samples, "edge_frames_dropped_total", reason="corrupt") == 0
    assert sorted(r["seq"] for r in records) == sorted(set(range(len(images))) - small)
    check_predictions(records, bundle, images)


class GatedSource(FiniteSource):
    """Yields its first batch, then waits for ``gate`` before the rest."""

    def __init__(self, batches: list[list[Frame]]) -> None:
        super().__init__(batches)
        self.gate = threading.Event()

    def batches(self) -> Iterator[list[Frame]]:
        first, *rest = self._batches
        yield first
        assert self.gate.wait(60)
        yield from rest


def test_class_names_follow_the_model_across_a_swap() -> None:
    """Frames inferred before the swap are named by index (a bundle without names), those after by
    the new bundle's names: in the records and in the class label of the predictions counter."""
    names = tuple(f"c{k}" for k in range(10))
    registry, mailbox, sink = CollectorRegistry(), Mailbox(), ListSink()
    source = GatedSource([[frame(1), frame(2)], [frame(3), frame(13)]])
    backend = FailingBackend("simulator")
    pipeline = build(source, backend, no_fallback, registry, mailbox, [sink], max_batch=2)
    pipeline.start()
    try:
        wait_for(lambda: len(sink.records) == 2, 30, "the first batch in the sink")
        assert pipeline.swap(lambda: FailingBackend("onnx"), no_fallback, SHAPE, None, 30, names) == "onnx"
        source.gate.set()
        pipeline.stop(timeout=60)
    finally:
        mailbox.close()
    assert [(r["class"], r.get("class_name")) for r in sink.records] == [(1, None), (2, None), (3, "c3"), (3, "c3")]
    get = registry.get_sample_value
    assert get("edge_predictions_total", {"class": "1"}) == 1 and get("edge_predictions_total", {"class": "c3"}) == 2
    assert get("edge_predictions_total", {"class": "3"}) is None
