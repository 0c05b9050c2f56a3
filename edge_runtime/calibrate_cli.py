"""``edge-runtime calibrate``: fit the energy model to a board's own measurements.

Reads per-frame counters (from the simulator, on the frames the board ran) and the board's measured
energy per frame (``model.statistics``), fits the coefficients by non-negative least squares and
writes a new coefficient file, printing how well it fits. The maths is in :mod:`edge_runtime.energy`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np

from . import counters, energy, files
from .errors import ConfigError, DataError

# Measured-file columns and the factor to SI units; model.statistics reports mJ/frame and fps.
ENERGY_COLUMNS = {"energy_j": 1.0, "energy_mj": 1e-3}
TIME_COLUMNS = ("frame_time_s", "fps")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="fit the energy model's coefficients to board measurements",
        description="Fit the energy model to measured board energy per frame (non-negative least squares) "
        "and write a new coefficient file. With frame times the floor power and time coefficients are "
        "fitted too; with energy only they are taken from the base file. See docs/energy-model.md.",
    )
    parser.add_argument("--counters", type=Path, required=True, action="append",
                        help="per-frame layer counters of the frames the board ran (.npz of "
                        "Counters.to_arrays(), as the simulator writes them); repeat with --measured "
                        "for several networks")
    parser.add_argument("--measured", type=Path, required=True, action="append",
                        help="measured energy per frame for the --counters at the same position: .npy of "
                        "joules, or .csv with a header naming energy_j or energy_mj, optionally "
                        "frame_time_s or fps")
    parser.add_argument("--out", type=Path, required=True, help="coefficient file to write (JSON)")
    parser.add_argument("--base", type=Path, default=None,
                        help="coefficients to start from and to keep where the data cannot set them "
                        "(default: the packaged estimate)")
    parser.add_argument("--fix", default="", metavar="NAME[,NAME...]",
                        help="coefficients to hold at their base value, comma-separated")
    parser.add_argument("--floor-power-w", type=float, default=None,
                        help="this board's floor power in W (device.soc.power_meter.floor / 1000); "
                        "replaces the base value, and is kept unless frame times let the fit set it")
    parser.add_argument("--version", default=None,
                        help="version label of the new file (default: BASE+calibrated)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files.check_target(args.out)  # before the fit is printed, not after
    base = energy.EnergyModel.load(args.base) if args.base else energy.EnergyModel.load_default()
    if args.floor_power_w is not None:
        base = _with_floor_power(base, args.floor_power_w)
    if len(args.counters) != len(args.measured):
        raise ConfigError(
            f"give one --measured per --counters (got {len(args.measured)} and {len(args.counters)})"
        )
    load = _concatenate([energy.total_load(load_counters(path)) for path in args.counters])
    measured = _join([load_measurements(path) for path in args.measured])
    fix = [name.strip() for name in args.fix.split(",") if name.strip()]
    version = args.version or f"{base.version}+calibrated"
    result = energy.calibrate(base, load, measured, version=version, fix=fix)
    for report in result.fits:
        print(format_report(report, result.model))
    result.model.save(args.out)
    print(f"wrote {args.out} (version {version})")
    return 0


def format_report(report: energy.FitReport, model: energy.EnergyModel) -> str:
    """A few lines a person can check: what was fitted to what, and how well."""
    lines = [f"{report.target}: R^2 {report.r2:.6f}, max relative error {report.max_relative_error:.3%}"]
    for name in report.fitted:
        lines.append(f"  {name} = {getattr(model.coefficients, name):.6g} {energy.UNITS[name]}")
    if report.fixed:
        lines.append(f"  held at base value: {', '.join(report.fixed)}")
    if report.at_zero:
        lines.append(f"  warning: non-negativity held {', '.join(report.at_zero)} at 0 (model may not fit)")
    return "\n".join(lines)


def _concatenate(loads: list[energy.Load]) -> energy.Load:
    """Rows of several networks in one problem: only across networks do input-layer costs vary."""
    fields = [f.name for f in dataclasses.fields(energy.Load)]
    return energy.Load(*(np.concatenate([getattr(load, name) for load in loads]) for name in fields))


def _join(parts: list[energy.Measurements]) -> energy.Measurements:
    if len({part.frame_time_s is None for part in parts}) != 1:
        raise ConfigError("give frame times in every --measured file or in none")
    times = None if parts[0].frame_time_s is None else np.concatenate([p.frame_time_s for p in parts])
    return energy.Measurements(np.concatenate([p.energy_j for p in parts]), times)


def _with_floor_power(model: energy.EnergyModel, watts: float) -> energy.EnergyModel:
    if not watts > 0:
        raise ConfigError(f"--floor-power-w must be positive, got {watts}")
    coefficients = dataclasses.replace(model.coefficients, floor_power_w=watts)
    sources = {**model.sources, "floor_power_w": "given on the calibrate command line (--floor-power-w)"}
    return dataclasses.replace(model, coefficients=coefficients, sources=sources)


def load_counters(path: Path) -> counters.Counters:
    """Read counters saved from :meth:`counters.Counters.to_arrays`: ``<layer>/<counter>`` arrays, layers
    in model order (the order they first appear in the file). Arrays not named so are ignored."""
    what = "counters (an .npz of <layer>/<counter> arrays, as 'simulate --out' writes)"
    arrays = {key: value for key, value in files.load_arrays(path, what).items() if "/" in key}
    names = list(dict.fromkeys(key.rpartition("/")[0] for key in arrays))
    if not names:
        raise DataError(f"{path}: no <layer>/<counter> arrays in the counters file")
    wanted = [f"{name}/{counter}" for name in names for counter in (*counters.STATIC, *counters.PER_FRAME)]
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise DataError(f"{path}: counters file lacks {', '.join(missing)}")
    for key in wanted:
        _check_counter(path, key, arrays[key], static=key.rpartition("/")[2] in counters.STATIC)
    return counters.Counters(tuple(
        counters.LayerCounters(
            name=name,
            **{counter: int(arrays[f"{name}/{counter}"]) for counter in counters.STATIC},  # type: ignore[arg-type]
            **{counter: arrays[f"{name}/{counter}"] for counter in counters.PER_FRAME},  # type: ignore[arg-type]
        )
        for name in names
    ))


def _check_counter(path: Path, key: str, array: np.ndarray, *, static: bool) -> None:
    """Static counts are integer scalars, per-frame ones 1-D numbers."""
    if static and (array.ndim != 0 or array.dtype.kind not in "iu"):
        raise DataError(f"{path}: {key} must be one integer, got {array.dtype} {array.shape}")
    if not static and (array.ndim != 1 or array.dtype.kind not in "iuf"):
        raise DataError(f"{path}: {key} must be one number per frame (1-D), got {array.dtype} {array.shape}")


def load_measurements(path: Path) -> energy.Measurements:
    """Read measured energy per frame (and frame time, if given) in SI units."""
    if path.suffix == ".npy":
        values = files.load_array(path, "measured energy per frame (a 1-D .npy of joules)")
        if values.ndim != 1 or values.dtype.kind not in "iuf":
            raise DataError(f"{path}: a .npy of measurements must be 1-D numbers (J per frame), not "
                            f"{values.dtype} {values.shape}")
        return energy.Measurements(values.astype(np.float64))
    if path.suffix == ".csv":
        return _measurements_from_csv(path)
    raise DataError(f"{path}: measurements must be .npy or .csv")


def _measurements_from_csv(path: Path) -> energy.Measurements:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read measurements: {error}") from error
    allowed = (*ENERGY_COLUMNS, *TIME_COLUMNS)
    unknown = [name for name in header if name not in allowed]
    energy_names = [name for name in header if name in ENERGY_COLUMNS]
    time_names = [name for name in header if name in TIME_COLUMNS]
    if not rows or unknown or len(energy_names) != 1 or len(time_names) > 1:
        raise DataError(f"{path}: need a header with one of {', '.join(ENERGY_COLUMNS)}, optionally one of "
                        f"{', '.join(TIME_COLUMNS)}, and at least one row")
    energy_j = _column(path, rows, energy_names[0]) * ENERGY_COLUMNS[energy_names[0]]
    if not time_names:
        return energy.Measurements(energy_j)
    times = _column(path, rows, time_names[0])
    if time_names[0] == "fps":
        with np.errstate(divide="ignore"):
            times = 1.0 / times
    return energy.Measurements(energy_j, times)


def _column(path: Path, rows: list[dict[str, str]], name: str) -> np.ndarray:
    try:
        return np.array([float(row[name]) for row in rows])
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: column {name} must hold numbers: {error}") from error
