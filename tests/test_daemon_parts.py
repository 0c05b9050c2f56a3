"""The daemon's pieces on their own: queue, mailbox, sinks, records, the sampler and the board's energy."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from daemon_support import FakeDevice, wait_for

from edge_runtime.backends.akida_board import AkidaBoardBackend, PowerWindow, Reading, find_device
from edge_runtime.backends.base import BatchResult, LayerStats
from edge_runtime.errors import BackendError
from edge_runtime.mailbox import Mailbox
from edge_runtime.pipeline import FrameQueue
from edge_runtime.sinks import JsonLinesSink, StdoutSink, prediction_records, rotate
from edge_runtime.sources import Frame


def frame(seq: int, label: int | None = None, received_at: float = 10.0) -> Frame:
    return Frame(seq, np.zeros((2, 2, 1), np.uint8), received_at, label)


# --- queue and mailbox -------------------------------------------------------------------------


def test_a_full_queue_drops_the_oldest_frames() -> None:
    queue = FrameQueue(3, block=False)
    assert queue.put([frame(0), frame(1)]) == 0
    assert queue.put([frame(2)]) == 0
    assert queue.put([frame(3), frame(4)]) == 2
    assert [f.seq for f in queue.get_batch(8, timeout=0)] == [2, 3, 4]
    assert queue.put([frame(seq) for seq in range(10, 15)]) == 2  # more than fits in one call: the newest stay
    assert [f.seq for f in queue.get_batch(8, timeout=0)] == [12, 13, 14]


def test_get_batch_takes_at_most_max_items_and_does_not_wait_for_more() -> None:
    queue = FrameQueue(10, block=False)
    queue.put([frame(seq) for seq in range(5)])
    assert [f.seq for f in queue.get_batch(3, timeout=5)] == [0, 1, 2]
    assert [f.seq for f in queue.get_batch(3, timeout=5)] == [3, 4]


def test_put_wakes_a_waiting_get_batch_at_once() -> None:
    queue = FrameQueue(4, block=False)
    taken: list[list[Frame]] = []
    thread = threading.Thread(target=lambda: taken.append(queue.get_batch(4, timeout=30)))
    thread.start()
    wait_for(lambda: queue._getters, 5, "get_batch to wait (put only notifies then)", interval=0.001)
    queue.put([frame(7)])
    thread.join(5)
    assert not thread.is_alive() and [f.seq for f in taken[0]] == [7]


def test_backpressure_waits_for_room_instead_of_dropping() -> None:
    queue = FrameQueue(2, block=True)
    queue.put([frame(0)])
    done = threading.Event()

    def producer() -> None:
        assert queue.put([frame(1), frame(2), frame(3)]) == 0
        done.set()

    thread = threading.Thread(target=producer)
    thread.start()
    for expected in (0, 1):
        wait_for(lambda: len(queue) == 2, 5, "the producer to fill the queue", interval=0.001)
        # Not a wait for "still blocked": with two of its frames still without room, put cannot have returned.
        assert not done.is_set()
        assert [f.seq for f in queue.get_batch(1, timeout=0)] == [expected]
    assert done.wait(5)
    thread.join()
    assert [f.seq for f in queue.get_batch(4, timeout=0)] == [2, 3]


def test_a_waiting_getter_is_woken_by_frames_put_before_the_putter_blocks() -> None:
    """A put larger than the queue must hand over what fits before it waits for room, or both wait."""
    queue = FrameQueue(2, block=True)
    taken: list[int] = []

    def consumer() -> None:
        while len(taken) < 5:
            taken.extend(f.seq for f in queue.get_batch(2, timeout=30))

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    wait_for(lambda: queue._getters, 5, "the consumer to wait", interval=0.001)
    assert queue.put([frame(seq) for seq in range(5)]) == 0
    thread.join(10)
    assert not thread.is_alive() and taken == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("block", [True, False])
def test_a_closed_queue_drains_then_reports_drained(block: bool) -> None:
    queue = FrameQueue(4, block=block)
    queue.put([frame(0)])
    queue.close()
    assert queue.put([frame(1), frame(2)]) == 2  # refused
    assert not queue.drained
    assert [f.seq for f in queue.get_batch(4, timeout=5)] == [0]
    assert queue.drained and queue.get_batch(4, timeout=5) == []


def test_a_queue_closed_while_a_put_waits_refuses_the_rest() -> None:
    queue = FrameQueue(1, block=True)
    refused: list[int] = []
    thread = threading.Thread(target=lambda: refused.append(queue.put([frame(0), frame(1), frame(2)])))
    thread.start()
    wait_for(lambda: len(queue) >= 1, 5, "the first frame to be queued", interval=0.001)
    queue.close()
    thread.join(5)
    assert not thread.is_alive() and refused == [2]
    assert [f.seq for f in queue.get_batch(4, timeout=0)] == [0]


class BatchSource:
    """Yields ``batches`` of frames (seq numbers), then waits until closed, like a sensor gone quiet."""

    def __init__(self, batches: list[list[int]]) -> None:
        self._batches = batches
        self._closed = threading.Event()

    def batches(self):
        for seqs in self._batches:
            yield [frame(seq) for seq in seqs]
        self._closed.wait(30)

    def close(self) -> None:
        self._closed.set()


class GatedBackend:
    """Infers zeros, but only after ``gate`` is set: frames pile up in the queue meanwhile."""

    name = "simulator"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.seen: list[int] = []

    def infer(self, images: np.ndarray) -> BatchResult:
        assert self.gate.wait(30)
        self.seen.append(len(images))
        return BatchResult(scores=np.zeros((len(images), 10), np.int32))

    def close(self) -> None:
        pass


def test_the_pipeline_accounts_for_every_frame_of_multi_frame_batches_into_a_small_queue() -> None:
    """Batches of 5 into a queue of 3: what does not fit is dropped oldest-first and counted per frame."""
    from prometheus_client import CollectorRegistry

    from edge_runtime.daemon import DROP_REASONS
    from edge_runtime.health import Health
    from edge_runtime.metrics import Metrics
    from edge_runtime.pipeline import Pipeline
    from edge_runtime.sdnotify import Notifier

    registry = CollectorRegistry()
    metrics = Metrics(registry, DROP_REASONS)
    backend, mailbox = GatedBackend(), Mailbox()
    source = BatchSource([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]])
    pipeline = Pipeline(
        source,
        backend,
        fallback=lambda: backend,
        metrics=metrics,
        health=Health(),
        mailbox=mailbox,
        notifier=Notifier({}),
        sinks=[],
        make_records=prediction_records,
        input_shape=(2, 2, 1),
        queue_size=3,
        max_batch=2,
        backpressure=False,
    )
    pipeline.start()
    try:
        wait_for(
            lambda: registry.get_sample_value("edge_frames_received_total") == 12,
            30,
            "all 12 frames received",
            interval=0.001,
        )
        backend.gate.set()  # the inference thread holds at most one batch (2 frames) it took before the gate
    finally:
        totals = pipeline.stop(timeout=30)
        mailbox.close()
    get = registry.get_sample_value
    assert totals.received == 12 == get("edge_frames_received_total")
    assert totals.inferred == sum(backend.seen) == get("edge_inferences_total", {"backend": "simulator"})
    assert totals.dropped == {"queue_full": 12 - totals.inferred}
    assert get("edge_frames_dropped_total", {"reason": "queue_full"}) == 12 - totals.inferred
    assert 3 <= totals.inferred <= 5  # the 3 newest frames, plus what was taken before the gate


def test_mailbox_delivers_codes_in_order_and_times_out() -> None:
    mailbox = Mailbox()
    try:
        assert mailbox.wait(0) == b""
        mailbox.post(1)
        mailbox.post(Mailbox.SOURCE_CHANGED)
        assert mailbox.wait(5) == bytes([1, Mailbox.SOURCE_CHANGED])
    finally:
        mailbox.close()


# --- records and sinks -------------------------------------------------------------------------


def batch_result() -> BatchResult:
    scores = np.array([[1, 9, 3], [7, 0, 2]], np.int32)
    layers = LayerStats(np.array([1]), {"conv0": np.array([12])}, {"conv0": np.array([0.9])}, "simulator_sample")
    return BatchResult(scores, frame_energy=np.array([np.nan, 4e-4]), energy_source="power_meter", layers=layers)


def test_records_say_what_was_predicted_how_fast_and_at_what_cost() -> None:
    records = prediction_records(
        [frame(5, label=1, received_at=9.0), frame(6, received_at=9.5)], batch_result(), "akida", 10.0, 0.25
    )
    first, second = records
    assert first["seq"] == 5 and first["class"] == 1 and first["score"] == 9 and first["label"] == 1
    assert first["latency_s"] == 1.0 and first["inference_s"] == 0.25 and first["backend"] == "akida"
    assert first["energy_j"] is None and "events" not in first  # no window closed yet; not sampled
    assert second["class"] == 0 and second["energy_j"] == 4e-4 and second["energy_source"] == "power_meter"
    assert second["events"] == {"conv0": 12} and "label" not in second
    assert second["time"] - first["time"] == pytest.approx(0.5, abs=1e-5)
    assert "class_name" not in first  # a model without class names: records as they always were
    json.dumps(records)  # plain JSON types only


def test_records_name_the_class_when_the_model_names_its_classes() -> None:
    frames = [frame(5, received_at=9.0), frame(6, received_at=9.5)]
    first, second = prediction_records(frames, batch_result(), "akida", 10.0, 0.25, ("up", "down", "left"))
    assert (first["class"], first["class_name"], second["class"], second["class_name"]) == (1, "down", 0, "up")
    assert list(first)[:4] == ["seq", "time", "class", "class_name"]


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    lost: list[tuple[str, int]] = []
    sink = JsonLinesSink(path, max_bytes=4096, keep=2, count_lost=lambda s, n: lost.append((s, n)))
    record = {"seq": 0, "pad": "x" * 1000}
    for seq in range(20):
        sink.write([{**record, "seq": seq}])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "p.jsonl.1", "p.jsonl.2"]
    seqs = [
        json.loads(line)["seq"]
        for name in ("p.jsonl.2", "p.jsonl.1", "p.jsonl")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert seqs == list(range(seqs[0], 20)) and len(seqs) >= 8  # newest kept, in order, none torn
    assert all((tmp_path / n).stat().st_size <= 4096 for n in ("p.jsonl", "p.jsonl.1", "p.jsonl.2"))
    assert lost == []


def test_rotate_without_existing_files_is_harmless(tmp_path: Path) -> None:
    rotate(tmp_path / "none.jsonl", keep=3)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    lost: list[int] = []
    sink = JsonLinesSink(Path("/dev/full"), max_bytes=1 << 20, keep=1, count_lost=lambda s, n: lost.append(n))
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            sink.write([{"seq": 1}, {"seq": 2}])
    sink.close()
    assert lost == [2, 2, 2]
    errors = [r for r in caplog.records if "cannot write predictions to /dev/full" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()


def test_a_sink_recovers_when_its_directory_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the directory should be")
    lost: list[int] = []
    sink = JsonLinesSink(blocker / "p.jsonl", 1 << 20, 1, lambda s, n: lost.append(n))
    with caplog.at_level(logging.INFO):
        sink.write([{"seq": 1}])
        blocker.unlink()
        sink.write([{"seq": 2}])
    sink.close()
    assert lost == [1]
    assert (blocker / "p.jsonl").read_text() == '{"seq":2}\n'
    assert any("writing predictions to" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)


def test_stdout_sink_flushes_lines_and_survives_a_closed_pipe() -> None:
    buffer = io.StringIO()
    StdoutSink(lambda s, n: None, buffer).write([{"seq": 1}, {"seq": 2}])
    assert buffer.getvalue() == '{"seq":1}\n{"seq":2}\n'

    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    lost: list[tuple[str, int]] = []
    sink = StdoutSink(lambda s, n: lost.append((s, n)), stream)
    sink.write([{"seq": 1}])
    sink.write([{"seq": 2}, {"seq": 3}])
    sink.close()
    stream.close()
    assert lost == [("stdout", 1), ("stdout", 2)]


# --- the board's energy accounting -------------------------------------------------------------


def readings(start_ms: int, count: int, watts: float) -> list[Reading]:
    return [Reading(start_ms + 141 * i, watts) for i in range(count)]


def test_back_to_back_inference_is_mean_power_times_window_over_inferences() -> None:
    window = PowerWindow(1.0, started=0.0)
    assert window.add(readings(0, 4, 1.0), 50, busy_s=0.5, now=0.5, floor_watts=0.9) is None  # window still open
    closed = window.add(readings(564, 4, 1.2), 50, busy_s=0.5, now=1.0, floor_watts=0.9)
    assert closed is not None and closed.inferences == 100
    assert closed.board_watts == pytest.approx(1.1)
    assert closed.per_inference == pytest.approx(1.1 * 1.0 / 100)


def test_idle_floor_power_is_not_charged_to_inferences() -> None:
    window = PowerWindow(1.0, started=0.0)
    closed = window.add(readings(0, 8, 1.0), 100, busy_s=0.25, now=1.0, floor_watts=0.9)
    assert closed.per_inference == pytest.approx((1.0 * 1.0 - 0.9 * 0.75) / 100)


def test_repeated_readings_count_once_and_a_window_without_readings_stays_open() -> None:
    window = PowerWindow(0.5, started=0.0)
    assert window.add([], 10, 0.6, now=0.6, floor_watts=0.0) is None  # meter not updated yet
    first = readings(0, 3, 2.0)
    closed = window.add(first + first + [Reading(282, 2.0)], 10, 0.1, now=0.7, floor_watts=0.0)
    assert closed.inferences == 20 and closed.board_watts == pytest.approx(2.0)
    assert window.add(first, 5, 0.6, now=1.3, floor_watts=0.0) is None  # only old readings: still open


def test_an_idle_window_is_discarded() -> None:
    window = PowerWindow(0.5, started=0.0)
    assert window.add(readings(0, 5, 1.0), 0, 0.0, now=1.0, floor_watts=0.9) is None
    assert window.last is None


class FakeModel:
    """akida.Model's surface: ``map``, ``forward`` and ``power_events``; outputs from a stand-in function."""

    def __init__(self) -> None:
        self.device = None
        self.power_events: list[SimpleNamespace] = []

    def map(self, device) -> None:
        self.device = device

    def forward(self, images: np.ndarray) -> np.ndarray:
        if self.device.broken:
            raise RuntimeError("PCIe link down")
        return images.reshape(len(images), 1, 1, -1)[..., :3].astype(np.int32)


