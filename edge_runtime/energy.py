"""Energy per frame on an AKD1000 board, from the event counters of one inference.

Two figures per frame (docs/energy-model.md derives every number):

* **chip energy**, the event-driven part: a cost per input pixel and per MAC of the dense input layer
  (the HRC block reads every pixel), a cost per input event and per synaptic operation of the other
  layers (the neural processors, NPs, only see non-zero activations), a cost per firing neuron;
* **board energy** = chip energy + floor power x frame time, which is what the board's power meter
  reports (``model.statistics``), frame time = fixed host time + pixel transfer + chip clocks, where
  the clocks grow with the events each layer processes.

The coefficients are data, not code: a versioned JSON file (``data/energy-model-v1.json`` by default)
that names each coefficient's unit and source. :func:`calibrate` fits them to board measurements with
non-negative least squares and writes a new file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import files
from .counters import PER_FRAME, LayerCounters
from .errors import ConfigError, DataError

SCHEMA = "akida-edge/energy-model/1"
DEFAULT_MODEL_FILE = "energy-model-v1.json"
PJ = 1e-12


def _unit(unit: str) -> dict[str, str]:
    return {"unit": unit}


@dataclass(frozen=True)
class Coefficients:
    """The model's parameters; each field's unit is part of the file schema (checked on load)."""

    input_pixel_pj: float = field(metadata=_unit("pJ/pixel"))
    input_mac_pj: float = field(metadata=_unit("pJ/MAC"))
    input_event_pj: float = field(metadata=_unit("pJ/event"))
    synaptic_op_pj: float = field(metadata=_unit("pJ/synop"))
    output_event_pj: float = field(metadata=_unit("pJ/event"))
    floor_power_w: float = field(metadata=_unit("W"))
    host_time_s: float = field(metadata=_unit("s/frame"))
    host_time_per_pixel_s: float = field(metadata=_unit("s/pixel"))
    clock_hz: float = field(metadata=_unit("Hz"))
    cycles_per_input_event: float = field(metadata=_unit("cycles/event"))
    cycles_per_synaptic_op: float = field(metadata=_unit("cycles/synop"))


UNITS: dict[str, str] = {f.name: f.metadata["unit"] for f in dataclasses.fields(Coefficients)}


@dataclass(frozen=True)
class Load:
    """The quantities the coefficients multiply, per frame, shaped (N,); zero where not applicable."""

    pixels: np.ndarray
    input_macs: np.ndarray
    input_events: np.ndarray
    synaptic_ops: np.ndarray
    output_events: np.ndarray

    def __add__(self, other: Load) -> Load:
        return Load(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(Load)))


@dataclass(frozen=True)
class EnergyTerm:
    """One additive part of board energy per frame.

    ``fixed`` marks what sparsity cannot shrink: host time, pixel transfer and the dense input layer
    (its pixels, MACs and clocks), everything but the input layer's own output events.
    """

    layer: str | None  # None: not tied to a layer (host time, pixel transfer)
    component: str
    joules: np.ndarray  # (N,)
    fixed: bool


@dataclass(frozen=True)
class EnergyEstimate:
    """Per-frame estimates, each shaped (N,); ``terms`` add up to ``board_j``."""

    chip_j: np.ndarray
    board_j: np.ndarray
    frame_time_s: np.ndarray
    terms: tuple[EnergyTerm, ...]

    @property
    def fixed_j(self) -> np.ndarray:
        """The part of board energy that activation or weight sparsity cannot reduce."""
        return sum((t.joules for t in self.terms if t.fixed), np.zeros_like(self.board_j))

    def by_layer(self) -> dict[str | None, np.ndarray]:
        """Board energy per layer (key None: host time and pixel transfer)."""
        groups: dict[str | None, np.ndarray] = {}
        for term in self.terms:
            groups[term.layer] = groups.get(term.layer, 0.0) + term.joules
        return groups

    def by_component(self) -> dict[str, np.ndarray]:
        """Board energy per component (``host_time``, ``synaptic_ops``, ``layer_time``, ...)."""
        groups: dict[str, np.ndarray] = {}
        for term in self.terms:
            groups[term.component] = groups.get(term.component, 0.0) + term.joules
        return groups


@dataclass(frozen=True)
class EventCost:
    """Marginal energy of one more event or non-zero weight, on the chip and on the board."""

    chip_j: float
    board_j: float


@dataclass(frozen=True)
class MarginalCost:
    """Per layer: what one more output event, and one more non-zero weight, cost per frame."""

    layer: str
    event: EventCost
    weight: EventCost


def layer_load(layer: LayerCounters, dense: bool) -> Load:
    """Map one layer's counters to the quantities the coefficients multiply.

    ``dense`` marks the input layer: the HRC reads every pixel and computes every MAC, so its load
    is its static ``inputs`` (pixels) and ``dense_synaptic_ops``, whatever the pixels hold.
    """
    _check_static(layer)
    fired = _per_frame(layer, "output_events")
    zeros = np.zeros_like(fired)
    if dense:
        pixels = np.full_like(fired, float(layer.inputs))
        return Load(pixels, _per_frame(layer, "dense_synaptic_ops"), zeros, zeros, fired)
    return Load(zeros, zeros, _per_frame(layer, "input_events"), _per_frame(layer, "synaptic_ops"), fired)


def layer_loads(layers: Sequence[LayerCounters]) -> list[Load]:
    """Each layer's load, checked to cover the same frames.

    The first layer is the input layer: every Akida 1.0 model this project builds starts with an
    InputConvolutional layer, which runs on the HRC fed with dense uint8 pixels.
    """
    if not layers:
        raise DataError("no layer counters given")
    loads = [layer_load(layer, dense=index == 0) for index, layer in enumerate(layers)]
    if len({load.pixels.shape for load in loads}) != 1:
        raise DataError("layer counters cover different numbers of frames")
    return loads


def total_load(layers: Iterable[LayerCounters]) -> Load:
    """The whole network's load per frame (what calibration regresses on)."""
    loads = layer_loads(tuple(layers))
    return sum(loads[1:], loads[0])


