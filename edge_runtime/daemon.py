"""The ``serve`` daemon's life cycle: start, run until told otherwise, reload, drain and stop.

The main thread does only this: it waits on a :class:`~.mailbox.Mailbox`, which
receives signal numbers (through ``signal.set_wakeup_fd``) and wake-ups from the worker threads,
and acts on them one at a time. Signal handlers therefore never run daemon code, so a SIGHUP that
arrives mid-reload cannot re-enter it.

* SIGHUP: re-read the config, load and verify the bundle it names, and only then swap it in; if
  anything is wrong the old model keeps serving and the reason is one log line and
  ``edge_reloads_total{result="rejected"}``.
* SIGTERM / SIGINT: stop reading, infer what is queued, log the frame accounting, exit 0.
* systemd: READY=1 once the bundle is loaded and the source has opened, STATUS lines on changes,
  RELOADING=1 ... READY=1 around reloads, STOPPING=1 on the way out (watchdog: see pipeline).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from .backends import Backend, BackendSettings, Board, open_backend, sources_reported
from .bundle import Bundle, check_golden, verify
from .config import ServeConfig, load_config, parse_listen
from .energy import DeviceProfile
from .errors import ConfigError, EdgeError
from .health import Health, SourceListener, stale_after
from .http_server import HttpServer, make_app
from .mailbox import STOP_SIGNALS, Mailbox
from .metrics import Metrics
from .pipeline import PIPELINE_DROP_REASONS, Pipeline
from .process_tuning import limit_blas_threads, prompt_thread_switches
from .sdnotify import Notifier
from .sinks import JsonLinesSink, Sink, StdoutSink, prediction_records
from .sources import SOURCE_DROP_REASONS, ReplaySpec, open_source, parse_source_spec
from .timeouts import RELOAD_ALLOWANCE_S, SWAP_TIMEOUT_S

log = logging.getLogger(__name__)

DROP_REASONS = tuple(dict.fromkeys((*SOURCE_DROP_REASONS, *PIPELINE_DROP_REASONS)))


def backend_settings(config: ServeConfig) -> BackendSettings:
    inference = config.inference
    return BackendSettings(inference.backend, inference.sample_every, inference.power_window_s, inference.onnx_threads)


def load_energy_model(config: ServeConfig) -> DeviceProfile:
    """``inference.device_profile`` (e.g. from ``edge-runtime calibrate``), else the packaged profile of
    ``inference.device``; a file for another device than the configured one is refused."""
    inference = config.inference
    return DeviceProfile.chosen(
        inference.device,
        inference.device_profile,
        "set inference.device to the profile's device, or use another profile",
    )


def restart_only_changes(old: ServeConfig, new: ServeConfig) -> list[str]:
    """Keys a reload cannot apply (the port and the listener stay open across it)."""
    changed = []
    if old.source != new.source:
        changed.append("[source]")
    if old.metrics != new.metrics:
        changed.append("[metrics]")
    return changed


def open_sinks(config: ServeConfig, metrics: Metrics) -> list[Sink]:
    def count(sink: str, n: int) -> None:
        metrics.sink_errors.labels(sink).inc(n)

    predictions = config.predictions
    sinks: list[Sink] = []
    if predictions.path:
        sinks.append(JsonLinesSink(Path(predictions.path), predictions.max_bytes, predictions.keep, count))
    if predictions.stdout:
        sinks.append(StdoutSink(count))
    return sinks


def describe(bundle: Bundle) -> str:
    return f"{bundle.manifest.name} ({bundle.sha256[:12]})"


class Daemon:
    """One ``edge-runtime serve`` process. ``start`` raises user errors; ``wait`` runs until stopped.

    ``config_path`` and ``overrides`` are kept so SIGHUP re-reads the file and re-applies the
    same flags. ``board`` reaches the Akida device (tests pass a fake one). ``exit_when_done``: a
    source that ends (a replay without loop) stops the daemon, after the queue drains, with status 0.
    """

    def __init__(
        self,
        config_path: Path | None,
        overrides: Mapping[str, Any],
        *,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
        board: Board | None = None,
        mnist_cache_dir: Path | None = None,
        exit_when_done: bool = False,
    ) -> None:
        self._config_path = config_path
        self._overrides = dict(overrides)
        self.config = load_config(config_path, overrides)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, DROP_REASONS)
        self._notifier = notifier if notifier is not None else Notifier()
        self._board = board if board is not None else Board()
        self._mnist_cache_dir = mnist_cache_dir
        self._exit_when_done = exit_when_done
        self._finish_logged = False
        self._energy = load_energy_model(self.config)
        self._health = Health()
        self.mailbox = Mailbox()
        self._listener = SourceListener(self.metrics, self._health, self.mailbox)
        self._ready_sent = False
        self._http: HttpServer | None = None
        self._pipeline: Pipeline | None = None
        self.bundle: Bundle | None = None

    @property
    def url(self) -> str:
        """Base URL of /metrics, /healthz and /readyz (the real port when 0 was asked for)."""
        if self._http is None:
            raise RuntimeError("the daemon is not started")
        return self._http.url

    # --- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Load and verify the bundle, bind the HTTP port, open the source, start the threads.

        On failure everything acquired so far is released and the (user) error propagates.
        """
        config = self.config
        backend: Backend | None = None
        limit_blas_threads(config.inference.blas_threads)
        prompt_thread_switches()
        try:
            bundle = self._verify(config)
            backend = self._open_backend(bundle, config, self._energy)
            self._announce(bundle, backend.name, config)
            host, port = parse_listen(config.metrics.listen)
            self._http = HttpServer(make_app(self.registry, self._health.readiness), host, port)
            spec = parse_source_spec(config.source.spec)
            self._watch_staleness(spec.rate)
            source = open_source(
                spec,
                self._listener,
                mnist_cache_dir=self._mnist_cache_dir,
                frame_shape=bundle.model.input_shape,
                frame_max=bundle.model.input_max,
            )
        except BaseException:
            if backend is not None:
                backend.close()
            if self._http is not None:
                self._http.close()
            self.mailbox.close()
            raise
        self._http.start()
        self._pipeline = Pipeline(
            source,
            backend,
            fallback=self._fallback_factory(bundle, config, self._energy),
            metrics=self.metrics,
            health=self._health,
            mailbox=self.mailbox,
            notifier=self._notifier,
            sinks=open_sinks(config, self.metrics),
            make_records=prediction_records,
            input_shape=bundle.model.input_shape,
            class_names=bundle.manifest.class_names,
            queue_size=config.source.queue_size,
            max_batch=config.inference.max_batch,
            # A replay without a rate loses nothing by waiting; a sensor does not wait for us.
            backpressure=isinstance(spec, ReplaySpec) and spec.rate is None,
        )
        self.bundle = bundle
        self._health.model_loaded = True
        self._pipeline.start()
        log.info(
            "serving %s on %s; metrics at %s/metrics; source %s",
            describe(bundle),
            backend.name,
            self.url,
            config.source.spec,
        )
        self._notifier.status(f"waiting for the source {config.source.spec}")

    def _watch_staleness(self, expected_rate: float | None) -> None:
        """Export the time since the last good frame, and judge it against the source's expected rate."""
        self._health.expected_rate = expected_rate
        self.metrics.sensor_stale_after.set(stale_after(expected_rate))
        self.metrics.sensor_silence.set_function(self._health.silence_s)

    def _verify(self, config: ServeConfig) -> Bundle:
        """:func:`verify` the configured bundle; a missing directory names the key and the flag to fix it."""
        if not Path(config.model.bundle).is_dir():
            origin = self._config_path or "the command line"
            raise ConfigError(
                f"{config.model.bundle}: no such bundle directory (model.bundle, from {origin}; "
                "set it or pass --model BUNDLE_DIR)"
            )
        return verify(config.model.bundle)

    def _open_backend(self, bundle: Bundle, config: ServeConfig, energy: DeviceProfile) -> Backend:
        """The configured backend, checked against the bundle's golden vectors before it serves.

        The simulator was already checked by ``verify``; the board and onnxruntime are checked
        here, because a bundle is only trusted on an engine that reproduces its golden outputs.
        """
        backend = open_backend(bundle, energy, backend_settings(config), self._board)
        if backend.name != "simulator":
            try:
                shape = bundle.golden.outputs.shape
                check_golden(
                    bundle, lambda frames: backend.infer(frames).scores.reshape(shape), f"the {backend.name} backend"
                )
            except BaseException:
                backend.close()
                raise
        return backend

    def _fallback_factory(self, bundle: Bundle, config: ServeConfig, energy: DeviceProfile) -> Callable[[], Backend]:
        """The simulator for ``bundle``: what the pipeline switches to if its backend fails."""
        settings = replace(backend_settings(config), kind="simulator")
        return lambda: open_backend(bundle, energy, settings, self._board)

    def _announce(self, bundle: Bundle, backend: str, config: ServeConfig) -> None:
        """Publish what is being served: model info and expectations, active backend, series at 0."""
        manifest = bundle.manifest
        energy = manifest.metrics.energy.get(self._energy.device)
        sample_every = config.inference.sample_every
        energy_sources, layer_sources = sources_reported(backend, sample_every)
        # The fallback (simulator) may take over at any time: its series exist from the start too.
        fallback_energy, fallback_layers = sources_reported("simulator", sample_every)
        layer_names = [layer.name for layer in bundle.model.layers]
        self.metrics.set_model(
            name=manifest.name,
            sha256=bundle.sha256,
            input_shape=bundle.model.input_shape,
            classes=manifest.classes,
            expected_energy=None if energy is None else energy.total_j,
            expected_sparsity={m.name: 1.0 - m.activation_density for m in manifest.metrics.layers},
            energy_sources=[(backend, s) for s in energy_sources] + [("simulator", s) for s in fallback_energy],
            layers=[(name, s) for name in layer_names for s in {*layer_sources, *fallback_layers}],
        )
        mapping = manifest.mappings.get(self._energy.device)
        if mapping is not None and mapping.multi_pass:
            log.warning(
                "%s maps in %d passes on %s: its modelled energy and latency are the least certain "
                "(docs/energy-model.md); calibrate on the board to trust them",
                manifest.name,
                mapping.passes,
                self._energy.device.upper(),
            )
        self.metrics.set_energy_model(
            self._energy.device,
            self._energy.version,
            None if energy is None else energy.dynamic_j,
            None if energy is None else energy.chip_s,
            [("simulator", "model")],
        )  # only the simulator (also the fallback) models them
        self.metrics.set_backend(backend, on_accelerator=backend == "akida")

    # --- run ------------------------------------------------------------------------------------

    def post(self, code: int) -> None:
        """Deliver a signal number (or a mailbox code) as if it had arrived: for tests and embedding."""
        self.mailbox.post(code)

    def wait(self) -> int:
        """Act on signals and wake-ups until told to stop; return the exit status."""
        while True:
            for code in self.mailbox.wait():
                if code in STOP_SIGNALS:
                    log.info("%s received: draining the queue", signal.Signals(code).name)
                    return self.stop(0)
                if code == Mailbox.FATAL:
                    log.error("a worker thread failed; exiting so the service manager restarts us")
                    return self.stop(1)
                if code == signal.SIGHUP:
                    self._reload()
                elif code == Mailbox.SOURCE_CHANGED:
                    self._source_changed()
                    if self._health.source_finished and self._exit_when_done:
                        return self.stop(0)

    def _source_changed(self) -> None:
        health = self._health
        if health.source_finished and not self._finish_logged:
            self._finish_logged = True
            then = (
                "draining the queue, then exiting"
                if self._exit_when_done
                else "still serving /metrics until stopped (serve --exit-when-done exits instead)"
            )
            log.info("source %s finished: no more frames; %s", self.config.source.spec, then)
        if not self._ready_sent and health.source_seen and self.bundle is not None:
            self._ready_sent = True
            self._notifier.ready(self._status())
            return
        self._notifier.status(self._status())

    def _status(self) -> str:
        assert self._pipeline is not None and self.bundle is not None
        serving = f"serving {describe(self.bundle)} on {self._pipeline.backend_name}"
        if self._health.source_finished:
            return f"{serving}; source finished"
        if not self._health.source_open:
            return f"{serving}; waiting for the source {self.config.source.spec}"
        return serving

    def _reload(self) -> None:
        assert self._pipeline is not None and self.bundle is not None
        if self._ready_sent:  # before READY=1 systemd is still starting us: nothing to announce
            self._notifier.reloading()
        old = self.bundle
        sinks: list[Sink] | None = None
        try:
            new = load_config(self._config_path, self._overrides)
            kept = restart_only_changes(self.config, new)
            if kept:
                log.warning("reload: changes to %s need a restart; keeping the running ones", ", ".join(kept))
                new = replace(new, source=self.config.source, metrics=self.config.metrics)
            bundle = self._verify(new)
            energy = load_energy_model(new)
            if new.predictions != self.config.predictions:
                sinks = open_sinks(new, self.metrics)
            with self._slow_step_allowed(RELOAD_ALLOWANCE_S):
                backend = self._pipeline.swap(
                    lambda: self._open_backend(bundle, new, energy),
                    self._fallback_factory(bundle, new, energy),
                    bundle.model.input_shape,
                    sinks,
                    SWAP_TIMEOUT_S,
                    bundle.manifest.class_names,
                )
        except (EdgeError, OSError, ValueError) as error:
            # EdgeError is every mistake we name; OSError and ValueError (e.g. UnicodeDecodeError)
            # are reading failures something below did not turn into one. Either way the reload is
            # refused and the running bundle keeps serving: a SIGHUP must never end the process.
            for sink in sinks or []:
                sink.close()
            self.metrics.reloads.labels("rejected").inc()
            log.error("reload rejected, still serving %s: %s", describe(old), error)
            self._reloaded()
            return
        self.config, self.bundle, self._energy = new, bundle, energy
        limit_blas_threads(new.inference.blas_threads)
        self._announce(bundle, backend, new)
        self.metrics.reloads.labels("ok").inc()
        log.info("reloaded: serving %s on %s (was %s)", describe(bundle), backend, describe(old))
        self._reloaded()

    @contextlib.contextmanager
    def _slow_step_allowed(self, seconds: float) -> Iterator[None]:
        """Tell systemd that the next ``seconds`` may pass without a watchdog ping, then restore it.

        Why: the new backend is built on the inference thread, which is also the one that pings the
        watchdog (so a hung accelerator stops the pings); a board mapping can outlast the unit's
        ``WatchdogSec`` without anything being wrong. ``EXTEND_TIMEOUT_USEC`` covers the reload
        state's own timeout and ``WATCHDOG_USEC`` the watchdog (sd_notify(3)).
        """
        interval = self._notifier.watchdog_interval
        usec = int(seconds * 1e6)
        self._notifier.notify(EXTEND_TIMEOUT_USEC=usec, **({"WATCHDOG_USEC": usec} if interval else {}))
        try:
            yield
        finally:
            if interval:
                self._notifier.notify(WATCHDOG_USEC=int(interval * 2e6))

    def _reloaded(self) -> None:
        """End a reload as systemd expects: READY=1 after RELOADING=1, or only a STATUS before start-up ended."""
        if self._ready_sent:
            self._notifier.ready(self._status())
        else:
            self._notifier.status(self._status())

    # --- stop -----------------------------------------------------------------------------------

    def stop(self, status: int) -> int:
        """Drain and release everything; return ``status`` (the process exit code)."""
        self._notifier.stopping()
        if self._pipeline is not None:
            totals = self._pipeline.stop()
            dropped = dict(self._listener.dropped_counts)
            for reason, n in totals.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
            text = ", ".join(f"{reason} {n}" for reason, n in sorted(dropped.items())) or "none"
            log.info("stopped: %d frames received, %d inferred, dropped: %s", totals.received, totals.inferred, text)
            if self._listener.bad_packet_counts:  # packets, not frames: the frames they cost are in seq_gap
                bad = ", ".join(f"{kind} {n}" for kind, n in sorted(self._listener.bad_packet_counts.items()))
                log.info("bad packets from the sensor: %s", bad)
        if self._http is not None:
            self._http.close()
        self.mailbox.close()
        return status
