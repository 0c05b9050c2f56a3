"""``edge-runtime calibrate``: fit a device profile to a board's own measurements.

Two steps, as BrainChip's devhub measures (docs/energy-model.md, "Calibrating on your board"):

1. ``edge-runtime calibrate --measure MODEL.fbz --frames F.npy --out-dir DIR`` on the host with the
   board: runs sub-models and threshold shifts of MODEL on it, reading ``inference_clk``, host wall
   time, ``model.statistics`` energy and the power meter's floor, and writes ``DIR/samples.csv`` with
   each sample's ``.fbz`` and simulator counters;
2. ``edge-runtime calibrate --samples DIR/samples.csv --out NEW.json``: fits the profile's clock, host
   and energy coefficients to those samples (non-negative least squares, edge_runtime.energy_fit) and
   writes a new profile, printing how well each stage fits. Serve it with ``inference.device_profile``.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np

from . import counters, files
from .energy import DEFAULT_DEVICE, DEVICES, UNITS, DeviceProfile
from .energy_fit import Calibration, Sample, calibrate
from .energy_inputs import Activity
from .errors import ConfigError, DataError
from .mapping import DEFAULT_MAP_MODE, MAP_MODES, map_model

DESCRIPTION = """\
Fit a device profile of the energy/latency model to a board's own measurements, in two steps, as
BrainChip's devhub measures (docs/energy-model.md, "Calibrating on your board"):

  1. on the host with the board:
     edge-runtime calibrate --measure MODEL.fbz --frames FRAMES.npy --out-dir measured/
     runs sub-models and threshold shifts of MODEL, reading inference_clk, host wall time,
     model.statistics energy and the power meter's floor; writes measured/samples.csv with each
     sample's .fbz and simulator counters;
  2. edge-runtime calibrate --samples measured/samples.csv --out site.json
     fits the clock, host and energy coefficients (non-negative least squares) and writes a new
     profile, printing how well each stage fits. Serve it with inference.device_profile.
