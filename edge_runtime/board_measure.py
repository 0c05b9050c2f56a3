"""Measure a model on an attached Akida board the way BrainChip's devhub does, for ``calibrate``.

What is measured (``brainchip_devhub`` ``brainchip_utils/hardware_utils.py`` and the sparsity tutorial;
docs/energy-model.md, "Calibrating on your board"):

* **sub-models** ``model[:1]``, ``model[:2]``, ... with the last layer silenced (threshold 524287,
  act_step 65535) so no output events go back to the host: every sub-model is one sample of the
  clock model, with its own mapping and its own counters;
* **threshold shifts** of the whole model (weights and mapping unchanged) for density sweeps;
* per sample, ``inference_clk`` of one frame per ``forward`` (on-chip clocks; the mean over frames),
  the host wall time of those single-frame calls, and one long ``forward`` of every frame with the
  power meter on: ``model.statistics`` fps and energy per frame (floor included), and the meter's floor.

Each sample's sub-model is saved as a ``.fbz`` and simulated with our simulator on the same frames
(its counters, ``.npz``), and one row per measurement goes to ``samples.csv``, which
``edge-runtime calibrate --samples`` fits. Everything here is written against akida's real API; the
device and the model loader are parameters, so tests run it against a fake board.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .akida_model import from_akida
from .errors import BackendError
from .simulator import Simulator

log = logging.getLogger(__name__)

SILENT_THRESHOLD = 524287  # the devhub's values: the layer cannot fire, so no event leaves the chip
SILENT_ACT_STEP = 65535.0
SAMPLE_COLUMNS = (
    "label",
    "model",
    "counters",
    "map_mode",
    "frames_per_call",
    "clocks",
    "frame_time_s",
    "energy_j",
    "floor_w",
)


@dataclass(frozen=True)
class Reading:
    """One measurement of one (sub-)model: per frame, as the board reports it (None: not available)."""

    frames_per_call: int
    clocks: float | None
    frame_time_s: float
    energy_j: float | None
    floor_w: float | None


def sub_models(model: Any, load: Callable[..., Any]) -> list[tuple[str, Any]]:
    """``model[:1]``, ``model[:2]``, ... (every sub-model's last layer silenced unless it emits potentials),
    then the whole model as it is."""
    out = []
    # An InputData layer computes nothing: a sub-model must end on a layer that runs on the chip.
    first = 1 if model.layers[0].parameters.layer_type.name == "InputData" else 0
    for end in range(first + 1, len(model.layers)):
        sub = load(layers=model.layers[:end])
        last = sub.layers[-1]
        if _fires(last):
            last.set_variable("threshold", np.full_like(last.get_variable("threshold"), SILENT_THRESHOLD))
            last.set_variable("act_step", np.full_like(last.get_variable("act_step"), SILENT_ACT_STEP))
        out.append((f"layers 1-{end}", sub))
    out.append(("whole model", load(layers=list(model.layers))))
    return out


def shifted(model: Any, shift: int, load: Callable[..., Any]) -> Any:
    """The model with every activated layer's thresholds moved by ``shift`` (the devhub's
    ``shift_thresholds``): fewer neurons fire for a positive shift, more for a negative one."""
    copy = load(layers=list(model.layers))
    for layer in copy.layers:
        if _fires(layer):
            layer.set_variable("threshold", layer.get_variable("threshold") + shift)
    return copy


def _fires(layer: Any) -> bool:
    """Whether the layer has a firing threshold (InputData has no ``activation`` parameter at all)."""
    return layer.parameters.layer_type.name != "InputData" and bool(layer.parameters.activation)


def read_board(
    model: Any, device: Any, frames: np.ndarray, mode: str, clock: Callable[[], float] = time.perf_counter
) -> list[Reading]:
    """Map ``model`` on ``device`` and take the two readings: single-frame calls (clocks, host wall time
    by ``clock``, as the devhub's ``perf_counter``: the driver's own timestamps are in whole ms) and one
    long call with the power meter (fps, energy per frame, floor)."""
    import akida

    try:
        model.map(device, hw_only=True, mode=getattr(akida.MapMode, mode))
    except RuntimeError as error:
        raise BackendError(f"the board refuses the model ({error})") from None
    clocks, walls = [], []
    for frame in frames:
        start = clock()
        model.forward(frame[None])
        walls.append(clock() - start)
        clocks.append(float(model.statistics.inference_clk))
    single = Reading(1, float(np.mean(clocks)), float(np.mean(walls)), None, None)
    soc = getattr(device, "soc", None)
    if soc is not None:
        soc.power_measurement_enabled = True
    model.forward(frames)
    stats = model.statistics
    floor = None if soc is None else float(soc.power_meter.floor) / 1e3
    energy = None if stats.energy is None else float(stats.energy) / 1e3  # mJ/frame -> J
    batch = Reading(len(frames), float(stats.inference_clk) / len(frames), 1.0 / float(stats.fps), energy, floor)
    return [single, batch]


def measure(
    fbz: Path,
    frames: np.ndarray,
    out_dir: Path,
    *,
    device: Any,
    mode: str = "AllNps",
    shifts: Sequence[int] = (),
    load: Callable[..., Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Path:
    """Measure ``fbz`` on ``device``; write sub-models, counters and ``samples.csv`` into ``out_dir``."""
    if load is None:
        import akida

        load = akida.Model
    model = load(str(fbz))
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = sub_models(model, load) + [(f"threshold shift {s:+d}", shifted(model, s, load)) for s in shifts]
    rows = []
    for index, (label, variant) in enumerate(variants):
        path = out_dir / f"sample-{index:02d}.fbz"
        variant.save(str(path))
        counters = Simulator(from_akida(load(str(path)))).run(frames).counters
        counters_path = out_dir / f"sample-{index:02d}-counters.npz"
        files.atomic_write(counters_path, _npz_writer(counters.to_arrays()))
        log.info("measuring %s on the board", label)
        for reading in read_board(load(str(path)), device, frames, mode, clock):
            rows.append(
                {
                    "label": label,
                    "model": path.name,
                    "counters": counters_path.name,
                    "map_mode": mode,
                    "frames_per_call": reading.frames_per_call,
                    "clocks": _cell(reading.clocks),
                    "frame_time_s": _cell(reading.frame_time_s),
                    "energy_j": _cell(reading.energy_j),
                    "floor_w": _cell(reading.floor_w),
                }
            )
    samples = out_dir / "samples.csv"
    with open(samples, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SAMPLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return samples


def _npz_writer(arrays: dict[str, np.ndarray]) -> Callable[[Any], None]:
    """What ``files.atomic_write`` calls with the open file: an ``.npz`` of ``arrays``."""
    # numpy's stubs type **kwds as its own bool keyword (allow_pickle): the names here are layer/counter keys
    return lambda handle: np.savez(handle, **arrays)  # type: ignore[arg-type]


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))
