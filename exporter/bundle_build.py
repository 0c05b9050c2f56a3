"""Turn a trained run into a verified bundle, and re-verify bundles.

The export refuses to write anything an edge host could not trust (docs/bundle.md):

1. the ONNX graph must be provably exact (every value an integer below 2**24, no engine wrap-around);
2. the model must map entirely on AKD1000 hardware (``hw_only=True``); its mapping on every device the
   energy model knows (AKD1000, AKD1500) is recorded, with the modelled time and energy per frame;
3. the Akida engine (on the saved ``.fbz``), our simulator and onnxruntime (on the saved ``.onnx``)
   must give identical outputs on every evaluation frame, and so must the run's own recorded scores;
4. the finished directory must pass the runtime's own :func:`edge_runtime.bundle.load_bundle`.

Only then is the temporary directory moved into place with ``os.replace``, so a reader sees either
the old bundle or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import akida
import numpy as np
import onnx

from edge_runtime.akida_model import AkidaModel, Conv, Dense, InputConv, InputData, Layer, MaxPool, SepConv, load_model
from edge_runtime.bundle import (
    FBZ,
    FORMAT,
    FORMAT_VERSION,
    GOLDEN,
    MANIFEST,
    ONNX,
    Bundle,
    EnergyMetrics,
    Golden,
    InputSpec,
    LayerMetrics,
    Manifest,
    Metrics,
    OutputSpec,
    Target,
    Training,
    Verification,
    check_golden,
    file_entry,
    installed_version,
    layer_specs,
    load_bundle,
    write_golden,
    write_manifest,
)
from edge_runtime.counters import Counters
from edge_runtime.energy import DEVICES, DeviceProfile, ModelMapping
from edge_runtime.errors import BundleError, DataError, ModelError
from edge_runtime.mapping import DEFAULT_MAP_MODE, map_model
from edge_runtime.onnx_session import OnnxSession
from edge_runtime.simulator import Simulator, window_geometry

from . import mnist_fetch
from .akida_build import DeviceMapping, map_on_akd1000, to_akida
from .onnx_build import OPSET, check_exact, to_onnx

log = logging.getLogger(__name__)

RUN_FORMAT = "akida-v1-integer-params/1"  # spec.json written by exporter.train
BACKENDS = ("akida", "simulator", "onnxruntime")
GOLDEN_FRAMES = 16
MNIST_TEST = "mnist-test"
BATCH = 1000  # frames per engine call: bounds memory, not results
MNIST_PREPROCESSING = (
    "28x28 8-bit greyscale, white digit on black (0 = background), as in MNIST: the image array (rows, "
    "columns) reshaped to (28, 28, 1) with no transpose, scaling or normalisation; the input layer takes "
    "raw pixel values"
)


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Frames to verify and measure on, with what a deployer needs to know about them."""

    name: str
    frames: np.ndarray  # uint8 (N, X, Y, C)
    labels: np.ndarray | None  # (N,) class indices, or None
    class_names: tuple[str, ...]
    preprocessing: str


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """What the exporter takes from a run directory written by ``edge-export train``."""

    model: AkidaModel
    training: Training
    eval_scores: np.ndarray | None  # the run's own outputs on the first N test frames (int32 (N, classes))


@dataclass(frozen=True)
class VerifyReport:
    bundle: Bundle
    golden_frames: int
    extra_frames: int  # frames beyond the golden vectors on which the backends agreed
    backends: tuple[str, ...]


def mnist_eval_set(cache_dir: Path | None = None) -> EvalSet:
    """The MNIST test split (10,000 frames), fetched into the cache if needed."""
    data = mnist_fetch.load_mnist(cache_dir)
    return EvalSet(
        MNIST_TEST,
        data.test_images[..., None],
        data.test_labels.astype(np.int64),
        tuple(str(d) for d in range(10)),
        MNIST_PREPROCESSING,
    )


# --------------------------------------------------------------------------- reading a run


def _read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    out: np.ndarray = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def _conv_geometry(
    shape: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: Any,
    filters: int,
    pool: MaxPool | None,
    global_pool: bool = False,
) -> tuple[int, int, int]:
    """Output shape of a conv layer (after pooling), with the simulator's window rules."""
    x, y = (window_geometry(shape[a], kernel[a], stride[a], padding)[0] for a in (0, 1))
    if global_pool:
        return (1, 1, filters)
    if pool is not None:
        x, y = (window_geometry((x, y)[a], pool.size[a], pool.stride[a], padding)[0] for a in (0, 1))
    return (x, y, filters)