"""
NUMBER_COLUMNS = ("frames_per_call", "clocks", "frame_time_s", "energy_j", "floor_w")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="measure a model on an attached board, or fit a device profile to such measurements",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--samples",
        type=Path,
        metavar="SAMPLES.csv",
        help="measurements to fit (as --measure writes them): columns label, model, counters, "
        "map_mode, frames_per_call, clocks, frame_time_s, energy_j, floor_w; empty cells allowed; "
        "paths relative to the file",
    )
    action.add_argument(
        "--measure",
        type=Path,
        metavar="MODEL.fbz",
        help="measure this model on the attached Akida board (needs --frames and --out-dir)",
    )
    parser.add_argument("--frames", type=Path, metavar="FRAMES.npy", help="--measure: uint8 frames to run")
    parser.add_argument("--out-dir", type=Path, metavar="DIR", help="--measure: where samples.csv and its files go")
    parser.add_argument(
        "--shifts",
        default="-2,2,4",
        metavar="N[,N...]",
        help="--measure: threshold shifts of the whole model, for density sweeps (default -2,2,4)",
    )
    parser.add_argument(
        "--map-mode",
        choices=MAP_MODES,
        default=DEFAULT_MAP_MODE,
        help=f"--measure: akida MapMode on the board (default {DEFAULT_MAP_MODE})",
    )
    parser.add_argument("--out", type=Path, help="--samples: device profile to write (JSON)")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help=f"--samples: the device measured (default {DEFAULT_DEVICE}); its packaged profile is the base",
    )
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="--samples: profile to start from and to keep where the data cannot set it",
    )
    parser.add_argument(
        "--fix",
        default="",
        metavar="NAME[,NAME...]",
        help="--samples: coefficients to hold at their base value, comma-separated",
    )
    parser.add_argument(
        "--version", default=None, help="--samples: version of the new profile (default BASE+calibrated)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.measure is not None:
        return _measure(args)
    if args.out is None:
        raise ConfigError("--samples needs --out NEW.json")
    files.check_target(args.out)  # before the fit is printed, not after
    base = DeviceProfile.chosen(args.device, args.base, "pass --device with the profile's device")
    fix = [name.strip() for name in args.fix.split(",") if name.strip()]
    version = args.version or f"{base.version}+calibrated"
    result = calibrate(base, load_samples(args.samples, base.device), version=version, fix=fix)
    print(format_calibration(result))
    result.profile.save(args.out)
    print(f'wrote {args.out} (version {version}); serve it with inference.device_profile = "{args.out}"')
    return 0


def _measure(args: argparse.Namespace) -> int:
    from .backends.akida_board import find_device
    from .board_measure import measure

    if args.frames is None or args.out_dir is None:
        raise ConfigError("--measure needs --frames FRAMES.npy and --out-dir DIR")
    try:
        shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--shifts {args.shifts!r}: expected integers such as -2,2,4") from None
    frames = files.load_frames(args.frames)
    samples = measure(args.measure, frames, args.out_dir, device=find_device(None), mode=args.map_mode, shifts=shifts)
    print(f"wrote {samples}; fit it with: edge-runtime calibrate --samples {samples} --out profile.json")
    return 0


def format_calibration(result: Calibration) -> str:
    """A few lines a person can check: what was fitted to what, and how well."""
    lines = []
    values = result.profile.coefficients
    for stage, fit in result.fits.items():
        errors = np.abs(fit.relative_errors)
        lines.append(
            f"{stage}: {len(fit.rows)} measurements, largest relative error {float(np.max(errors)):.3%}, "
            f"median {float(np.median(errors)):.3%}"
        )
        for name in fit.fitted:
            lines.append(f"  {name} = {getattr(values, name):.6g} {UNITS[name]}")
        if fit.at_zero:
            lines.append(f"  warning: non-negativity held {', '.join(fit.at_zero)} at 0 (the model may not fit)")
    if not result.fits:
        lines.append("no measurement could set any coefficient: the profile equals its base")
    return "\n".join(lines)


def load_samples(path: Path, device: str) -> list[Sample]:
    """Read samples.csv: each row's model is mapped with akida's mapper on ``device`` and its counters'
    mean activity taken; dynamic energy = energy - floor x frame time where both are known."""
    import akida  # lazy: only mapping needs the engine

    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read samples: {error}") from error
    if not rows or not {"model", "counters"} <= set(rows[0]):
        raise DataError(f"{path}: need a header with model, counters and measurement columns, and at least one row")
    samples, mappings = [], {}
    for number, row in enumerate(rows, start=2):
        where = f"{path}:{number}"
        values = {name: _number(where, name, row.get(name)) for name in NUMBER_COLUMNS}
        model_path = path.parent / row["model"]
        mode = row.get("map_mode") or DEFAULT_MAP_MODE
        if (model_path, mode) not in mappings:
            if not model_path.is_file():
                raise DataError(f"{where}: no such model file {model_path}")
            mappings[model_path, mode] = map_model(akida.Model(str(model_path)), device, mode)
        mapping = mappings[model_path, mode]
        layers = load_counters(path.parent / row["counters"]).layers
        if [layer.name for layer in layers] != [p.name for p in mapping.layers]:
            raise DataError(f"{where}: the counters' layers do not match {row['model']}'s")
        # per frame, not means: a layer's fixed cost is paid on the frames where it receives an event
        activity = tuple(
            Activity(np.asarray(layer.input_events, np.float64), np.asarray(layer.synaptic_ops, np.float64))
            for layer in layers
        )
        energy, floor, frame = values["energy_j"], values["floor_w"], values["frame_time_s"]
        dynamic = None if energy is None or floor is None or frame is None else energy - floor * frame
        if dynamic is not None and dynamic <= 0:
            raise DataError(f"{where}: energy_j {energy} is not above floor_w x frame_time_s: check the units")
        samples.append(
            Sample(
                row.get("label") or where,
                mapping,
                activity,
                values["frames_per_call"] or 1.0,
                values["clocks"],
                frame,
                dynamic,
                floor,
            )
        )
    return samples


def _number(where: str, name: str, text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {name} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise DataError(f"{where}: {name} must be a positive number, got {text!r}")
    return value


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
    return counters.Counters(
        tuple(
            counters.LayerCounters(
                name=name,
                **{counter: int(arrays[f"{name}/{counter}"]) for counter in counters.STATIC},  # type: ignore[arg-type]
                **{counter: arrays[f"{name}/{counter}"] for counter in counters.PER_FRAME},  # type: ignore[arg-type]
            )
            for name in names
        )
    )


def _check_counter(path: Path, key: str, array: np.ndarray, *, static: bool) -> None:
    """Static counts are integer scalars, per-frame ones 1-D numbers."""
    if static and (array.ndim != 0 or array.dtype.kind not in "iu"):
        raise DataError(f"{path}: {key} must be one integer, got {array.dtype} {array.shape}")
    if not static and (array.ndim != 1 or array.dtype.kind not in "iuf"):
        raise DataError(f"{path}: {key} must be one number per frame (1-D), got {array.dtype} {array.shape}")
