"""``edge-export export|inspect|verify``: build a verified bundle, show what it holds, re-check it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from edge_runtime import files, mnist
from edge_runtime.bundle import file_problems, read_manifest
from edge_runtime.energy import DEVICES, DeviceProfile
from edge_runtime.errors import BundleError, ConfigError, DataError
from edge_runtime.manifest import Manifest
from edge_runtime.mapping import DEFAULT_MAP_MODE, MAP_MODES

log = logging.getLogger(__name__)

CACHE_HELP = "MNIST cache directory (default: as for 'edge-export data fetch')"


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="turn a trained run into a verified bundle (.fbz + ONNX + manifest)",
        description="Build model.fbz with akida's API and an exact model.onnx from RUN_DIR's integer parameters, "
        "check that the model maps fully on AKD1000 and that the Akida engine, the simulator and onnxruntime "
        "agree on every frame of the run's test split (all 10,000 MNIST test frames for an MNIST run), measure "
        "accuracy, sparsity and modelled energy, then write the bundle atomically, with the run's class names. "
        "Nothing is written if any check fails.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory from 'edge-export train'")
    export.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    _bundle_arguments(export)
    export.set_defaults(func=_export)

    pack = sub.add_parser(
        "package",
        help="turn an existing Akida 1.0 .fbz into a verified bundle, on your own frames",
        description="Read MODEL.fbz (any Akida 1.0 model of InputData/InputConvolutional, Convolutional, "
        "SeparableConvolutional and FullyConnected layers), then build the bundle exactly as export does: "
        "exact ONNX, AKD1000 mapping, agreement of the Akida engine, the simulator and onnxruntime on every frame "
        "of FRAMES, golden vectors, expected sparsity and energy, and accuracy when LABELS are given.",
    )
    pack.add_argument("fbz", type=Path, metavar="MODEL.fbz", help="an Akida 1.0 model saved by akida or cnn2snn")
    pack.add_argument(
        "--frames",
        type=Path,
        required=True,
        metavar="FRAMES.npy",
        help="uint8 frames (N, X, Y, C) in the model's input shape, or (N, X, Y) for one channel",
    )
    pack.add_argument("--labels", type=Path, default=None, metavar="LABELS.npy", help="(N,) integer class labels")
    pack.add_argument(
        "--names", type=Path, default=None, metavar="NAMES.txt", help="class names, one a line (default: 0, 1, ...)"
    )
    _bundle_arguments(pack)
    pack.set_defaults(func=_package)

    inspect = sub.add_parser(
        "inspect",
        help="summarise a bundle and re-check its hashes",
        description="Print layers, shapes, bits, NPs and expected metrics from the manifest, "
        "and re-check every file's SHA-256 (exit 2 if any is missing or altered).",
    )
    inspect.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    inspect.set_defaults(func=_inspect)

    verify = sub.add_parser(
        "verify",
        help="re-run the three-way agreement (Akida engine, simulator, onnxruntime) on a bundle",
        description="Load the bundle with the runtime's checks, run its golden vectors through all three backends, "
        "then check that they agree on FRAMES (default: the MNIST test set, if cached and the input is 28x28x1).",
    )
    verify.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    verify.add_argument(
        "--frames",
        type=Path,
        default=None,
        metavar="FRAMES.npy",
        help="uint8 frames (N, X, Y, C), or (N, X, Y) for one channel",
    )
    verify.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    verify.set_defaults(func=_verify)


def _bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the bundle goes and what its modelled energy is computed with (export and package alike)."""
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: the --out directory's name)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument(
        "--device-profile",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a device profile (e.g. from edge-runtime calibrate) replacing the packaged one for "
        "its device; repeat for several devices (default: the packaged akd1000 and akd1500 profiles)",
    )
    parser.add_argument(
        "--map-mode",
        choices=MAP_MODES,
        default=DEFAULT_MAP_MODE,
        help=f"akida's MapMode for every device mapping (default: {DEFAULT_MAP_MODE}, akida's own)",
    )