def model_from_spec(
    layers: Sequence[Mapping[str, Any]],
    input_shape: Sequence[int],
    arrays: Mapping[str, np.ndarray],
    input_bits: int = 8,
) -> AkidaModel:
    """Build the AkidaModel a run describes: layer hyper-parameters from ``spec.json`` and
    ``<name>.weights|weights_pw|threshold|act_step`` arrays in akida's layouts (FC weights
    (1, 1, inputs, units); a SeparableConvolutional's depthwise (KX, KY, C, 1) and pointwise
    ``weights_pw`` (1, 1, C, F)). A pool is ``{"type": "max", "size", "stride"}``,
    ``{"type": "global_average"}`` or null. Layers without activation may omit threshold and act_step
    (akida's defaults, 0 and 1, are used). ``input_bits`` below 8 puts an InputData of that many bits
    in front of the first layer (which is then not an InputConvolutional)."""
    shape: tuple[int, int, int] = tuple(int(v) for v in input_shape)  # type: ignore[assignment]  # (x, y, c)
    input_data = InputData("input", shape, input_bits) if input_bits < 8 else None
    built: list[Layer] = []
    for spec in layers:
        name = spec["name"]
        weights = np.asarray(arrays[f"{name}.weights"])
        pointwise = np.asarray(arrays[f"{name}.weights_pw"]) if spec["kind"] == "SeparableConvolutional" else None
        units = int((weights if pointwise is None else pointwise).shape[-1])
        common: dict[str, Any] = {
            "name": name,
            "input_shape": shape,
            "threshold": _read_only(arrays.get(f"{name}.threshold", np.zeros(units)), np.int32),
            "act_step": _read_only(arrays.get(f"{name}.act_step", np.ones(units)), np.float32),
            "act_bits": int(spec.get("act_bits", 1)),  # 1: akida's default, for a layer that does not fire
            "weights_bits": int(spec["weights_bits"]),
            "input_bits": input_bits,
            "activation": bool(spec["activation"]),
        }
        if spec["kind"] == "FullyConnected":
            layer: Layer = Dense(
                weights=_read_only(weights.reshape(-1, units), np.int8), output_shape=(1, 1, units), **common
            )
        else:
            pool_spec = spec.get("pool") or {}
            pool_type = pool_spec.get("type", "max") if pool_spec else None
            if pool_type not in (None, "max", "global_average"):
                raise ModelError(
                    f"layer '{name}': {pool_type} pooling; Akida 1.0 layers max-pool or global-average-pool"
                )
            global_pool = pool_type == "global_average"
            pool = MaxPool(tuple(pool_spec["size"]), tuple(pool_spec["stride"])) if pool_type == "max" else None
            kernel, stride = tuple(spec["kernel_size"]), tuple(spec.get("kernel_stride", (1, 1)))
            padding = spec.get("padding", "same")
            conv = {
                "weights": _read_only(weights, np.int8),
                "kernel": kernel,
                "stride": stride,
                "padding": padding,
                "pool": pool,
                "global_avg_pool": global_pool,
                "output_shape": _conv_geometry(shape, kernel, stride, padding, units, pool, global_pool),
            }
            if spec["kind"] == "InputConvolutional":
                layer = InputConv(padding_value=int(spec.get("padding_value", 0)), **common, **conv)
            elif spec["kind"] == "Convolutional":
                layer = Conv(**common, **conv)
            elif spec["kind"] == "SeparableConvolutional" and pointwise is not None:
                layer = SepConv(weights_pw=_read_only(pointwise, np.int8), **common, **conv)
            else:
                raise ModelError(f"layer '{name}': unknown kind {spec['kind']!r}")
        built.append(layer)
        shape, input_bits = layer.output_shape, layer.act_bits
    return AkidaModel(tuple(built), input_data)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; is {path.parent} a run directory written by `edge-export train`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable ({error})") from None