class NoSampler:
    def sample(self, images: np.ndarray) -> None:
        return None


def test_board_backend_reports_power_meter_energy_per_window() -> None:
    now = [0.0]
    device = FakeDevice(lambda: now[0])
    backend = AkidaBoardBackend(
        Path("m.fbz"),
        device,
        NoSampler(),
        power_window_s=0.5,
        load_model=lambda path: FakeModel(),
        clock=lambda: now[0],
    )
    assert device.soc.power_measurement_enabled is True
    images = np.arange(8 * 3, dtype=np.uint8).reshape(8, 1, 1, 3)

    now[0] = 0.3
    first = backend.infer(images)  # clock: 0.3 -> 0.3, busy 0
    assert first.energy is None and np.isnan(first.frame_energy).all()
    assert first.scores.tolist() == images.reshape(8, 3).tolist()
    now[0] = 0.6
    second = backend.infer(images)
    assert second.energy is not None and second.energy.source == "power_meter"
    assert len(second.energy.per_inference) == 16 and second.energy.board_watts == pytest.approx(1.0)
    # 0.6 s at 1 W, all of it idle at a 0.9 W floor except no busy time: (0.6 - 0.54) / 16
    assert second.energy.per_inference[0] == pytest.approx((0.6 - 0.9 * 0.6) / 16)
    assert second.frame_energy[0] == second.energy.per_inference[0]


