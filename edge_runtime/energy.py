"""Time and energy per frame on Akida 1.0 silicon (model v2), from the simulator's event counters.

Why this form (docs/energy-model.md derives it from the measurements in
``bench/data/akida1-silicon.json``; ``bench/energy_fit.py`` fits and checks it):

* On-chip time is a sum over layers, each on its own neural processors (NPs):
  the input layer (HRC) is **dense**: clocks per output position and block of 16 filters, whatever
  the pixels hold; a Convolutional or SeparableConvolutional layer on CNPs costs a kernel-dependent
  number of clocks per (input event x filter) plus a fixed cost once any event arrives, the whole
  divided over the layer's NPs; a FullyConnected layer on an FNP costs clocks per
  (input event x unit) plus a fixed cost.
* Host time per frame (driver, transfer, passes) is added to give the frame time, and static energy
  is floor power x frame time, because the chip's floor power is drawn for as long as the host waits.
* Dynamic energy follows the work: per (input event x filter or unit), per synaptic operation on a
  non-zero weight (zero weights save energy, not time), per HRC block.

Two conventions, named as akida names them: **total** energy per frame is what
``model.statistics`` prints (floor and host time included); **dynamic** is floor subtracted, as the
devhub's ``avg_dynamic_energy_mj``. Latency is on-chip (clocks / clock), frame time host-inclusive.

The model is linear in its coefficients: each layer contributes *features* (the quantities a
coefficient multiplies, :mod:`edge_runtime.energy_inputs`), and every figure is a dot product of
features and coefficients. The same features are what :mod:`edge_runtime.energy_fit` regresses
on, so the fitted and the evaluated formula are one. Coefficients are data: a versioned device profile per chip
(``data/devices/<device>.json``) with a unit and a source for each.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import files
from .counters import LayerCounters
from .energy_inputs import Activity, ModelMapping, host_features, layer_features
from .errors import ConfigError, DataError

SCHEMA = "akida-edge/device-profile/2"
DEVICES = ("akd1000", "akd1500")
DEFAULT_DEVICE = "akd1000"
PJ = 1e-12


def _unit(unit: str, group: str) -> dict[str, str]:
    return {"unit": unit, "group": group}


@dataclass(frozen=True)
class Coefficients:
    """One device's parameters. ``group``: ``clock`` (on-chip clocks), ``host`` (seconds), ``energy``."""

    clock_hz: float = field(metadata=_unit("Hz", "device"))
    floor_power_w: float = field(metadata=_unit("W", "device"))
    hrc_clk_per_block: float = field(metadata=_unit("clk/(position x 16 filters)", "clock"))
    cnp_clk_per_event_filter_k1: float = field(metadata=_unit("clk/(event x filter)", "clock"))
    cnp_clk_per_event_filter_k3: float = field(metadata=_unit("clk/(event x filter)", "clock"))
    cnp_clk_per_event_filter_k5: float = field(metadata=_unit("clk/(event x filter)", "clock"))
    cnp_clk_per_event_filter_k7: float = field(metadata=_unit("clk/(event x filter)", "clock"))
    cnp_clk_per_layer: float = field(metadata=_unit("clk/layer", "clock"))
    cnp_clk_per_neuron: float = field(metadata=_unit("clk/neuron", "clock"))
    fnp2_clk_per_event_unit: float = field(metadata=_unit("clk/(event x unit)", "clock"))
    fnp3_clk_per_event_unit: float = field(metadata=_unit("clk/(event x unit)", "clock"))
    fnp_clk_per_layer: float = field(metadata=_unit("clk/layer", "clock"))
    host_s_per_frame: float = field(metadata=_unit("s/frame", "host"))
    host_s_per_input_byte: float = field(metadata=_unit("s/byte", "host"))
    host_s_per_extra_pass: float = field(metadata=_unit("s/pass", "host"))
    host_s_per_reloaded_weight: float = field(metadata=_unit("s/weight", "host"))
    host_s_per_call: float = field(metadata=_unit("s/call", "host"))
    dyn_pj_per_hrc_block: float = field(metadata=_unit("pJ/(position x 16 filters)", "energy"))
    dyn_pj_per_event_filter: float = field(metadata=_unit("pJ/(event x filter)", "energy"))
    dyn_pj_per_fnp_event_unit: float = field(metadata=_unit("pJ/(event x unit)", "energy"))
    dyn_pj_per_synop: float = field(metadata=_unit("pJ/synop", "energy"))