def device_profiles(paths: list[Path]) -> dict[str, DeviceProfile]:
    """The packaged profile of every device, each replaced by a given file for the same device."""
    profiles = {device: DeviceProfile.packaged(device) for device in DEVICES}
    for path in paths:
        profile = DeviceProfile.load(path)
        if profile.device not in profiles:
            raise ConfigError(f"{path}: device {profile.device!r} is not one of {', '.join(DEVICES)}")
        profiles[profile.device] = profile
    return profiles


def _wrote(out: Path, manifest: Manifest) -> int:
    print(f"wrote {out}")
    print(format_metrics(manifest))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .bundle_build import export_run  # onnx and onnxruntime: the export extra

    return _wrote(
        args.out,
        export_run(
            args.run_dir,
            args.out,
            cache_dir=args.cache_dir,
            name=args.name,
            profiles=device_profiles(args.device_profile),
            map_mode=args.map_mode,
            force=args.force,
        ),
    )


def _package(args: argparse.Namespace) -> int:
    from .package import package  # onnx and onnxruntime: the export extra

    return _wrote(
        args.out,
        package(
            args.fbz,
            args.out,
            args.frames,
            labels_path=args.labels,
            names_path=args.names,
            name=args.name,
            profiles=device_profiles(args.device_profile),
            map_mode=args.map_mode,
            force=args.force,
        ),
    )


def _inspect(args: argparse.Namespace) -> int:
    manifest, digest = read_manifest(args.bundle)
    problems = file_problems(args.bundle, manifest)
    print(format_summary(args.bundle, manifest, digest, problems))
    if problems:
        raise BundleError(f"{args.bundle}: {len(problems)} file(s) missing or altered: re-copy the bundle")
    return 0


