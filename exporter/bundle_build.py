"""Turn a trained run (run_reader.py) or a user's model into a verified bundle (the agreement check: verify.py).

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

import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import akida
import numpy as np
import onnx

from edge_runtime.akida_model import AkidaModel, load_model
from edge_runtime.bundle import Golden, file_entry, installed_version, load_bundle, write_golden
from edge_runtime.counters import Counters
from edge_runtime.energy import DEVICES, DeviceProfile
from edge_runtime.energy_inputs import ModelMapping
from edge_runtime.errors import BundleError, DataError
from edge_runtime.manifest import (
    FBZ,
    FORMAT,
    FORMAT_VERSION,
    GOLDEN,
    MANIFEST,
    ONNX,
    EnergyMetrics,
    InputSpec,
    LayerMetrics,
    Manifest,
    Metrics,
    OutputSpec,
    Target,
    Training,
    Verification,
    class_names_problem,
    layer_specs,
    write_manifest,
)
from edge_runtime.mapping import DEFAULT_MAP_MODE, map_model

from . import mnist_fetch
from .akida_build import DeviceMapping, map_on_akd1000, to_akida
from .config import accuracy_warning
from .datasets import MNIST_PREPROCESSING, parse_source
from .onnx_build import OPSET, check_exact, to_onnx
from .run_data import read_run_data
from .run_reader import load_run
from .verify import BACKENDS, check_recorded_scores, outputs_digest, three_way

log = logging.getLogger(__name__)

GOLDEN_FRAMES = 16
MNIST_TEST = "mnist-test"


@dataclass(frozen=True, eq=False)
class EvalSet:
    """Frames to verify and measure on, with what a deployer needs to know about them."""

    name: str
    frames: np.ndarray  # uint8 (N, X, Y, C)
    labels: np.ndarray | None  # (N,) class indices, or None
    class_names: tuple[str, ...] | None  # one per class; None: none given (the bundle names classes 0..N-1)
    preprocessing: str


def mnist_eval_set(cache_dir: Path | None = None) -> EvalSet:
    """The MNIST test split (10,000 frames), fetched into the cache if needed."""
    data = mnist_fetch.load_mnist(cache_dir)
    return EvalSet(
        MNIST_TEST,
        data.test_images[..., None],
        data.test_labels.astype(np.int64),
        None,
        MNIST_PREPROCESSING,
    )


def run_eval_set(run_dir: Path, cache_dir: Path | None = None) -> EvalSet:
    """The frames a run is exported on, with its class names: the test split it recorded
    (``test_set.npz``), or for MNIST (and runs from before ``dataset.json``) the MNIST test set."""
    data = read_run_data(run_dir)
    if data is None or data.test_frames is None:
        return replace(mnist_eval_set(cache_dir), class_names=None if data is None else data.class_names)
    kind, path = parse_source(data.source)
    name = f"{kind}:{Path(path).name} test split" if path else f"{kind} test split"
    return EvalSet(name, data.test_frames, data.test_labels, data.class_names, data.preprocessing)


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
        check_recorded_scores(recorded_scores, outputs)
    golden_n = min(GOLDEN_FRAMES, len(outputs))
    labels = eval_set.labels[:golden_n] if eval_set.labels is not None else np.full(golden_n, -1)
    write_golden(directory / GOLDEN, Golden(eval_set.frames[:golden_n], outputs[:golden_n], labels.astype(np.int64)))
    potentials = not model.layers[-1].activation
    channels = shipped.output_shape[-1]
    names = eval_set.class_names
    # One label per output channel, as ever; they are the class names when each channel is a class.
    labels_per_channel = names if names is not None and len(names) == channels else tuple(map(str, range(channels)))
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
            labels_per_channel,
            "argmax over the flattened output; ties go to the lowest index",
        ),
        layers=layer_specs(shipped, lambda layer: mapping.per_layer.get(layer, {})),
        files={file: file_entry(directory / file) for file in (FBZ, ONNX, GOLDEN)},
        golden_frames=golden_n,
        training=training,
        toolchain=toolchain(),
        metrics=measure(shipped, outputs, counters, eval_set, modelled_energy(profiles, mappings, counters)),
        verification=Verification(BACKENDS, outputs_digest(outputs), max(b.max_abs_value for b in bounds), True),
        class_names=names,
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
    classes = int(np.prod(model.output_shape))
    problem = None if eval_set.class_names is None else class_names_problem(eval_set.class_names, classes)
    if problem is not None:
        raise DataError(f"{eval_set.name}: {problem} (the model has {classes} outputs): give one name per class")
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
    eval_set: EvalSet | None = None,
    *,
    cache_dir: Path | None = None,
    name: str | None = None,
    profiles: Mapping[str, DeviceProfile] | None = None,
    map_mode: str = DEFAULT_MAP_MODE,
    force: bool = False,
) -> Manifest:
    """``edge-export export``: a run directory to a verified bundle, on ``eval_set`` or (default) the
    run's own test split and class names (:func:`run_eval_set`; ``cache_dir``: the MNIST cache)."""
    run = load_run(Path(run_dir))
    # The run records its scores on its test split (its first N frames, in order): MNIST's or its own.
    own = eval_set is None
    eval_set = run_eval_set(Path(run_dir), cache_dir) if eval_set is None else eval_set
    scores = run.eval_scores if own or eval_set.name == MNIST_TEST else None
    manifest = export_model(
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
    where = f"run {run_dir} on {eval_set.name} ({manifest.metrics.frames} frames)"
    warning = accuracy_warning(run.training.config, manifest.metrics.accuracy, where)
    if warning:
        log.warning("%s", warning)
    return manifest