UNITS: dict[str, str] = {f.name: f.metadata["unit"] for f in dataclasses.fields(Coefficients)}
GROUPS: dict[str, str] = {f.name: f.metadata["group"] for f in dataclasses.fields(Coefficients)}
CLOCK_COEFFICIENTS = tuple(name for name, group in GROUPS.items() if group == "clock")
HOST_COEFFICIENTS = tuple(name for name, group in GROUPS.items() if group == "host")
ENERGY_COEFFICIENTS = tuple(name for name, group in GROUPS.items() if group == "energy")


def _dot(coefficients: Coefficients, features: Mapping[str, np.ndarray | float], group: str) -> np.ndarray | float:
    return sum((getattr(coefficients, name) * value for name, value in features.items() if GROUPS[name] == group), 0.0)


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """Per-frame figures, each shaped (N,), under one device profile and mapping.

    ``chip_s``: on-chip latency of one frame alone (the layers one after another, as the devhub
    measures at batch 1). ``frame_s``: host-inclusive time per frame in a call of ``frames_per_call``
    frames: a single-pass mapping overlaps frames across its layers, so a call costs the sum of the
    layer times once, then the slowest layer's time per further frame; plus host time. ``dynamic_j``:
    floor subtracted. ``total_j``: floor power x frame time + dynamic, as ``model.statistics`` prints.
    ``layer_clocks`` and ``layer_dynamic_j`` are shaped (N, layers).
    """

    profile: str
    device: str
    clock_hz: float
    layer_names: tuple[str, ...]
    chip_s: np.ndarray
    frame_s: np.ndarray
    dynamic_j: np.ndarray
    total_j: np.ndarray
    layer_clocks: np.ndarray
    layer_dynamic_j: np.ndarray

    def means(self) -> dict[str, object]:
        """JSON-ready means over the frames, with the per-layer split (the ``simulate`` stats' shape)."""
        return {
            "profile": self.profile,
            "device": self.device,
            "time_per_frame_s": {"chip": float(np.mean(self.chip_s)), "frame": float(np.mean(self.frame_s))},
            "energy_per_frame_j": {"dynamic": float(np.mean(self.dynamic_j)), "total": float(np.mean(self.total_j))},
            "layers": {
                name: {
                    "chip_s": float(np.mean(self.layer_clocks[:, i])) / self.clock_hz,
                    "dynamic_j": float(np.mean(self.layer_dynamic_j[:, i])),
                }
                for i, name in enumerate(self.layer_names)
            },
        }