def _load_frames(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    frames = files.load_frames(path)
    if frames.shape[1:] != shape:
        raise DataError(
            f"{path}: frames are {frames.dtype} {frames.shape}, the bundle takes uint8 (N, "
            f"{', '.join(map(str, shape))})"
        )
    return frames


def _verify(args: argparse.Namespace) -> int:
    from .verify import verify_bundle  # onnxruntime: the export extra

    manifest, _ = read_manifest(args.bundle)
    frames, source = None, ""
    if args.frames is not None:
        frames, source = _load_frames(args.frames, manifest.input.shape), str(args.frames)
    elif manifest.input.shape == (28, 28, 1) and mnist.cache_path(args.cache_dir).is_file():
        frames, source = mnist.load_cache(mnist.cache_path(args.cache_dir)).test_images[..., None], "the MNIST test set"
    else:
        log.info("no MNIST cache (or the input is not 28x28x1): checking the golden vectors only")
    report = verify_bundle(args.bundle, frames)
    extra = f" and {report.extra_frames} frames of {source}" if report.extra_frames else ""
    print(f"{args.bundle}: OK: {report.golden_frames} golden vectors{extra} agree on {', '.join(report.backends)}")
    return 0


# --------------------------------------------------------------------------- formatting (pure)


def _shape(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _nps(nps: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in nps.items()) or "-"


def _placements(manifest: Manifest, layer: str) -> str:
    """A layer's NPs on every recorded device, e.g. ``64 CNP1 | 32 CNP1``."""
    parts = []
    for mapping in manifest.mappings.values():
        for place in mapping.layers:
            if place.name == layer:
                counts: dict[str, int] = {}
                for kind in place.np_types:
                    counts[kind] = counts.get(kind, 0) + 1
                parts.append(_nps(counts))
    return " | ".join(parts) or "-"


def format_metrics(manifest: Manifest) -> str:
    """The expected metrics, in one short paragraph."""
    m = manifest.metrics
    accuracy = f"accuracy {m.accuracy:.2%}, " if m.accuracy is not None else ""
    lines = [
        f"expected on {m.eval_set} ({m.frames} frames): {accuracy}{m.nonzero_activations_per_frame:.1f} non-zero "
        f"activations/frame, {m.nonzero_weights}/{m.weights} non-zero weights",
    ]
    for device, e in m.energy.items():
        mapping = manifest.mappings.get(device)
        passes = f", {mapping.passes} passes: multi-pass, least certain" if mapping and mapping.multi_pass else ""
        lines.append(
            f"modelled on {device.upper()} ({e.profile}, {mapping.mode if mapping else '?'} mapping{passes}): "
            f"total {e.total_j * 1e6:.1f} uJ/frame (model.statistics convention: floor x frame time + "
            f"dynamic), dynamic {e.dynamic_j * 1e6:.2f} uJ/frame, on-chip latency {e.chip_s * 1e6:.1f} us, "
            f"frame time {e.frame_s * 1e6:.1f} us in a long batch; one frame per call: total "
            f"{e.total_j_one_per_call * 1e6:.1f} uJ/frame, {e.frame_s_one_per_call * 1e6:.1f} us/frame"
        )
    return "\n".join(lines)


def format_summary(path: Path, manifest: Manifest, digest: str, problems: dict[str, str]) -> str:
    """What ``inspect`` prints: identity, I/O contract, layers, expected metrics, file checks."""
    t, i, o, tc = manifest.target, manifest.input, manifest.output, manifest.toolchain
    training = manifest.training
    width = max([10, *(len(layer.name) for layer in manifest.layers)])
    lines = [
        f"bundle   {path} ({manifest.format} v{manifest.format_version}, manifest {digest[:16]})",
        f"name     {manifest.name}",
        f"target   {t.device} (Akida IP {t.ip_version}): {t.sequences} sequence(s), {t.passes} pass(es), "
        f"NPs {_nps(t.nps)}",
        f"input    {i.name}: {i.dtype} (N, {_shape(i.shape)}) in [{i.value_range[0]}, {i.value_range[1]}]; "
        f"{i.preprocessing}",
        f"output   {o.name}: {o.dtype} (N, {_shape(o.shape)}) {o.kind}; labels {' '.join(o.labels)}; {o.decision}",
        *([f"classes  {', '.join(manifest.class_names)}"] if manifest.class_names is not None else []),
        f"built    akida {tc.get('akida')}, onnx {tc.get('onnx')} (opset {tc.get('onnx_opset')}), onnxruntime "
        f"{tc.get('onnxruntime')}, akida-edge {tc.get('akida-edge')}; run {training.run or '-'}, seed {training.seed}",
        "",
        f"{'layer':<{width}} {'kind':<22} {'in':>9} -> {'out':<9} {'kernel':<6} {'stride':<6} {'pool':<7} "
        f"{'bits w/i/a':<10} {'weights nz/all':>15} {'events/frame':>12} {'density':>7}  NPs "
        f"({', '.join(d.upper() for d in manifest.mappings)})",
    ]
    metrics = {layer.name: layer for layer in manifest.metrics.layers}
    for layer in manifest.layers:
        lm = metrics.get(layer.name)
        pool = f"{_shape(layer.pool.size)}/{layer.pool.stride[0]}" if layer.pool else "-"
        pool = "global" if layer.global_avg_pool else pool
        act = str(layer.act_bits) if layer.activation else "pot"
        lines.append(
            f"{layer.name:<{width}} {layer.kind:<22} {_shape(layer.input_shape):>9} -> "
            f"{_shape(layer.output_shape):<9} "
            f"{_shape(layer.kernel):<6} {_shape(layer.stride):<6} {pool:<7} "
            f"{f'{layer.weights_bits}/{layer.input_bits}/{act}':<10} "
            f"{f'{layer.nonzero_weights}/{layer.weights}':>15} "
            f"{(f'{lm.nonzero_activations_per_frame:.1f}' if lm else '-'):>12} "
            f"{(f'{lm.activation_density:.1%}' if lm else '-'):>7}  {_placements(manifest, layer.name)}"
        )
    v = manifest.verification
    lines += [
        "",
        format_metrics(manifest),
        f"verified {' = '.join(v.backends)} on all {manifest.metrics.frames} frames (outputs "
        f"{v.outputs_sha256[:16]}); ONNX float32 values <= {v.float32_max_abs} (< 2^24); "
        f"{'maps fully on ' + t.device if v.mapped_hw_only else 'NOT mapped on hardware'}",
        "",
        "files",
    ]
    for name, entry in manifest.files.items():
        status = problems.get(name, "ok")
        lines.append(f"  {name:<11} {entry.bytes:>9} B  sha256 {entry.sha256[:16]}  {status}")
    return "\n".join(lines)
