"""What ``edge-runtime demo`` reads back and prints: the daemon's registry totals and the windows between
them, the prediction log scored against the labels, and the status, headline and summary lines."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from prometheus_client import CollectorRegistry

from .bundle import Bundle

# --- what the daemon reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """Counter totals from the daemon's registry at one moment; differences give rates."""

    at: float
    inferred: float = 0.0
    energy_joules: float = 0.0
    energy_count: float = 0.0
    dynamic_joules: float = 0.0
    dynamic_count: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)
    events_sum: dict[str, float] = field(default_factory=dict)  # layer -> events over all inferences
    events_count: dict[str, float] = field(default_factory=dict)  # layer -> inferences counted
    sparsity_sum: dict[str, float] = field(default_factory=dict)
    sparsity_count: dict[str, float] = field(default_factory=dict)
    backend: str = "none"


def read_registry(registry: CollectorRegistry, at: float) -> Reading:
    """Sum the daemon's series over the labels the demo does not show (backend, energy source)."""
    totals: defaultdict[str, float] = defaultdict(float)
    per_label: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    backend = "none"
    for family in registry.collect():
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "edge_backend_active" and value == 1:
                backend = labels["backend"]
            elif name == "edge_frames_dropped_total":
                per_label["dropped"][labels["reason"]] += value
            elif name.startswith(("edge_layer_output_events_", "edge_layer_activation_sparsity_ratio_")) and (
                name.endswith(("_sum", "_count"))
            ):
                per_label[name][labels["layer"]] += value
            elif name in (
                "edge_inferences_total",
                "edge_inference_energy_joules_sum",
                "edge_inference_energy_joules_count",
                "edge_inference_dynamic_energy_joules_sum",
                "edge_inference_dynamic_energy_joules_count",
            ):
                totals[name] += value
    return Reading(
        at=at,
        inferred=totals["edge_inferences_total"],
        energy_joules=totals["edge_inference_energy_joules_sum"],
        energy_count=totals["edge_inference_energy_joules_count"],
        dynamic_joules=totals["edge_inference_dynamic_energy_joules_sum"],
        dynamic_count=totals["edge_inference_dynamic_energy_joules_count"],
        dropped=dict(per_label["dropped"]),
        events_sum=dict(per_label["edge_layer_output_events_sum"]),
        events_count=dict(per_label["edge_layer_output_events_count"]),
        sparsity_sum=dict(per_label["edge_layer_activation_sparsity_ratio_sum"]),
        sparsity_count=dict(per_label["edge_layer_activation_sparsity_ratio_count"]),
        backend=backend,
    )