@dataclass(frozen=True)
class ModelCost:
    """A device profile bound to one mapped model: per layer, clocks and picojoules as
    ``fixed + active x [events > 0] + per_event x events (+ per_synop x synops, energy only)``.

    Why bound: the daemon evaluates this on every inference, and the features of a layer are linear in
    its events, its synaptic ops and whether it is active, with weights that depend on the placement
    only; so they are read off :func:`layer_features` once (no second copy of the formula) and each
    inference costs a few array operations.
    """

    profile: DeviceProfile
    mapping: ModelMapping
    clk: np.ndarray  # (3, layers): fixed, active, per_event
    pj: np.ndarray  # (4, layers): fixed, active, per_event, per_synop
    host_long_call_s: float  # host time per frame in a long call (:func:`host_features` at infinity)

    @classmethod
    def bind(cls, profile: DeviceProfile, mapping: ModelMapping) -> ModelCost:
        c = profile.coefficients
        # probe frames: 0 events; 1 event; 2 events (the slope and, from it, the step at the first event);
        # 1 synop and no event (not physical, but the form is linear in it)
        events, synops = np.array([0.0, 1.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])
        clk, pj = np.zeros((3, len(mapping.layers))), np.zeros((4, len(mapping.layers)))
        for i, place in enumerate(mapping.layers):
            features = layer_features(place, Activity(events, synops))
            k = np.broadcast_to(_dot(c, features, "clock"), events.shape)
            e = np.broadcast_to(_dot(c, features, "energy"), events.shape)
            # frame 1 = fixed + active + 1 x per_event, frame 2 = fixed + active + 2 x per_event
            clk[:, i] = k[0], 2 * k[1] - k[2] - k[0], k[2] - k[1]
            pj[:, i] = e[0], 2 * e[1] - e[2] - e[0], e[2] - e[1], e[3] - e[0]
        return cls(profile, mapping, clk, pj, float(_dot(c, host_features(mapping, math.inf), "host")))

    def evaluate(self, events: np.ndarray, synops: np.ndarray, frames_per_call: float = math.inf) -> Estimate:
        """Every figure per frame; ``events`` and ``synops`` shaped (N, layers), in mapping order.

        ``frames_per_call``: frames per ``forward`` call, over which the per-call host overhead and
        the pipeline's fill are spread (default: a long batch).
        """
        c = self.profile.coefficients
        if not frames_per_call >= 1:
            raise DataError(f"frames per call must be at least 1, got {frames_per_call}")
        events = np.asarray(events, dtype=np.float64)
        synops = np.asarray(synops, dtype=np.float64)
        if events.ndim != 2 or events.shape[1] != self.clk.shape[1] or synops.shape != events.shape:
            raise DataError(f"activity of shape {events.shape} for a mapping of {self.clk.shape[1]} layers")
        active = events > 0
        clocks = self.clk[0] + active * self.clk[1] + events * self.clk[2]
        dynamic = PJ * (self.pj[0] + active * self.pj[1] + events * self.pj[2] + synops * self.pj[3])
        total_clocks = clocks.sum(axis=1)
        chip = total_clocks / c.clock_hz
        if self.mapping.multi_pass or frames_per_call <= 1:
            # passes run one after another (the NPs are reprogrammed between them): no overlap
            per_frame = chip
        else:
            slowest = clocks.max(axis=1) / c.clock_hz
            per_frame = slowest if math.isinf(frames_per_call) else slowest + (chip - slowest) / frames_per_call
        host = (
            self.host_long_call_s
            if math.isinf(frames_per_call)
            else float(_dot(c, host_features(self.mapping, frames_per_call), "host"))
        )
        frame = per_frame + host
        dynamic_total = dynamic.sum(axis=1)
        return Estimate(
            self.profile.version,
            self.profile.device,
            c.clock_hz,
            tuple(p.name for p in self.mapping.layers),
            chip,
            frame,
            dynamic_total,
            c.floor_power_w * frame + dynamic_total,
            clocks,
            dynamic,
        )

    def evaluate_counters(self, counters: Sequence[LayerCounters], frames_per_call: float = math.inf) -> Estimate:
        """:meth:`evaluate` from the simulator's counters (layers named as in the mapping).

        One frame in a long call (the daemon's usual case) takes a plain-float path: the same
        operations on the same precomputed weights, about 10x faster than a dozen NumPy calls on
        one-element arrays (bench/simulator.py prints the cost beside the simulator's).
        """
        names = tuple(layer.name for layer in counters)
        if names != tuple(place.name for place in self.mapping.layers):
            raise DataError(
                f"counters of layers {list(names)} given to the mapping of "
                f"{[place.name for place in self.mapping.layers]}"
            )
        if counters[0].frames == 1 and math.isinf(frames_per_call) and not self.mapping.multi_pass:
            return self._one_frame(
                [float(layer.input_events[0]) for layer in counters],
                [float(layer.synaptic_ops[0]) for layer in counters],
            )
        activity = [Activity.of(layer) for layer in counters]
        return self.evaluate(
            np.stack([a.input_events for a in activity], axis=1),
            np.stack([a.synaptic_ops for a in activity], axis=1),
            frames_per_call,
        )

    def _one_frame(self, events: list[float], synops: list[float]) -> Estimate:
        """:meth:`evaluate` of one frame in a long call of a single-pass mapping, in Python floats."""
        c = self.profile.coefficients
        clocks, dynamic = [], []
        for i, (e, s) in enumerate(zip(events, synops, strict=True)):
            on = 1.0 if e > 0 else 0.0
            clocks.append(self._clk[0][i] + on * self._clk[1][i] + e * self._clk[2][i])
            dynamic.append(PJ * (self._pj[0][i] + on * self._pj[1][i] + e * self._pj[2][i] + s * self._pj[3][i]))
        chip = sum(clocks) / c.clock_hz
        frame = max(clocks) / c.clock_hz + self.host_long_call_s
        dyn = sum(dynamic)
        return Estimate(
            self.profile.version,
            self.profile.device,
            c.clock_hz,
            tuple(p.name for p in self.mapping.layers),
            np.array([chip]),
            np.array([frame]),
            np.array([dyn]),
            np.array([c.floor_power_w * frame + dyn]),
            np.array([clocks]),
            np.array([dynamic]),
        )

    @functools.cached_property
    def _clk(self) -> list[list[float]]:
        return self.clk.tolist()

    @functools.cached_property
    def _pj(self) -> list[list[float]]:
        return self.pj.tolist()


