"""Fitting device-profile coefficients to measurements, apart from the model that evaluates them.

Why a module of its own: the daemon evaluates profiles on every inference and never fits one; fitting
is what ``edge-runtime calibrate`` and ``bench/energy_fit.py`` do, on rows of the very features
:mod:`edge_runtime.energy` multiplies its coefficients by, so the fitted formula is the evaluated one.

Fits minimise *relative* residuals (each row divided by its measured value) with non-negative least
squares: the measurements span five orders of magnitude (a 600-clock layer and a 50 M-clock model),
and every coefficient is a cost, which cannot be negative.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .energy import (
    CLOCK_COEFFICIENTS,
    ENERGY_COEFFICIENTS,
    GROUPS,
    HOST_COEFFICIENTS,
    PJ,
    UNITS,
    DeviceProfile,
)
from .energy_inputs import Activity, ModelMapping, host_features, layer_features
from .errors import ConfigError, DataError

# Above this condition number (columns scaled to unit norm) the data cannot tell coefficients apart:
# a 1e-6 relative change in the measurements could move them by ~100%.
MAX_CONDITION = 1e6


@dataclass(frozen=True)
class Row:
    """One measurement: ``target`` = sum(coefficient x features[coefficient]) (+ known terms)."""

    label: str
    features: Mapping[str, float]
    target: float


@dataclass(frozen=True)
class Fit:
    """A fitted group of coefficients and how well each row is reproduced."""

    values: dict[str, float]
    fitted: tuple[str, ...]
    held: tuple[str, ...]
    at_zero: tuple[str, ...]  # fitted but held at 0 by non-negativity: the data argue against the term
    rows: tuple[Row, ...]
    predicted: np.ndarray

    @property
    def relative_errors(self) -> np.ndarray:
        targets = np.array([row.target for row in self.rows])
        return (self.predicted - targets) / targets


def predict(rows: Sequence[Row], values: Mapping[str, float]) -> np.ndarray:
    """Each row's prediction under ``values`` (coefficients missing from ``values`` count as 0)."""
    return np.array([sum(values.get(name, 0.0) * x for name, x in row.features.items()) for row in rows])


def fit(rows: Sequence[Row], free: Sequence[str], held: Mapping[str, float]) -> Fit:
    """Fit ``free`` coefficients to ``rows`` by NNLS on relative residuals; ``held`` keep their values.

    Raises DataError (one line) when the rows cannot pin the free coefficients down: fewer rows than
    unknowns, a coefficient no row exercises, or two that always move together.
    """
    if not rows:
        raise DataError("no measurements to fit")
    if any(not (math.isfinite(row.target) and row.target > 0) for row in rows):
        raise DataError("every measured value must be a positive finite number")
    targets = np.array([row.target for row in rows])
    known = predict(rows, held)
    a = np.array([[row.features.get(name, 0.0) for name in free] for row in rows], dtype=np.float64) / targets[:, None]
    b = (targets - known) / targets
    _check_identifiable(a, list(free))
    solution = _scaled_nnls(a, b)
    values = {**held, **{name: float(x) for name, x in zip(free, solution, strict=True)}}
    return Fit(
        values,
        tuple(free),
        tuple(held),
        tuple(n for n, x in zip(free, solution, strict=True) if x == 0),
        tuple(rows),
        predict(rows, values),
    )