def _check_static(layer: LayerCounters) -> None:
    if not (layer.inputs > 0 and layer.weights > 0 and 0 <= layer.nonzero_weights <= layer.weights):
        raise DataError(
            f"layer {layer.name!r}: need inputs > 0 and 0 <= nonzero_weights <= weights > 0, got inputs "
            f"{layer.inputs}, weights {layer.weights}, nonzero_weights {layer.nonzero_weights}"
        )


def _per_frame(layer: LayerCounters, name: str) -> np.ndarray:
    values = np.asarray(getattr(layer, name), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise DataError(f"layer {layer.name!r}: {name} must be a non-empty 1-D array, got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise DataError(f"layer {layer.name!r}: {name} has negative or non-finite counts")
    return values


@dataclass(frozen=True)
class EnergyModel:
    """A versioned set of coefficients with the source of each."""

    version: str
    coefficients: Coefficients
    sources: Mapping[str, str]
    description: str = ""

    @classmethod
    def load(cls, path: Path) -> EnergyModel:
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: cannot read energy model: {error}") from error
        return cls.from_document(document, str(path))

    @classmethod
    def load_default(cls) -> EnergyModel:
        """The packaged estimate (``edge_runtime/data/energy-model-v1.json``)."""
        packaged = resources.files("edge_runtime").joinpath("data", DEFAULT_MODEL_FILE)
        return cls.from_document(json.loads(packaged.read_text(encoding="utf-8")), DEFAULT_MODEL_FILE)

    @classmethod
    def from_document(cls, document: object, origin: str) -> EnergyModel:
        """Build from parsed JSON, collecting every problem into one error line naming ``origin``."""
        if not isinstance(document, dict):
            raise ConfigError(f"{origin}: energy model must be a JSON object")
        problems = []
        if document.get("schema") != SCHEMA:
            problems.append(f"schema must be {SCHEMA!r}, got {document.get('schema')!r}")
        if not isinstance(document.get("version"), str) or not document.get("version"):
            problems.append("version must be a non-empty string")
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
        return cls(document["version"], Coefficients(**values), sources, str(document.get("description", "")))

    def to_document(self) -> dict:
        """The JSON form: every coefficient with its value, unit and source side by side."""
        c, sources = self.coefficients, self.sources
        entries = {
            name: {"value": getattr(c, name), "unit": unit, "source": sources.get(name, "")}
            for name, unit in UNITS.items()
        }
        return {
            "schema": SCHEMA,
            "version": self.version,
            "description": self.description,
            "coefficients": entries,
        }

    def save(self, path: Path) -> None:
        """Write atomically (temp file + ``os.replace``) so a reader never sees half a file."""
        path = Path(path)
        data = (json.dumps(self.to_document(), indent=2) + "\n").encode()
        files.atomic_write(path, lambda handle: handle.write(data))

    def estimate(self, counters: Iterable[LayerCounters]) -> EnergyEstimate:
        """Chip and board energy of each frame the counters cover (layers in model order), with the
        per-layer breakdown."""
        c = self.coefficients
        layers = tuple(counters)
        loads = layer_loads(layers)
        total = sum(loads[1:], loads[0])
        terms = [
            term
            for index, (layer, load) in enumerate(zip(layers, loads, strict=True))
            for term in _layer_terms(c, layer.name, load, dense=index == 0)
        ]
        host = np.full_like(total.pixels, c.floor_power_w * c.host_time_s)
        terms.append(EnergyTerm(None, "host_time", host, fixed=True))
        transfer = c.floor_power_w * c.host_time_per_pixel_s * total.pixels
        terms.append(EnergyTerm(None, "pixel_transfer", transfer, fixed=True))
        chip = sum(t.joules for t in terms if t.component in CHIP_COMPONENTS)
        board = sum(t.joules for t in terms)
        return EnergyEstimate(chip, board, frame_time_s(c, total), tuple(terms))

    def board_energy_of(self, counters: Iterable[LayerCounters]) -> BoardEnergy:
        """The board-energy part of :meth:`estimate` for one model, as a precomputed linear form.

        Why: the daemon needs one number per inference, and :meth:`estimate` (every term, checked,
        as arrays) costs about twice a whole simulator run at batch 1. The model is linear in the
        per-frame counters once a model's static counts are fixed, so evaluating :meth:`estimate`
        itself on unit counters gives the form's weights: no second copy of the formula to drift.
        """
        layers = tuple(counters)
        basis = [(index, name) for index in range(len(layers)) for name in PER_FRAME]
        # Row 0: every per-frame counter is 0; row k + 1: basis counter k alone is 1.
        unit = {(index, name): np.zeros(len(basis) + 1, np.int64) for index, name in basis}
        for row, key in enumerate(basis, start=1):
            unit[key][row] = 1
        units = [dataclasses.replace(layer, **{name: unit[index, name] for name in PER_FRAME})
                 for index, layer in enumerate(layers)]
        board = self.estimate(units).board_j
        terms = tuple((index, name, float(board[row] - board[0]))
                      for row, (index, name) in enumerate(basis, start=1) if board[row] != board[0])
        return BoardEnergy(_static_signature(layers), float(board[0]), terms)

    def event_cost(self, next_fanout: float | None) -> EventCost:
        """One more output event of a layer whose events each reach ``next_fanout`` non-zero weights
        in the next layer (``None`` for the last layer): it fires, and the next layer receives one
        input event and performs ``next_fanout`` synaptic operations."""
        c = self.coefficients
        chip = c.output_event_pj * PJ
        cycles = 0.0
        if next_fanout is not None:
            chip += (c.input_event_pj + next_fanout * c.synaptic_op_pj) * PJ
            cycles = c.cycles_per_input_event + next_fanout * c.cycles_per_synaptic_op
        return EventCost(chip, chip + c.floor_power_w * cycles / c.clock_hz)

    def weight_cost(self, uses_per_frame: float) -> EventCost:
        """One more non-zero weight in an NP layer, used ``uses_per_frame`` times per frame on average."""
        c = self.coefficients
        chip = uses_per_frame * c.synaptic_op_pj * PJ
        cycles = uses_per_frame * c.cycles_per_synaptic_op
        return EventCost(chip, chip + c.floor_power_w * cycles / c.clock_hz)

    def marginal_costs(self, counters: Iterable[LayerCounters]) -> tuple[MarginalCost, ...]:
        """Per layer, what one more output event and one more non-zero weight cost (training weights
        its sparsity penalties by these). Input-layer weights cost nothing extra: the HRC is dense."""
        layers = tuple(counters)
        layer_loads(layers)  # validates before any arithmetic
        costs = []
        for index, layer in enumerate(layers):
            following = layers[index + 1] if index + 1 < len(layers) else None
            event = self.event_cost(None if following is None else mean_fanout(following))
            uses = 0.0 if index == 0 else mean_uses_per_weight(layer)
            costs.append(MarginalCost(layer.name, event, self.weight_cost(uses)))
        return tuple(costs)


def _static_signature(layers: Iterable[LayerCounters]) -> tuple[tuple[str, int, int], ...]:
    """What tells one model's counters from another's: names and the static counts a form folds in."""
    return tuple((layer.name, layer.inputs, layer.nonzero_weights) for layer in layers)


@dataclass(frozen=True)
class BoardEnergy:
    """Board energy per frame as ``constant_j + sum(weight x counter)``: :meth:`EnergyModel.board_energy_of`."""

    layers: tuple[tuple[str, int, int], ...]  # the model it was built for: (name, inputs, non-zero weights)
    constant_j: float
    terms: tuple[tuple[int, str, float], ...]  # (layer index, per-frame counter, joules per count)

    def board_j(self, counters: Sequence[LayerCounters]) -> np.ndarray:
        """Joules per frame, shaped (N,); the counters must come from the model this form was built for
        (checked by layer names and the static counts the form folded in, which two bundles can share
        names but not usually counts)."""
        if _static_signature(counters) != self.layers:
            raise DataError(f"counters of layers {[layer.name for layer in counters]} given to the energy form "
                            f"of another model ({[name for name, _, _ in self.layers]})")
        if counters[0].frames == 1:
            # The daemon's usual batch: Python floats beat a dozen NumPy calls on 1-element arrays by
            # about 8x, and do the same float64 operations in the same order as the loop below.
            one = self.constant_j
            for index, name, weight in self.terms:
                one += weight * float(getattr(counters[index], name)[0])
            return np.array([one])
        total = np.full(counters[0].frames, self.constant_j)
        for index, name, weight in self.terms:
            total += weight * getattr(counters[index], name)
        return total


CHIP_COMPONENTS = ("input_pixels", "input_macs", "input_events", "synaptic_ops", "output_events")


def _layer_terms(c: Coefficients, name: str, load: Load, dense: bool) -> list[EnergyTerm]:
    """A layer's chip terms and the floor energy of its clocks; all but output events fixed if dense."""
    chip = {
        "input_pixels": c.input_pixel_pj * PJ * load.pixels,
        "input_macs": c.input_mac_pj * PJ * load.input_macs,
        "input_events": c.input_event_pj * PJ * load.input_events,
        "synaptic_ops": c.synaptic_op_pj * PJ * load.synaptic_ops,
        "output_events": c.output_event_pj * PJ * load.output_events,
    }
    applicable = ("input_pixels", "input_macs") if dense else ("input_events", "synaptic_ops")
    terms = [EnergyTerm(name, comp, chip[comp], dense) for comp in applicable]
    terms.append(EnergyTerm(name, "output_events", chip["output_events"], False))
    terms.append(EnergyTerm(name, "layer_time", c.floor_power_w * _clocks(c, load) / c.clock_hz, dense))
    return terms


def _clocks(c: Coefficients, load: Load) -> np.ndarray:
    """Chip clocks: each pixel (HRC) or input event (NP) takes cycles, and so may each synaptic op."""
    events = load.pixels + load.input_events
    operations = load.input_macs + load.synaptic_ops
    return c.cycles_per_input_event * events + c.cycles_per_synaptic_op * operations


def frame_time_s(c: Coefficients, load: Load) -> np.ndarray:
    """Modelled time per frame in a long batch: host part + pixel transfer + chip clocks."""
    return c.host_time_s + c.host_time_per_pixel_s * load.pixels + _clocks(c, load) / c.clock_hz


def mean_fanout(layer: LayerCounters) -> float:
    """Mean number of non-zero weights one input event of ``layer`` reaches.

    From static counts: dense ops per input (kernel positions x filters / stride^2 for a conv, units
    for a dense layer) times the non-zero weight fraction, so it is defined even for a silent layer.
    """
    return float(np.mean(layer.dense_synaptic_ops)) / layer.inputs * layer.nonzero_weights / layer.weights


def mean_uses_per_weight(layer: LayerCounters) -> float:
    """How often one weight of ``layer`` is used per frame: dense uses per weight x input event rate."""
    event_rate = float(np.mean(layer.input_events)) / layer.inputs
    return float(np.mean(layer.dense_synaptic_ops)) / layer.weights * event_rate


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


# --- Calibration -------------------------------------------------------------------------------------

# Above this condition number (columns scaled to unit norm) the data cannot tell coefficients apart:
# a 1e-6 relative change in the measurements could move them by ~100%.
MAX_CONDITION = 1e6
# The time coefficients share columns with the per-event energies, so from energy alone they are
# taken from the base model (see docs/energy-model.md, "Calibration").
TIME_SHAPE_COEFFICIENTS = ("host_time_per_pixel_s", "cycles_per_input_event", "cycles_per_synaptic_op")


@dataclass(frozen=True)
class Measurements:
    """Board measurements, one row per frame, or per batch with the batch's mean counters (the model is
    linear in the counters, so means are exact)."""

    energy_j: np.ndarray  # (N,) board energy per frame, as model.statistics reports it (incl. floor)
    frame_time_s: np.ndarray | None = None  # (N,) 1 / fps, when known


@dataclass(frozen=True)
class FitReport:
    """How well one least-squares stage fits, and which coefficients it set."""

    target: str
    fitted: tuple[str, ...]
    fixed: tuple[str, ...]
    at_zero: tuple[str, ...]  # fitted but held at 0 by the non-negativity constraint: suspect the model
    r2: float
    max_relative_error: float


@dataclass(frozen=True)
class Calibration:
    model: EnergyModel
    fits: tuple[FitReport, ...]


@dataclass(frozen=True)
class _Term:
    """``factor * coefficient * column`` is this term's share of the target, per row."""

    name: str
    column: np.ndarray
    factor: float
    intercept: bool = False


def _time_terms(c: Coefficients, load: Load) -> list[_Term]:
    return [
        _Term("host_time_s", np.ones_like(load.pixels), 1.0, intercept=True),
        _Term("host_time_per_pixel_s", load.pixels, 1.0),
        _Term("cycles_per_input_event", load.pixels + load.input_events, 1.0 / c.clock_hz),
        _Term("cycles_per_synaptic_op", load.input_macs + load.synaptic_ops, 1.0 / c.clock_hz),
    ]


def _chip_terms(load: Load) -> list[_Term]:
    return [
        _Term("input_pixel_pj", load.pixels, PJ),
        _Term("input_mac_pj", load.input_macs, PJ),
        _Term("input_event_pj", load.input_events, PJ),
        _Term("synaptic_op_pj", load.synaptic_ops, PJ),
        _Term("output_event_pj", load.output_events, PJ),
    ]


def calibrate(
    base: EnergyModel, load: Load, measured: Measurements, *, version: str, fix: Collection[str] = ()
) -> Calibration:
    """Fit coefficients to board measurements with non-negative least squares.

    With frame times: first frame time = host + transfer + clocks (fits the time coefficients), then
    energy = floor power x measured frame time + chip energy (fits floor power and per-event energies).
    With energy only: floor power and the time coefficients except host time are held at ``base``;
    energy - floor x modelled variable time = floor x host time + chip energy.
    Coefficients named in ``fix``, and those whose counter does not vary across rows (a constant cannot
    be told apart from host time), keep their ``base`` value.
    """
    unknown = sorted(set(fix) - set(UNITS))
    if unknown:
        raise ConfigError(f"cannot fix unknown coefficients {unknown} (known: {', '.join(UNITS)})")
    _check_measurements(load, measured)
    c = base.coefficients
    values = dataclasses.asdict(c)
    if measured.frame_time_s is None:
        floor = c.floor_power_w
        terms = [dataclasses.replace(t, factor=t.factor * floor) for t in _time_terms(c, load)]
        held = {*fix, *TIME_SHAPE_COEFFICIENTS}
        stages = [("board energy", terms + _chip_terms(load), measured.energy_j, held)]
    else:
        energy_terms = [_Term("floor_power_w", measured.frame_time_s, 1.0), *_chip_terms(load)]
        stages = [
            ("frame time", _time_terms(c, load), measured.frame_time_s, set(fix)),
            ("board energy", energy_terms, measured.energy_j, set(fix)),
        ]
    reports = []
    for target_name, terms, target, held in stages:
        fitted, report = _fit(target_name, terms, target, values, held)
        values.update(fitted)
        reports.append(report)
    sources = dict(base.sources)
    for report in reports:
        note = (
            f"fitted by calibrate to {len(measured.energy_j)} measurements of {report.target} "
            f"(R^2 {report.r2:.4f}, max relative error {report.max_relative_error:.2%}), from {base.version}"
        )
        sources.update(dict.fromkeys(report.fitted, note))
    description = f"{base.version} calibrated to {len(measured.energy_j)} board measurements"
    return Calibration(EnergyModel(version, Coefficients(**values), sources, description), tuple(reports))


def _check_measurements(load: Load, measured: Measurements) -> None:
    frames = load.pixels.shape[0]
    for name, values in (("energy", measured.energy_j), ("frame time", measured.frame_time_s)):
        if values is None:
            continue
        values = np.asarray(values)
        if values.shape != (frames,):
            given = values.shape[0] if values.ndim else 0
            raise DataError(f"{given} {name} measurements for {frames} counter rows")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise DataError(f"every measured {name} must be a positive finite number")


def _fit(
    target_name: str, terms: Sequence[_Term], target: np.ndarray, values: Mapping[str, float], held: set[str]
) -> tuple[dict[str, float], FitReport]:
    fixed = [t.name for t in terms if t.name in held or (not t.intercept and _is_constant(t.column))]
    free = [t for t in terms if t.name not in fixed]
    if not free:
        raise ConfigError(f"nothing left to fit for {target_name}: every coefficient is fixed")
    held_terms = [t for t in terms if t.name in fixed]
    known = sum((t.factor * values[t.name] * t.column for t in held_terms), np.zeros(len(target)))
    a = np.column_stack([t.factor * t.column for t in free])
    _check_identifiable(a, [t.name for t in free], target_name)
    solution = _scaled_nnls(a, target - known)
    prediction = known + a @ solution
    residual = target - prediction
    spread = float(np.sum((target - target.mean()) ** 2))
    report = FitReport(
        target=target_name,
        fitted=tuple(t.name for t in free),
        fixed=tuple(fixed),
        at_zero=tuple(t.name for t, x in zip(free, solution, strict=True) if x == 0),
        r2=1.0 - float(np.sum(residual**2)) / spread if spread > 0 else math.nan,
        max_relative_error=float(np.max(np.abs(residual) / target)),
    )
    return {t.name: float(x) for t, x in zip(free, solution, strict=True)}, report


def _is_constant(column: np.ndarray) -> bool:
    return float(np.ptp(column)) <= 1e-9 * float(np.max(np.abs(column)))


def _check_identifiable(a: np.ndarray, names: Sequence[str], target_name: str) -> None:
    rows, unknowns = a.shape
    if rows <= unknowns:
        raise DataError(
            f"{rows} measurements cannot fit {unknowns} coefficients of {target_name} ({', '.join(names)}): "
            f"need more than {unknowns}"
        )
    norms = np.linalg.norm(a, axis=0)
    idle = [name for name, norm in zip(names, norms, strict=True) if norm == 0]
    if idle:
        raise DataError(f"the {target_name} data cannot fit {', '.join(idle)}: its term is zero in every row")
    _, singular, vt = np.linalg.svd(a / norms, full_matrices=False)
    condition = singular[0] / singular[-1] if singular[-1] > 0 else math.inf
    if condition > MAX_CONDITION:
        tangled = [name for name, weight in zip(names, vt[-1], strict=True) if abs(weight) > 0.1]
        raise DataError(
            f"the {target_name} data cannot tell apart {', '.join(tangled)} (condition number "
            f"{condition:.3g}): measure more varied inputs or hold some with --fix"
        )


def _scaled_nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NNLS on unit-norm columns and target, so one tolerance suits counts of 1 and of 1e9."""
    column_norms = np.linalg.norm(a, axis=0)
    b_norm = float(np.linalg.norm(b)) or 1.0
    return nnls(a / column_norms, b / b_norm) * b_norm / column_norms


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minimise ||a x - b|| subject to x >= 0 (Lawson & Hanson 1974, Solving Least Squares Problems, ch. 23).

    Written here rather than taken from SciPy because the edge runtime's only numerical dependency is
    NumPy, and SciPy would add tens of MB to every edge host for one function. It is the classic
    active-set method; tests check it against brute-force enumeration of active sets.
    """
    rows, unknowns = a.shape
    tolerance = 10 * np.finfo(float).eps * max(rows, unknowns) * float(np.abs(a).sum(axis=0).max(initial=0.0))
    x = np.zeros(unknowns)
    passive = np.zeros(unknowns, dtype=bool)
    for _ in range(3 * unknowns + 1):
        gradient = a.T @ (b - a @ x)
        candidates = ~passive & (gradient > tolerance)
        if not candidates.any():
            return x
        passive[np.argmax(np.where(candidates, gradient, -np.inf))] = True
        while True:
            z = np.zeros(unknowns)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            blocking = passive & (z <= 0)
            if not blocking.any():
                break
            step = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + step * (z - x)
            passive &= x > tolerance
            x[~passive] = 0.0
        x = z
    raise DataError("non-negative least squares did not converge: the data are too ill-conditioned to fit")