def _delta(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    return {key: value - old.get(key, 0.0) for key, value in new.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


@dataclass(frozen=True)
class Window:
    """What happened between two readings (or since the start, for the final summary)."""

    seconds: float
    inferred: float
    joules_per_inference: float
    dynamic_per_inference: float
    events_per_inference: dict[str, float]  # layer -> mean events
    layer_sparsity: dict[str, float]  # layer -> mean fraction of zero activations
    dropped: float


def window(old: Reading, new: Reading) -> Window:
    events_sum, events_count = _delta(new.events_sum, old.events_sum), _delta(new.events_count, old.events_count)
    sparsity_sum = _delta(new.sparsity_sum, old.sparsity_sum)
    sparsity_count = _delta(new.sparsity_count, old.sparsity_count)
    return Window(
        seconds=new.at - old.at,
        inferred=new.inferred - old.inferred,
        joules_per_inference=_ratio(new.energy_joules - old.energy_joules, new.energy_count - old.energy_count),
        dynamic_per_inference=_ratio(new.dynamic_joules - old.dynamic_joules, new.dynamic_count - old.dynamic_count),
        events_per_inference={layer: _ratio(events_sum[layer], events_count.get(layer, 0.0)) for layer in events_sum},
        layer_sparsity={layer: _ratio(sparsity_sum[layer], sparsity_count.get(layer, 0.0)) for layer in sparsity_sum},
        dropped=sum(_delta(new.dropped, old.dropped).values()),
    )


def activation_sparsity(events_per_inference: dict[str, float], neurons: dict[str, int]) -> float:
    """Share of silent neurons over the layers that fire events (the manifest's definition).

    Pooled over neurons rather than averaged over layers: a big quiet layer saves more events than
    a small one, and events are what the chip pays for.
    """
    known = {layer: events for layer, events in events_per_inference.items() if layer in neurons}
    if not known or any(math.isnan(events) for events in known.values()):
        return math.nan
    return 1.0 - sum(known.values()) / sum(neurons[layer] for layer in known)


# --- what the daemon predicted --------------------------------------------------------------------


class PredictionLog:
    """Follows the daemon's JSON-lines prediction log as it grows and scores it against the labels.

    Like ``tail -F``: the file appears with the first batch, and if the daemon rotates it the rest
    of the old file is read before moving to the new one (the old file gets no writes after that).
    """

    def __init__(self, path: Path, labels: np.ndarray) -> None:
        self._path = path
        self._labels = labels
        self._file: IO[bytes] | None = None
        self._partial = b""
        self.correct = 0
        self.total = 0

    @property
    def accuracy(self) -> float:
        return _ratio(self.correct, self.total)

    def poll(self) -> None:
        while True:
            if self._file is None:
                try:
                    self._file = open(self._path, "rb")  # noqa: SIM115 - kept open between polls, closed in close()
                except FileNotFoundError:
                    return
            self._consume(self._file.read())
            if not self._rotated():
                return
            self._consume(self._file.read())
            self.close()

    def _rotated(self) -> bool:
        assert self._file is not None
        try:
            return os.stat(self._path).st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def _consume(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            record: dict[str, Any] = json.loads(line)
            self.total += 1
            self.correct += int(record["class"] == int(self._labels[record["seq"] % len(self._labels)]))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- output ---------------------------------------------------------------------------------------


def _micro(joules: float, digits: int = 1) -> str:
    return "-" if math.isnan(joules) else f"{joules * 1e6:.{digits}f} µJ"


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def _saving(value: float, baseline: float | None) -> str:
    return "" if baseline is None or math.isnan(value) else f" ({100 * (1 - value / baseline):.0f}% less than baseline)"


def energy_headline(bundle: Bundle, device: str, baseline: Bundle | None) -> str:
    """What the manifests say the served bundle costs per inference, and its saving against the baseline."""
    figures = bundle.manifest.metrics.energy.get(device)
    if figures is None:
        return f"energy: the bundle records no {device.upper()} figures"
    line = (
        f"modelled on {device.upper()} ({figures.profile}, from the manifest): total {_micro(figures.total_j)} "
        f"per inference (floor x frame time + dynamic, as model.statistics reports), dynamic "
        f"{_micro(figures.dynamic_j, 2)}, on-chip latency {figures.chip_s * 1e6:.0f} µs"
    )
    base = None if baseline is None else baseline.manifest.metrics.energy.get(device)
    if baseline is not None and base is not None:
        line += (
            f"\n  against {baseline.manifest.name}: total {_micro(base.total_j)} -> "
            f"{100 * (1 - figures.total_j / base.total_j):.1f}% less, dynamic {_micro(base.dynamic_j, 2)} -> "
            f"{100 * (1 - figures.dynamic_j / base.dynamic_j):.1f}% less"
        )
    return line


def status_line(
    elapsed: float, step: Window, neurons: dict[str, int], log: PredictionLog, baseline_total: float | None = None
) -> str:
    sparsity = activation_sparsity(step.events_per_inference, neurons)
    return (
        f"[{elapsed:5.1f} s] {step.inferred / step.seconds:6.1f} frames/s"
        f" | energy/inference {_micro(step.joules_per_inference)}{_saving(step.joules_per_inference, baseline_total)}"
        f", dynamic {_micro(step.dynamic_per_inference, 2)}"
        f" | activation sparsity {_number(sparsity, '.3f')}"
        f" | accuracy {_number(log.accuracy * 100, '.1f')}% ({log.correct}/{log.total})"
        f" | dropped {step.dropped:.0f}"
    )


def summary(
    total: Window,
    backend: str,
    bundle: Bundle,
    neurons: dict[str, int],
    log: PredictionLog,
    dropped: dict[str, float],
    device: str,
) -> list[str]:
    """The final report: the run against what the bundle's manifest promised."""
    metrics = bundle.manifest.metrics
    expected_sparsity = 1.0 - metrics.nonzero_activations_per_frame / sum(neurons.values())
    figures = metrics.energy.get(device)
    expected_energy = math.nan if figures is None else figures.total_j
    expected_dynamic = math.nan if figures is None else figures.dynamic_j
    lost = ", ".join(f"{reason} {n:.0f}" for reason, n in sorted(dropped.items()) if n) or "none"
    lines = [
        f"summary: {total.inferred:.0f} frames inferred in {total.seconds:.1f} s on {backend}"
        f" ({total.inferred / total.seconds:.1f} frames/s); dropped: {lost}",
        f"accuracy: {_number(log.accuracy * 100, '.2f')}% ({log.correct}/{log.total} MNIST test frames)",
        f"energy per inference: total {_micro(total.joules_per_inference)} (manifest: {_micro(expected_energy)}), "
        f"dynamic {_micro(total.dynamic_per_inference, 2)} (manifest: {_micro(expected_dynamic, 2)})",
        f"activation sparsity: {_number(activation_sparsity(total.events_per_inference, neurons), '.3f')}"
        f" (manifest: {expected_sparsity:.3f})",
    ]
    promised = {layer.name: 1.0 - layer.activation_density for layer in metrics.layers}
    for layer, sparsity in total.layer_sparsity.items():
        lines.append(
            f"  {layer:<8} sparsity {_number(sparsity, '.3f')} (manifest: {promised.get(layer, math.nan):.3f})"
            f", {_number(total.events_per_inference.get(layer, math.nan), '.1f')} events/inference"
        )
    return lines
