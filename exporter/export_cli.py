"""``edge-export export|inspect|verify``: build a verified bundle, show what it holds, re-check it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from edge_runtime import files, mnist
from edge_runtime.bundle import Manifest, file_problems, read_manifest
from edge_runtime.energy import EnergyModel
from edge_runtime.errors import BundleError, DataError

log = logging.getLogger(__name__)

CACHE_HELP = "MNIST cache directory (default: as for 'edge-export data fetch')"


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="turn a trained run into a verified bundle (.fbz + ONNX + manifest)",
        description="Build model.fbz with akida's API and an exact model.onnx from RUN_DIR's integer parameters, "
        "check that the model maps fully on AKD1000 and that the Akida engine, the simulator and onnxruntime "
        "agree on all 10,000 MNIST test frames, measure accuracy, sparsity and modelled energy, then write the "
        "bundle atomically. Nothing is written if any check fails.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory from 'edge-export train'")
    export.add_argument("--out", type=Path, required=True, metavar="BUNDLE_DIR", help="bundle directory to write")
    export.add_argument("--name", default=None, help="model name in the manifest (default: the --out directory's name)")
    export.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    export.add_argument("--energy-model", type=Path, default=None, metavar="FILE",
                        help="energy model coefficients (default: the packaged energy-model-v1.json)")
    export.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    export.set_defaults(func=_export)

    inspect = sub.add_parser("inspect", help="summarise a bundle and re-check its hashes",
                             description="Print layers, shapes, bits, NPs and expected metrics from the manifest, "
                             "and re-check every file's SHA-256 (exit 2 if any is missing or altered).")
    inspect.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    inspect.set_defaults(func=_inspect)

    verify = sub.add_parser(
        "verify",
        help="re-run the three-way agreement (Akida engine, simulator, onnxruntime) on a bundle",
        description="Load the bundle with the runtime's checks, run its golden vectors through all three backends, "
        "then check that they agree on FRAMES (default: the MNIST test set, if cached and the input is 28x28x1).",
    )
    verify.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    verify.add_argument("--frames", type=Path, default=None, metavar="FRAMES.npy",
                        help="uint8 frames (N, X, Y, C), or (N, X, Y) for one channel")
    verify.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    verify.set_defaults(func=_verify)


def _export(args: argparse.Namespace) -> int:
    from .bundle_build import export_run, mnist_eval_set  # onnx and onnxruntime: the export extra

    energy_model = EnergyModel.load(args.energy_model) if args.energy_model else EnergyModel.load_default()
    manifest = export_run(args.run_dir, args.out, mnist_eval_set(args.cache_dir), name=args.name,
                          energy_model=energy_model, force=args.force)
    print(f"wrote {args.out}")
    print(format_metrics(manifest))
    return 0


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
        raise DataError(f"{path}: frames are {frames.dtype} {frames.shape}, the bundle takes uint8 (N, "
                        f"{', '.join(map(str, shape))})")
    return frames


def _verify(args: argparse.Namespace) -> int:
    from .bundle_build import verify_bundle  # onnxruntime: the export extra

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


def format_metrics(manifest: Manifest) -> str:
    """The expected metrics, in one short paragraph."""
    m = manifest.metrics
    accuracy = f"accuracy {m.accuracy:.2%}, " if m.accuracy is not None else ""
    lines = [
        f"expected on {m.eval_set} ({m.frames} frames): {accuracy}{m.nonzero_activations_per_frame:.1f} non-zero "
        f"activations/frame, {m.nonzero_weights}/{m.weights} non-zero weights",
    ]
    if m.energy is not None:
        e = m.energy
        lines.append(f"modelled energy ({e.model_version}): chip {e.chip_j_per_frame * 1e6:.3f} uJ/frame, board "
                     f"{e.board_j_per_frame * 1e3:.3f} mJ/frame, {e.frame_time_s * 1e3:.3f} ms/frame")
    return "\n".join(lines)


def format_summary(path: Path, manifest: Manifest, digest: str, problems: dict[str, str]) -> str:
    """What ``inspect`` prints: identity, I/O contract, layers, expected metrics, file checks."""
    t, i, o, tc = manifest.target, manifest.input, manifest.output, manifest.toolchain
    training = manifest.training
    lines = [
        f"bundle   {path} ({manifest.format} v{manifest.format_version}, manifest {digest[:16]})",
        f"name     {manifest.name}",
        f"target   {t.device} (Akida IP {t.ip_version}): {t.sequences} sequence(s), {t.passes} pass(es), "
        f"NPs {_nps(t.nps)}",
        f"input    {i.name}: {i.dtype} (N, {_shape(i.shape)}) in [{i.value_range[0]}, {i.value_range[1]}]; "
        f"{i.preprocessing}",
        f"output   {o.name}: {o.dtype} (N, {_shape(o.shape)}) {o.kind}; labels {' '.join(o.labels)}; {o.decision}",
        f"built    akida {tc.get('akida')}, onnx {tc.get('onnx')} (opset {tc.get('onnx_opset')}), onnxruntime "
        f"{tc.get('onnxruntime')}, akida-edge {tc.get('akida-edge')}; run {training.run or '-'}, seed {training.seed}",
        "",
        f"{'layer':<10} {'kind':<19} {'in':>9} -> {'out':<9} {'kernel':<6} {'stride':<6} {'pool':<7} "
        f"{'bits w/i/a':<10} {'weights nz/all':>15} {'events/frame':>12} {'density':>7}  NPs",
    ]
    metrics = {layer.name: layer for layer in manifest.metrics.layers}
    for layer in manifest.layers:
        lm = metrics.get(layer.name)
        pool = f"{_shape(layer.pool.size)}/{layer.pool.stride[0]}" if layer.pool else "-"
        act = str(layer.act_bits) if layer.activation else "pot"
        lines.append(
            f"{layer.name:<10} {layer.kind:<19} {_shape(layer.input_shape):>9} -> {_shape(layer.output_shape):<9} "
            f"{_shape(layer.kernel):<6} {_shape(layer.stride):<6} {pool:<7} "
            f"{f'{layer.weights_bits}/{layer.input_bits}/{act}':<10} "
            f"{f'{layer.nonzero_weights}/{layer.weights}':>15} "
            f"{(f'{lm.nonzero_activations_per_frame:.1f}' if lm else '-'):>12} "
            f"{(f'{lm.activation_density:.1%}' if lm else '-'):>7}  {_nps(layer.nps)}"
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