@dataclass(frozen=True)
class DeviceProfile:
    """A versioned set of coefficients for one device, with the unit and source of each."""

    version: str
    device: str
    coefficients: Coefficients
    sources: Mapping[str, str]
    description: str = ""

    @classmethod
    def load(cls, path: Path) -> DeviceProfile:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: cannot read device profile: {error}") from error
        return cls.from_document(document, str(path))

    @classmethod
    def packaged(cls, device: str = DEFAULT_DEVICE) -> DeviceProfile:
        """The fitted profile shipped with the runtime (``edge_runtime/data/devices/<device>.json``)."""
        if device not in DEVICES:
            raise ConfigError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
        packaged = resources.files("edge_runtime") / "data" / "devices" / f"{device}.json"
        return cls.from_document(json.loads(packaged.read_text(encoding="utf-8")), f"{device}.json")

    @classmethod
    def chosen(cls, device: str, path: str | Path | None, advice: str) -> DeviceProfile:
        """The profile file at ``path`` if given, else the packaged one of ``device``; a file for another
        device is refused in one line ending with ``advice`` (how to make them agree)."""
        if not path:
            return cls.packaged(device)
        profile = cls.load(Path(path))
        if profile.device != device:
            raise ConfigError(f"{path}: a profile for {profile.device}, but the device is {device!r}: {advice}")
        return profile

    @classmethod
    def from_document(cls, document: object, origin: str) -> DeviceProfile:
        """Build from parsed JSON, collecting every problem into one error line naming ``origin``."""
        if not isinstance(document, dict):
            raise ConfigError(f"{origin}: device profile must be a JSON object")
        problems = []
        if document.get("schema") != SCHEMA:
            problems.append(f"schema must be {SCHEMA!r}, got {document.get('schema')!r}")
        for key in ("version", "device"):
            if not isinstance(document.get(key), str) or not document.get(key):
                problems.append(f"{key} must be a non-empty string")
        entries = document.get("coefficients")
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: " + "; ".join([*problems, "coefficients must be an object"]))
        unknown = sorted(set(entries) - set(UNITS))
        missing = [name for name in UNITS if name not in entries]
        if unknown:
            problems.append(f"unknown coefficients {unknown} (known: {', '.join(UNITS)})")
        if missing:
            problems.append(f"missing coefficients {missing}")
        values, sources = {}, {}
        for name in UNITS:
            if name in entries:
                value, source, problem = _entry(name, entries[name])
                values[name], sources[name] = value, source
                problems.extend([problem] if problem else [])
        if problems:
            raise ConfigError(f"{origin}: " + "; ".join(problems))
        return cls(
            document["version"],
            document["device"],
            Coefficients(**values),
            sources,
            str(document.get("description", "")),
        )

    def to_document(self) -> dict:
        """The JSON form: every coefficient with its value, unit and source side by side."""
        entries = {
            name: {"value": getattr(self.coefficients, name), "unit": unit, "source": self.sources.get(name, "")}
            for name, unit in UNITS.items()
        }
        return {
            "schema": SCHEMA,
            "version": self.version,
            "device": self.device,
            "description": self.description,
            "coefficients": entries,
        }

    def save(self, path: Path) -> None:
        """Write atomically (temp file + ``os.replace``) so a reader never sees half a file."""
        data = (json.dumps(self.to_document(), indent=2) + "\n").encode()
        files.atomic_write(Path(path), lambda handle: handle.write(data))

    def bind(self, mapping: ModelMapping) -> ModelCost:
        """This profile's costs for one mapped model (see :class:`ModelCost`)."""
        return ModelCost.bind(self, mapping)

    def estimate(
        self, mapping: ModelMapping, activity: Sequence[Activity], frames_per_call: float = math.inf
    ) -> Estimate:
        """Every figure per frame for one mapped model; ``activity`` per layer in model order."""
        if len(activity) != len(mapping.layers):
            raise DataError(f"{len(activity)} layers of activity for a mapping of {len(mapping.layers)} layers")
        return self.bind(mapping).evaluate(
            np.stack([a.input_events for a in activity], axis=1),
            np.stack([a.synaptic_ops for a in activity], axis=1),
            frames_per_call,
        )


def _entry(name: str, entry: object) -> tuple[float, str, str | None]:
    """Parse one coefficient entry into (value, source, problem or None)."""
    if not isinstance(entry, dict):
        return math.nan, "", f"{name} must be an object with value, unit and source"
    value, unit, source = entry.get("value"), entry.get("unit"), entry.get("source", "")
    if unit != UNITS[name]:
        return math.nan, "", f"{name}: unit must be {UNITS[name]!r}, got {unit!r}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return math.nan, "", f"{name}: value must be a finite non-negative number, got {value!r}"
    if name == "clock_hz" and value == 0:
        return math.nan, "", "clock_hz must be positive"
    return float(value), str(source), None
