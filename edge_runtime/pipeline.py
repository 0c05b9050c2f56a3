"""The only module that knows about threads: source -> bounded queue -> inference -> metrics and sinks.

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
* **http**: wsgiref serving /metrics, /healthz and /readyz (one short-lived thread per request).

Other threads talk to the daemon's main thread through a :class:`Mailbox` (a pipe, so a signal
handler and a worker thread can both post to it without locks).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np

from .backends.base import Backend, BatchResult
from .errors import BackendError, ConfigError
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


# The daemon's GIL switch interval (CPython's default is 5 ms); see prompt_thread_switches().
SWITCH_INTERVAL_S = 0.0005


def prompt_thread_switches() -> None:
    """Let a thread waiting for the GIL in after 0.5 ms instead of 5 ms, for the whole process.

    Why: the inference thread holds the GIL through the simulator's Python code between NumPy
    calls, while the source thread needs it only briefly to queue the frames that just arrived.
    At 5 ms the source thread can wait out most of a batch before it queues anything, and the
    inference thread then finds the queue empty and waits in turn. Measured over a pty on this
    project's 2-core host (9 interleaved runs each of 3,000 frames, shipped bundle): median 9,500
    frames/s at 0.5 ms against 8,900 at 5 ms; the host's run-to-run spread (7,100-11,400) is larger
    than that gain, so it is a small one, and the extra switches cost no measurable CPU per frame.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS library's worker threads (OpenBLAS, MKL, BLIS) for the whole process.

    NumPy's OpenBLAS starts a busy-waiting worker per core. The simulator multiplies small matrices
    (one micro-batch), so extra workers only fight the reader thread and each other: on a loaded
    2-core host, measured simulator throughput at batch 16 fell from 15,000 frames/s with one BLAS
    thread to 460 with the default two. threadpoolctl changes the limit at run time, after NumPy
    has loaded its BLAS, which an environment variable can no longer do.
    """
    from threadpoolctl import threadpool_limits  # lazy: only the daemon needs it

    threadpool_limits(limits=threads, user_api="blas")


class Mailbox:
    """Wakes the daemon's main thread; posts are single bytes written to a pipe.

    Writing one byte to a pipe is atomic and async-signal-safe, so the same mailbox takes Python's
    ``signal.set_wakeup_fd`` (signal numbers, all < 128) and codes from worker threads (>= 128).
    """

    SOURCE_CHANGED = 0xF0
    FATAL = 0xF1

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def write_fd(self) -> int:
        return self._write

    def post(self, code: int) -> None:
        # BlockingIOError: 64 KiB of unread wake-ups, so the main thread is already due to wake.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, bytes([code]))

    def wait(self, timeout: float | None = None) -> bytes:
        """Block until something was posted (or ``timeout``); return every code pending."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self._read, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


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


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper cannot hold up a health check."""

    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Scrapes every few seconds would flood the journal; requests are not state changes."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpServer:
    """Serves a WSGI app (metrics.make_app) on ``host:port`` from a background thread."""

    def __init__(self, app: Callable[..., Any], host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("_Server", (_Server,), {"address_family": family})
            self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="edge-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the serving loop (if it was started), wait for it, release the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
