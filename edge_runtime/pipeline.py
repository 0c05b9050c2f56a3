"""The frame path's threads: source -> bounded queue -> inference -> metrics and sinks.

Threads and what they own:

* **reader**: iterates the frame source and puts frames in the queue (a serial source reads and
  decodes in a child process of its own, see sources/serial_source.py). A sensor does not wait for
  us, so when the queue is full the *oldest* frame is dropped (a leaky queue, like GStreamer's
  ``leaky=downstream``) and counted as ``queue_full``; fresh frames are worth more than old ones.
  A replay without a rate has nothing to lose by waiting, so it gets back-pressure instead.
* **inference**: takes up to ``max_batch`` frames at a time, runs the backend, and hands results
  to the metrics and sinks. It alone touches the backend (an Akida device is not documented as
  thread-safe), so fallback and reload swaps happen here, between batches. It also sends the
  systemd watchdog ping, so a hung accelerator stops the pings and systemd restarts us.

The HTTP server (http_server.py) runs a thread of its own. Other threads talk to the daemon's main
thread through a :class:`~.mailbox.Mailbox` (a pipe, so a signal handler and a worker thread can
both post to it without locks).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend, BatchResult
from .errors import BackendError, ConfigError
from .health import Health
from .mailbox import Mailbox
from .metrics import Metrics
from .sdnotify import Notifier
from .sinks import Record, Sink
from .sources import Frame, FrameSource
from .timeouts import STOP_TIMEOUT_S

log = logging.getLogger(__name__)

# Why the pipeline itself loses frames (the sources add their own reasons).
PIPELINE_DROP_REASONS = ("queue_full", "bad_shape", "inference_error")
# How often an idle inference loop wakes up (to ping the watchdog and apply swaps) without a watchdog.
IDLE_WAKE_S = 0.5


class FrameQueue:
    """Bounded FIFO between the reader and inference threads.

    ``put`` drops the oldest frames when full (``block=False``) or waits for room (``block=True``).
    After :meth:`close`, ``put`` refuses and ``get_batch`` drains what is left.
    """

    def __init__(self, capacity: int, block: bool) -> None:
        self.capacity = capacity
        self._block = block
        self._items: collections.deque[Frame] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        # Threads waiting in get_batch: put() notifies only then (Condition.notify costs ~1 us a frame).
        self._getters = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frames: Sequence[Frame]) -> int:
        """Enqueue ``frames`` in order; return how many frames were dropped to make room (or refused, once closed).

        Without blocking, the newest ``capacity`` frames stay, whichever call brought them.
        """
        with self._lock:
            items = self._items
            if not self._block:
                if self._closed:
                    return len(frames)
                items.extend(frames)
                dropped = max(0, len(items) - self.capacity)
                for _ in range(dropped):
                    items.popleft()
            else:  # a replay without a rate, in single-frame lists today; any length works
                dropped = 0
                for index, frame in enumerate(frames):
                    while len(items) >= self.capacity and not self._closed:
                        self._wake_getter()  # one may be waiting for the frames already in
                        self._not_full.wait()
                    if self._closed:
                        return len(frames) - index
                    items.append(frame)
            self._wake_getter()
            return dropped

    def _wake_getter(self) -> None:
        if self._getters:
            self._not_empty.notify()

    def get_batch(self, max_items: int, timeout: float) -> list[Frame]:
        """Up to ``max_items`` frames: waits up to ``timeout`` for the first, never for more."""
        with self._lock:
            if not self._items and not self._closed:
                self._getters += 1
                try:
                    self._not_empty.wait(timeout)
                finally:
                    self._getters -= 1
            batch = [self._items.popleft() for _ in range(min(max_items, len(self._items)))]
            if batch:
                self._not_full.notify_all()
            return batch

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def drained(self) -> bool:
        """Closed and empty: the inference thread may stop."""
        return self._closed and not self._items


@dataclass(frozen=True)
class Totals:
    """Frame accounting for the exit summary: every received frame is inferred or dropped."""

    received: int
    inferred: int
    dropped: dict[str, int]


# (frames, result, backend name, monotonic end time, backend call duration, class names or None)
# -> one record per frame
RecordBuilder = Callable[[Sequence[Frame], BatchResult, str, float, float, Sequence[str] | None], list[Record]]
BackendFactory = Callable[[], Backend]


class _Swap:
    """A reload request handed to the inference thread, and its outcome for the waiting caller.

    ``cancelled`` and ``applied`` are written under the pipeline's swap lock only, so the caller
    giving up and the inference thread installing the new backend cannot both happen: whichever
    takes the lock first decides, and the other side sees that decision.
    """

    def __init__(
        self,
        factory: BackendFactory,
        fallback: BackendFactory,
        input_shape: tuple[int, ...],
        sinks: Sequence[Sink] | None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.factory, self.fallback, self.input_shape, self.sinks = factory, fallback, tuple(input_shape), sinks
        self.class_names = class_names
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False
        self.applied = False


class Pipeline:
    """Runs the reader and inference threads for one source; backends and sinks can be swapped.

    ``fallback`` builds the simulator backend used when another backend fails mid-run.
    ``input_shape`` is what the model takes; frames of another shape are dropped as ``bad_shape``
    before they can spoil a batch. ``class_names`` (the bundle's, or None) name predictions in the
    metrics and records; both change with the model on a swap. ``backpressure`` makes the reader
    wait for room instead of dropping the oldest frame.
    """

    def __init__(
        self,
        source: FrameSource,
        backend: Backend,
        *,
        fallback: BackendFactory,
        metrics: Metrics,
        health: Health,
        mailbox: Mailbox,
        notifier: Notifier,
        sinks: Sequence[Sink],
        make_records: RecordBuilder,
        input_shape: tuple[int, ...],
        queue_size: int,
        max_batch: int,
        backpressure: bool,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self._source = source
        self._backend = backend
        self._fallback = fallback
        self._metrics = metrics
        self._health = health
        self._mailbox = mailbox
        self._notifier = notifier
        self._sinks = list(sinks)
        self._make_records = make_records
        self._input_shape = tuple(input_shape)
        self._class_names = class_names
        self._max_batch = max_batch
        self._queue = FrameQueue(queue_size, block=backpressure)
        self._swap: _Swap | None = None
        self._swap_lock = threading.Lock()
        self._received = 0
        self._inferred = 0
        self._dropped: collections.Counter[str] = collections.Counter()
        self._reader = threading.Thread(target=self._read_loop, name="edge-reader", daemon=True)
        self._worker = threading.Thread(target=self._infer_loop, name="edge-inference", daemon=True)
        metrics.queue_capacity.set(queue_size)

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def start(self) -> None:
        self._reader.start()
        self._worker.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> Totals:
        """Stop reading, infer every queued frame, then return the frame accounting.

        ``timeout`` bounds the whole stop, reading and draining together (the unit's
        ``TimeoutStopSec`` is set against it, see timeouts.py). Frames still unread in the port's
        buffer were never received, so they are not ours to count; everything that entered the
        queue is inferred or counted as dropped.
        """
        deadline = time.monotonic() + timeout
        self._source.close()
        self._reader.join(timeout)
        self._queue.close()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            log.error("inference did not finish draining within %.0f s of the stop", timeout)
        self._backend.close()
        for sink in self._sinks:
            sink.close()
        return Totals(self._received, self._inferred, dict(self._dropped))

    def swap(
        self,
        factory: BackendFactory,
        fallback: BackendFactory,
        input_shape: tuple[int, ...],
        sinks: Sequence[Sink] | None,
        timeout: float,
        class_names: Sequence[str] | None = None,
    ) -> str:
        """Have the inference thread build a new backend (and take new sinks) between batches.

        The old backend keeps serving until the new one is built; if building fails the old one
        stays and the error is raised here. If the swap is not applied within ``timeout`` it is
        cancelled and BackendError raised: a backend the thread goes on to build is closed, never
        installed, so a caller that reports "rejected" is always right. ``sinks`` stay the
        caller's to close unless the swap was applied. Returns the new backend's name.
        """
        request = _Swap(factory, fallback, input_shape, sinks, class_names)
        with self._swap_lock:
            self._swap = request
        request.done.wait(timeout)
        with self._swap_lock:
            if not request.applied and request.error is None:
                request.cancelled = True
                if self._swap is request:
                    self._swap = None
                raise BackendError(f"inference thread did not take the new model within {timeout:.0f} s (busy or hung)")
        if request.error is not None:
            raise request.error
        return self._backend.name

    # --- reader thread -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            for frames in self._source.batches():
                self._health.last_frame_at = frames[-1].received_at
                self._received += len(frames)
                self._metrics.frames_received.inc(len(frames))
                dropped = self._queue.put(frames)
                if dropped:
                    self._drop("queue_full", dropped)
                self._metrics.queue_depth.set(len(self._queue))
        except Exception:
            log.exception("frame source failed")
            self._mailbox.post(Mailbox.FATAL)
        finally:
            self._health.source_open = False
            self._health.source_finished = True
            self._metrics.sensor_up.set(0)
            self._mailbox.post(Mailbox.SOURCE_CHANGED)

    # --- inference thread ----------------------------------------------------------------------

    def _infer_loop(self) -> None:
        interval = self._notifier.watchdog_interval
        wake = min(interval, IDLE_WAKE_S) if interval else IDLE_WAKE_S
        next_ping = 0.0
        try:
            while True:
                batch = self._queue.get_batch(self._max_batch, wake)
                self._metrics.queue_depth.set(len(self._queue))
                if self._apply_swap():  # a swap may take long: ping at once after it
                    next_ping = 0.0
                now = time.monotonic()
                if interval and now >= next_ping:
                    self._notifier.watchdog()
                    next_ping = now + interval
                if batch:
                    self._infer(batch)
                elif self._queue.drained:
                    return
        except Exception:
            log.exception("inference loop failed")
            self._mailbox.post(Mailbox.FATAL)

    def _apply_swap(self) -> bool:
        """Build and install a requested backend; True if a request was handled (applied or not)."""
        with self._swap_lock:
            request, self._swap = self._swap, None
        if request is None:
            return False
        try:
            backend = request.factory()
        except BaseException as error:  # handed to the caller, who reports it; the old backend stays
            with self._swap_lock:
                request.error = error
        else:
            retired, retired_sinks = backend, []  # what this swap leaves to close: the new one, unless applied
            with self._swap_lock:
                request.applied = not request.cancelled
                if request.applied:
                    retired, self._backend = self._backend, backend
                    self._fallback = request.fallback
                    self._input_shape = request.input_shape
                    self._class_names = request.class_names
                    if request.sinks is not None:
                        retired_sinks, self._sinks = self._sinks, list(request.sinks)
            if not request.applied:  # the caller gave up and reported "rejected": what was built is not kept
                log.warning("a reload's backend was built after its swap timed out; closing it unused")
            retired.close()
            for sink in retired_sinks:
                sink.close()
        request.done.set()
        return True

    def _drop(self, reason: str, n: int) -> None:
        self._dropped[reason] += n
        self._metrics.dropped(reason, n)

    def _infer(self, batch: list[Frame]) -> None:
        frames = [f for f in batch if f.image.shape == self._input_shape]
        if len(frames) < len(batch):
            self._drop("bad_shape", len(batch) - len(frames))
            log.debug("dropped %d frame(s) not shaped %s", len(batch) - len(frames), self._input_shape)
        if not frames:
            return
        images = np.array([f.image for f in frames])  # 4x faster than np.stack for a micro-batch
        start = time.monotonic()
        result = self._run(images)
        end = time.monotonic()
        if result is None:
            self._drop("inference_error", len(frames))
            return
        self._account(frames, result, start, end)

    def _run(self, images: np.ndarray) -> BatchResult | None:
        """Infer on the current backend; if it fails, switch to the simulator and re-run the batch."""
        try:
            return self._backend.infer(images)
        except BackendError as error:
            failed = self._backend.name
            self._metrics.backend_errors.labels(failed).inc()
            if failed == "simulator":
                log.error("simulator failed on a batch of %d frames: %s", len(images), error)
                return None
            log.error("%s backend failed (%s); falling back to the simulator and re-running the batch", failed, error)
        return self._fall_back(failed, images)

    def _fall_back(self, failed: str, images: np.ndarray) -> BatchResult | None:
        self._metrics.backend_fallbacks.labels(failed).inc()
        self._backend.close()
        try:
            self._backend = self._fallback()
            self._metrics.set_backend(self._backend.name, on_accelerator=False)
            self._notifier.status(f"serving on {self._backend.name} after a {failed} failure")
            return self._backend.infer(images)
        except (BackendError, ConfigError) as error:
            self._metrics.backend_errors.labels("simulator").inc()
            log.error("fallback to the simulator failed: %s", error)
            return None

    def _account(self, frames: list[Frame], result: BatchResult, start: float, end: float) -> None:
        name = self._backend.name
        received = np.fromiter((f.received_at for f in frames), np.float64, len(frames))
        classes = np.argmax(result.scores, axis=1)
        self._metrics.observe_batch(name, end - start, start - received, end - received, classes, self._class_names)
        if result.energy is not None:
            self._metrics.observe_energy(name, result.energy)
        if result.layers is not None:
            self._metrics.observe_layers(result.layers)
        self._inferred += len(frames)
        if self._sinks:
            records = self._make_records(frames, result, name, end, end - start, self._class_names)
            for sink in self._sinks:
                sink.write(records)