def _check_identifiable(a: np.ndarray, names: Sequence[str]) -> None:
    rows, unknowns = a.shape
    if rows < unknowns:
        raise DataError(
            f"{rows} measurements cannot fit {unknowns} coefficients ({', '.join(names)}): need at least {unknowns}"
        )
    norms = np.linalg.norm(a, axis=0)
    idle = [name for name, norm in zip(names, norms, strict=True) if norm == 0]
    if idle:
        raise DataError(
            f"the measurements cannot fit {', '.join(idle)}: no measurement exercises it "
            "(hold it with --fix or measure a layer that uses it)"
        )
    _, singular, vt = np.linalg.svd(a / norms, full_matrices=False)
    condition = singular[0] / singular[-1] if singular[-1] > 0 else math.inf
    if condition > MAX_CONDITION:
        tangled = [name for name, weight in zip(names, vt[-1], strict=True) if abs(weight) > 0.1]
        raise DataError(
            f"the measurements cannot tell apart {', '.join(tangled)} (condition number "
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


# --------------------------------------------------------------------------- rows from models


def summed(features: Iterable[Mapping[str, float | np.ndarray]], group: str) -> dict[str, float]:
    """Add per-layer features of one coefficient group into one row's features (means over frames)."""
    out: dict[str, float] = {}
    for layer in features:
        for name, value in layer.items():
            if GROUPS[name] == group:
                out[name] = out.get(name, 0.0) + float(np.mean(value))
    return out


def clock_features(mapping: ModelMapping, activity: Sequence[Activity]) -> dict[str, float]:
    """Features of a model's on-chip clocks per frame (mean over the activity's frames)."""
    return summed((layer_features(p, a) for p, a in zip(mapping.layers, activity, strict=True)), "clock")


def energy_features(mapping: ModelMapping, activity: Sequence[Activity]) -> dict[str, float]:
    """Features of a model's dynamic energy per frame, in joules (pJ coefficients x 1e-12)."""
    pj = summed((layer_features(p, a) for p, a in zip(mapping.layers, activity, strict=True)), "energy")
    return {name: value * PJ for name, value in pj.items()}


# --------------------------------------------------------------------------- calibration on a board


def _identifiable(names: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """The coefficients the rows can tell apart: exercised by some row, and not a second one whose
    feature is constant across rows (it would be indistinguishable from the first)."""
    out: list[str] = []
    constant_seen = False
    for name in names:
        column = np.array([row.features.get(name, 0.0) for row in rows])
        if not np.any(column):
            continue
        if np.ptp(column) <= 1e-12 * np.max(np.abs(column)):
            if constant_seen:
                continue
            constant_seen = True
        out.append(name)
    return out


@dataclass(frozen=True)
class Sample:
    """One board measurement of one mapped model on some frames: the model's mean activity per layer,
    and what the board reported per frame. Any of the measured figures may be missing (None)."""

    label: str
    mapping: ModelMapping
    activity: tuple[Activity, ...]
    frames_per_call: float
    clocks: float | None = None  # mean inference_clk per frame
    frame_s: float | None = None  # host-measured wall time per frame (1 / fps)
    dynamic_j: float | None = None  # energy above the floor per frame
    floor_w: float | None = None  # the power meter's floor during the run


@dataclass(frozen=True)
class Calibration:
    profile: DeviceProfile
    fits: dict[str, Fit]  # by stage: "clocks", "host", "dynamic energy"


def calibrate(
    base: DeviceProfile, samples: Sequence[Sample], *, version: str, fix: Collection[str] = ()
) -> Calibration:
    """Fit a profile to a board's measurements, stage by stage, as the devhub measures.

    1. clocks (``inference_clk``) of single-frame calls -> the clock coefficients (a long call overlaps
    frames across layers, so its clocks per frame are not the layers' sum); 2. frame time - measured
    chip time per frame -> the host coefficients; 3. dynamic energy -> the energy coefficients; floor
    power = the mean measured floor. A stage without measurements, coefficients named in ``fix``,
    exercised by no sample, or whose feature is the same constant as an earlier one's in every sample
    (e.g. bytes per frame when every sample has the same input), keep ``base``'s values.
    """
    unknown = sorted(set(fix) - set(UNITS))
    if unknown:
        raise ConfigError(f"cannot fix unknown coefficients {unknown} (known: {', '.join(UNITS)})")
    c = base.coefficients
    values = dataclasses.asdict(c)
    fits: dict[str, Fit] = {}
    stages = (
        (
            "clocks",
            CLOCK_COEFFICIENTS,
            [
                Row(s.label, clock_features(s.mapping, s.activity), s.clocks)
                for s in samples
                if s.clocks is not None and s.frames_per_call == 1
            ],
        ),
        (
            "host",
            HOST_COEFFICIENTS,
            [
                Row(s.label, host_features(s.mapping, s.frames_per_call), s.frame_s - s.clocks / c.clock_hz)
                for s in samples
                if s.frame_s is not None and s.clocks is not None
            ],
        ),
        (
            "dynamic energy",
            ENERGY_COEFFICIENTS,
            [
                Row(s.label, energy_features(s.mapping, s.activity), s.dynamic_j)
                for s in samples
                if s.dynamic_j is not None
            ],
        ),
    )
    for stage, names, rows in stages:
        if not rows:
            continue
        free = _identifiable([n for n in names if n not in fix], rows)
        held = {n: values[n] for n in names if n not in free}
        if not free:
            continue
        result = fit(rows, free, held)
        values.update(result.values)
        fits[stage] = result
    floors = [s.floor_w for s in samples if s.floor_w is not None]
    if floors and "floor_power_w" not in fix:
        values["floor_power_w"] = float(np.mean(floors))
    sources = dict(base.sources)
    for stage, result in fits.items():
        worst = float(np.max(np.abs(result.relative_errors)))
        note = (
            f"fitted by calibrate to {len(result.rows)} measurements of {stage} (largest relative error "
            f"{worst:.1%}), from {base.version}"
        )
        sources.update(dict.fromkeys(result.fitted, note))
    if floors and "floor_power_w" not in fix:
        sources["floor_power_w"] = f"mean of {len(floors)} measured floors (calibrate), from {base.version}"
    description = f"{base.version} calibrated to {len(samples)} board measurements"
    profile = DeviceProfile(version, base.device, type(c)(**values), sources, description)
    return Calibration(profile, fits)
