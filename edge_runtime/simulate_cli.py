"""``edge-runtime simulate``: run a .fbz on frames with our simulator, offline.

Writes what ``akida.Model(MODEL).forward(FRAMES)`` would return (``outputs``) and every layer's
per-frame counters to one ``.npz`` (keys ``<layer>/<counter>``, as :mod:`edge_runtime.calibrate_cli`
reads them), and optionally a JSON summary with per-layer means and the modelled time and energy per
frame (energy/latency model v2) on a device: the .fbz is mapped with akida's own mapper on that
virtual device (akida is part of every install), or a bundle's recorded mapping is used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import files
from .akida_model import load_model
from .bundle import read_manifest
from .counters import Counters
from .energy import DEFAULT_DEVICE, DEVICES, DeviceProfile
from .energy_inputs import ModelMapping
from .errors import ConfigError, DataError
from .mapping import DEFAULT_MAP_MODE, MAP_MODES, map_model
from .simulator import Simulator

DESCRIPTION = """\
Run MODEL.fbz on FRAMES.npy with our bit-exact simulator, offline. Writes what
akida.Model(MODEL).forward(FRAMES) would return ("outputs") and every layer's per-frame counters
to one .npz (keys LAYER/COUNTER, as "edge-runtime calibrate --counters" reads them), and optionally
a JSON summary with per-layer means and the modelled energy per frame.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run a .fbz model on frames with the NumPy simulator (no board needed)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, metavar="MODEL.fbz", help="Akida 1.0 model saved by akida")
    parser.add_argument(
        "frames", type=Path, metavar="FRAMES.npy", help="uint8 frames, (N, X, Y, C), or (N, X, Y) for one channel"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.npz", help="outputs and per-frame counters")
    parser.add_argument(
        "--stats",
        type=Path,
        metavar="STATS.json",
        help="per-layer means, and modelled time and energy per frame: time_per_frame_s {chip, frame}, "
        "energy_per_frame_j {dynamic, total}, the same per layer",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULT_DEVICE,
        help=f"device whose profile prices the counters (default: {DEFAULT_DEVICE})",
    )
    parser.add_argument(
        "--device-profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="a profile from edge-runtime calibrate instead of the packaged one for --device",
    )
    parser.add_argument(
        "--map-mode",
        choices=MAP_MODES,
        default=DEFAULT_MAP_MODE,
        help=f"akida MapMode for mapping the model on --device (default: {DEFAULT_MAP_MODE})",
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="use the mapping a bundle (directory or manifest.json) recorded for --device instead of mapping the .fbz",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for target in (args.out, args.stats):
        if target is not None:
            files.check_target(target)  # before the (possibly long) run, not after it
    model = load_model(args.model)
    frames = load_frames(args.frames, model.input_shape)
    profile = DeviceProfile.chosen(args.device, args.device_profile, "pass --device with the profile's device")
    mapping = device_mapping(args) if args.stats is not None else None
    result = Simulator(model).run(frames)
    arrays: dict[str, Any] = {"outputs": result.outputs, **result.counters.to_arrays()}
    files.atomic_write(args.out, lambda f: np.savez(f, **arrays))
    if args.stats is not None:
        assert mapping is not None
        document = {
            "model": str(args.model),
            "frames_file": str(args.frames),
            **stats(result.counters, profile, mapping),
        }
        files.atomic_write(args.stats, lambda f: f.write((json.dumps(document, indent=2) + "\n").encode()))
    print(f"simulated {len(frames)} frames: outputs {result.outputs.dtype}{list(result.outputs.shape)} -> {args.out}")
    return 0


def load_frames(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 frames shaped (N, *input_shape); (N, X, Y) gains the channel axis of a one-channel model."""
    frames = files.load_frames(path)
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    if frames.shape[1:] != input_shape:
        raise DataError(f"{path}: frames have shape {frames.shape}; the model takes {expected}")
    return np.ascontiguousarray(frames)


def device_mapping(args: argparse.Namespace) -> ModelMapping:
    """The mapping to price the counters with: a bundle's recorded one, or akida's mapper on the .fbz."""
    if args.mapping is None:
        import akida  # lazy: only mapping needs the engine

        return map_model(akida.Model(str(args.model)), args.device, args.map_mode)
    manifest, _ = read_manifest(args.mapping.parent if args.mapping.name == "manifest.json" else args.mapping)
    if args.device not in manifest.mappings:
        raise ConfigError(
            f"{args.mapping}: records no mapping on {args.device} (it has {', '.join(manifest.mappings) or 'none'})"
        )
    return manifest.mappings[args.device]


def stats(counters: Counters, profile: DeviceProfile, mapping: ModelMapping) -> dict[str, object]:
    """Counter means, plus the modelled time and energy per frame (means; seconds and joules), whole
    model and per layer, with what they were modelled on."""
    estimate = profile.bind(mapping).evaluate_counters(counters.layers).means()
    summary = counters.summary()
    layers = summary["layers"]
    assert isinstance(layers, dict)
    per_layer = estimate["layers"]
    assert isinstance(per_layer, dict)
    for name, figures in per_layer.items():
        layers[name].update(figures)
    return {
        **summary,
        "device": profile.device,
        "profile": profile.version,
        "map_mode": mapping.mode,
        "multi_pass": mapping.multi_pass,
        "time_per_frame_s": estimate["time_per_frame_s"],
        "energy_per_frame_j": estimate["energy_per_frame_j"],
        "conventions": {
            "chip": "on-chip latency of one frame",
            "frame": "host-inclusive, in a long forward call",
            "dynamic": "floor subtracted",
            "total": "floor x frame time + dynamic (model.statistics)",
        },
    }