def test_board_without_a_soc_gives_outputs_but_no_energy() -> None:
    backend = AkidaBoardBackend(
        Path("m.fbz"),
        FakeDevice(lambda: 0.0, with_soc=False),
        NoSampler(),
        power_window_s=0.5,
        load_model=lambda path: FakeModel(),
    )
    result = backend.infer(np.zeros((2, 1, 1, 3), np.uint8))
    assert result.energy is None and result.frame_energy is None


def test_board_failures_are_backend_errors() -> None:
    device = FakeDevice(lambda: 0.0)
    backend = AkidaBoardBackend(
        Path("m.fbz"), device, NoSampler(), power_window_s=0.5, load_model=lambda path: FakeModel()
    )
    device.broken = True
    with pytest.raises(BackendError, match="Akida device fake AKD1000: PCIe link down"):
        backend.infer(np.zeros((1, 1, 1, 3), np.uint8))

    def unmappable(path: Path) -> FakeModel:
        raise RuntimeError("model does not fit")

    with pytest.raises(BackendError, match=r"cannot map m\.fbz on Akida device fake AKD1000: model does not fit"):
        AkidaBoardBackend(Path("m.fbz"), device, NoSampler(), power_window_s=0.5, load_model=unmappable)
    with pytest.raises(BackendError, match="no Akida device found"):
        find_device(lambda: [])


def test_no_real_board_is_a_backend_error() -> None:
    """What ``auto`` falls back on: on a host without a board akida.devices() is empty."""
    import akida

    if akida.devices():
        assert find_device() is akida.devices()[0]
    else:
        with pytest.raises(BackendError, match="no Akida device"):
            find_device()