def load_run(run_dir: Path) -> TrainedRun:
    """Read ``spec.json`` + ``params.npz`` (hash-checked), ``config.json`` and the recorded test scores."""
    spec = _read_json(run_dir / "spec.json")
    if not isinstance(spec, dict) or spec.get("format") != RUN_FORMAT:
        raise ModelError(f"{run_dir / 'spec.json'}: not a run spec of format {RUN_FORMAT}")
    try:
        params, digest = run_dir / spec["params"]["file"], spec["params"]["sha256"]
        layers, input_shape = spec["layers"], spec["input"]["shape"]
    except (KeyError, TypeError):
        raise ModelError(
            f"{run_dir / 'spec.json'}: incomplete (needs params.file, params.sha256, layers, input.shape)"
        ) from None
    if not params.is_file():
        raise ModelError(f"{params}: missing; the run directory is incomplete")
    if hashlib.sha256(params.read_bytes()).hexdigest() != digest:
        raise ModelError(f"{params}: does not match the SHA-256 in spec.json; the run directory was altered")
    try:
        with np.load(params, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
            model = model_from_spec(layers, input_shape, arrays, int(spec["input"].get("bits", 8)))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{run_dir}: spec.json and params.npz do not describe a model ({error!r})") from None
    scores_file = run_dir / spec.get("eval_scores", {}).get("file", "eval_scores.npy")
    scores = np.load(scores_file, allow_pickle=False) if scores_file.is_file() else None
    config = _read_json(run_dir / "config.json")
    return TrainedRun(model, Training(run_dir.name, spec.get("seed"), config), scores)


# --------------------------------------------------------------------------- verification


def _first_disagreement(reference: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(number of frames that differ, index of the first); shape differences count every frame."""
    if reference.shape != other.shape or reference.dtype != other.dtype:
        return len(reference), 0
    wrong = np.flatnonzero((reference != other).reshape(len(reference), -1).any(axis=1))
    return int(wrong.size), int(wrong[0]) if wrong.size else -1


def three_way(fbz: Path, onnx_path: Path, model: AkidaModel, frames: np.ndarray) -> tuple[np.ndarray, Counters]:
    """Run the engine (on the .fbz), the simulator and onnxruntime on ``frames``; all must agree.

    Returns the agreed outputs and the simulator's counters; BundleError names the backend that
    disagrees with the engine, how often, and the first frame.
    """
    engine = akida.Model(str(fbz))
    runtime = OnnxSession(onnx_path)
    simulated = Simulator(model).run(frames)
    reference = np.concatenate([engine.forward(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)])
    others = {
        "the simulator": simulated.outputs,
        "onnxruntime": np.concatenate([runtime.infer(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]),
    }
    runtime.close()
    for backend, outputs in others.items():
        count, first = _first_disagreement(reference, outputs)
        if count:
            raise BundleError(
                f"{backend} disagrees with the Akida engine on {count} of {len(frames)} frames (first: frame {first})"
            )
    return reference, simulated.counters


def outputs_digest(outputs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(outputs, dtype=outputs.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _check_recorded_scores(scores: np.ndarray, outputs: np.ndarray) -> None:
    """The run's recorded test-set outputs (its training forward) must be the engine's, frame for frame."""
    ours = outputs[: len(scores)].reshape(min(len(scores), len(outputs)), -1)
    count, first = _first_disagreement(ours, scores[: len(ours)])
    if count:
        raise BundleError(
            f"the run's recorded scores differ from the Akida engine's on {count} of {len(ours)} "
            f"test frames (first: frame {first}): the trained parameters do not mean on the chip what "
            "they meant in training"
        )


# --------------------------------------------------------------------------- measuring


def modelled_energy(
    profiles: Mapping[str, DeviceProfile], mappings: Mapping[str, ModelMapping], counters: Counters
) -> dict[str, EnergyMetrics]:
    """Per device: the v2 model's time and energy per frame (means over the counters' frames)."""
    out = {}
    for device, profile in profiles.items():
        cost = profile.bind(mappings[device])
        estimate, single = cost.evaluate_counters(counters.layers), cost.evaluate_counters(counters.layers, 1)
        out[device] = EnergyMetrics(
            profile.version,
            float(np.mean(estimate.chip_s)),
            float(np.mean(estimate.frame_s)),
            float(np.mean(estimate.dynamic_j)),
            float(np.mean(estimate.total_j)),
            float(np.mean(single.frame_s)),
            float(np.mean(single.total_j)),
        )
    return out


def measure(
    model: AkidaModel, outputs: np.ndarray, counters: Counters, eval_set: EvalSet, energy: dict[str, EnergyMetrics]
) -> Metrics:
    """Accuracy, events, weights and modelled energy per frame, from the simulator's exact counters."""
    accuracy = None
    if eval_set.labels is not None:
        accuracy = float(np.mean(outputs.reshape(len(outputs), -1).argmax(axis=1) == eval_set.labels))
    means = [c.means() for c in counters]
    layers = tuple(
        LayerMetrics(
            name=c.name,
            input_events_per_frame=m["input_events"],
            nonzero_activations_per_frame=m["output_events"],
            activation_density=m["output_events"] / c.neurons,
            synaptic_ops_per_frame=m["synaptic_ops"],
        )
        for c, m in zip(counters, means, strict=True)
    )
    return Metrics(
        eval_set=eval_set.name,
        frames=len(outputs),
        accuracy=accuracy,
        nonzero_activations_per_frame=sum(
            m.nonzero_activations_per_frame for m, layer in zip(layers, model.layers, strict=True) if layer.activation
        ),
        nonzero_weights=sum(c.nonzero_weights for c in counters),
        weights=sum(c.weights for c in counters),
        layers=layers,
        energy=energy,
    )


# --------------------------------------------------------------------------- writing


def toolchain() -> dict[str, str]:
    return {
        "akida": installed_version("akida"),
        "onnx": installed_version("onnx"),
        "onnx_opset": str(OPSET),
        "onnxruntime": installed_version("onnxruntime"),
        "numpy": installed_version("numpy"),
        "akida-edge": installed_version("akida-edge"),
        "python": platform.python_version(),
    }


def _build_into(
    directory: Path,
    model: AkidaModel,
    name: str,
    eval_set: EvalSet,
    training: Training,
    profiles: Mapping[str, DeviceProfile],
    map_mode: str,
    recorded_scores: np.ndarray | None,
) -> Manifest:
    bounds = check_exact(model)  # fail fast, before akida or the evaluation run
    to_akida(model).save(str(directory / FBZ))
    shipped = load_model(directory / FBZ)  # everything below uses what was saved
    onnx.save(to_onnx(shipped, name), directory / ONNX)
    mapping: DeviceMapping = map_on_akd1000(akida.Model(str(directory / FBZ)), map_mode)
    log.info("mapped on %s (%s): %s", mapping.device, map_mode, mapping.nps)
    mappings = {device: map_model(akida.Model(str(directory / FBZ)), device, map_mode) for device in DEVICES}
    outputs, counters = three_way(directory / FBZ, directory / ONNX, shipped, eval_set.frames)
    log.info("akida, simulator and onnxruntime agree on %d frames", len(outputs))
    if recorded_scores is not None:
        _check_recorded_scores(recorded_scores, outputs)
    golden_n = min(GOLDEN_FRAMES, len(outputs))
    labels = eval_set.labels[:golden_n] if eval_set.labels is not None else np.full(golden_n, -1)
    write_golden(directory / GOLDEN, Golden(eval_set.frames[:golden_n], outputs[:golden_n], labels.astype(np.int64)))
    potentials = not model.layers[-1].activation
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        name=name,
        target=Target(mapping.device, "v1", mapping.nps, mapping.sequences, mapping.passes),
        mappings=mappings,
        input=InputSpec("input", shipped.input_shape, "uint8", (0, shipped.input_max), eval_set.preprocessing),
        output=OutputSpec(
            "output",
            shipped.output_shape,
            shipped.output_dtype.name,
            "potentials" if potentials else "activations",
            eval_set.class_names,
            "argmax over the flattened output; ties go to the lowest index",
        ),
        layers=layer_specs(shipped, lambda layer: mapping.per_layer.get(layer, {})),
        files={file: file_entry(directory / file) for file in (FBZ, ONNX, GOLDEN)},
        golden_frames=golden_n,
        training=training,
        toolchain=toolchain(),
        metrics=measure(shipped, outputs, counters, eval_set, modelled_energy(profiles, mappings, counters)),
        verification=Verification(BACKENDS, outputs_digest(outputs), max(b.max_abs_value for b in bounds), True),
    )
    write_manifest(directory, manifest)
    return manifest


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is moved aside first, restored if the move fails,
    and removed after it succeeds."""
    if not out.exists():
        try:
            os.replace(new, out)
        except OSError as error:
            raise BundleError(f"cannot move the new bundle to {out}: {error.strerror or error}") from None
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        os.replace(out, old)
    except OSError as error:
        raise BundleError(f"cannot move the old bundle at {out} aside: {error.strerror or error}") from None
    try:
        os.replace(new, out)
    except BaseException as error:
        try:
            os.replace(old, out)  # roll back: the old bundle stays in place
        except OSError as rollback:
            raise BundleError(
                f"cannot move the new bundle to {out}, nor the old one back ({rollback.strerror}); "
                f"the old bundle is at {old}"
            ) from None
        if isinstance(error, OSError):
            raise BundleError(
                f"cannot move the new bundle to {out} ({error.strerror or error}); the old bundle is kept"
            ) from None
        raise
    try:
        shutil.rmtree(old)
    except OSError as error:
        log.warning("new bundle in place at %s, but the old one at %s could not be removed: %s", out, old, error)


def _check_out(out: Path, force: bool) -> None:
    if out.is_symlink():
        # Replacing the link with a directory would silently turn a deployment's "current" symlink
        # into a copy; flipping a link is the user's step, and an atomic one.
        raise BundleError(f"{out}: is a symlink; write to a new directory and flip the symlink: ln -sfn NEW {out}")
    if not out.exists():
        return
    if not force:
        raise BundleError(f"{out}: already exists; pass --force to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it, choose another --out")


def export_model(
    model: AkidaModel,
    out: Path,
    eval_set: EvalSet,
    *,
    name: str | None = None,
    training: Training | None = None,
    profiles: Mapping[str, DeviceProfile] | None = None,
    map_mode: str = DEFAULT_MAP_MODE,
    force: bool = False,
    recorded_scores: np.ndarray | None = None,
) -> Manifest:
    """Build, verify and atomically write a bundle for ``model`` at ``out``; nothing is written on failure.

    ``profiles``: the device profile per device (default: the packaged one of each); ``map_mode``:
    akida's MapMode for every mapping (default akida's own default).
    ``recorded_scores``: outputs the training run recorded for the first frames of ``eval_set``; the
    engine must reproduce them exactly.
    """
    out = Path(out)
    _check_out(out, force)
    if eval_set.frames.dtype != np.uint8 or eval_set.frames.shape[1:] != model.input_shape:
        raise DataError(
            f"evaluation frames are {eval_set.frames.dtype} {eval_set.frames.shape[1:]}, the model takes "
            f"uint8 {model.input_shape}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        chosen = {device: DeviceProfile.packaged(device) for device in DEVICES} if profiles is None else profiles
        manifest = _build_into(
            work,
            model,
            name or out.name,
            eval_set,
            training or Training("", None, {}),
            chosen,
            map_mode,
            recorded_scores,
        )
        load_bundle(work)  # read back with the runtime's own checks before anyone can see it
        os.chmod(work, 0o755)  # mkdtemp makes it private; the daemon runs as its own user
        for file in work.iterdir():
            os.chmod(file, 0o644)
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def export_run(
    run_dir: Path,
    out: Path,
    eval_set: EvalSet,
    *,
    name: str | None = None,
    profiles: Mapping[str, DeviceProfile] | None = None,
    map_mode: str = DEFAULT_MAP_MODE,
    force: bool = False,
) -> Manifest:
    """``edge-export export``: a run directory to a verified bundle."""
    run = load_run(Path(run_dir))
    # The run records its scores on the MNIST test split only (its first N frames, in order).
    scores = run.eval_scores if eval_set.name == MNIST_TEST else None
    return export_model(
        run.model,
        out,
        eval_set,
        name=name,
        training=run.training,
        profiles=profiles,
        map_mode=map_mode,
        force=force,
        recorded_scores=scores,
    )


def verify_bundle(path: Path, frames: np.ndarray | None = None) -> VerifyReport:
    """Re-check a bundle: loader checks, golden vectors through all three backends, then agreement on ``frames``."""
    bundle = load_bundle(path)
    engine = akida.Model(str(bundle.fbz_path))
    runtime = OnnxSession(bundle.onnx_path)
    check_golden(bundle, engine.forward, "the Akida engine")
    check_golden(bundle, lambda f: Simulator(bundle.model).run(f).outputs, "the simulator")
    check_golden(bundle, runtime.infer, "onnxruntime")
    runtime.close()
    extra = 0
    if frames is not None:
        if frames.dtype != np.uint8 or frames.shape[1:] != bundle.model.input_shape:
            raise DataError(
                f"frames are {frames.dtype} {frames.shape[1:]}, the bundle takes uint8 {bundle.model.input_shape}"
            )
        three_way(bundle.fbz_path, bundle.onnx_path, bundle.model, frames)
        extra = len(frames)
    return VerifyReport(bundle, len(bundle.golden.frames), extra, BACKENDS)
