"""Zero-aware training as small reusable functions: data, schedule, one epoch, export, measurement.

The flow (``train``): float warm-up epochs -> calibrate activation steps -> QAT epochs with the
integer forward and the zero-aware penalties (optionally gradual magnitude pruning) -> export the
integer layers -> measure the EXPORTED model on the test set (NumPy integer reference, not the
training graph) -> write the run directory. Each QAT epoch also evaluates the integer forward, so
the log shows the accuracy and sparsity of what will ship, not of a float proxy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from edge_runtime.akida_model import from_akida
from edge_runtime.counters import LayerCounters
from edge_runtime.energy import ModelCost
from edge_runtime.errors import ConfigError, ModelError
from edge_runtime.simulator import Simulator

from . import datasets, event_costs, penalties, run_data
from .config import Config, ModelConfig, config_to_dict, config_warnings, model_from_dict
from .qat import (
    IntegerLayer,
    ZeroAwareNet,
    calibrate_steps,
    export_integer_layers,
    integer_arrays,
    to_akida,
)

log = logging.getLogger(__name__)

PARAMS_FORMAT = "akida-v1-integer-params/1"
EVAL_BATCH = 1000


@dataclass(frozen=True)
class Data:
    """Frames as uint8 tensors (N, C, X, Y) (akida's (X, Y, C) frames, channels first); labels int64 (N,);
    what the data set says about itself."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int = 10
    class_names: tuple[str, ...] | None = None  # None: none given (shown as 0..classes-1)
    source: str = "mnist"
    preprocessing: str = datasets.MNIST_PREPROCESSING

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One frame in akida's layout (X, Y, C) = (H, W, C): what the network's input must take."""
        _, c, h, w = self.train_x.shape
        return (h, w, c)

    def run_data(self) -> run_data.RunData:
        """What the run directory records about the data (MNIST's test frames are in its cache)."""
        frames = None if self.source == "mnist" else self.test_x.numpy().transpose(0, 2, 3, 1)
        labels = None if frames is None else self.test_y.numpy()
        return run_data.RunData(
            self.source, self.input_shape, self.classes, self.class_names, self.preprocessing, frames, labels
        )


def load_data(config: Config) -> Data:
    """``[data] source`` (exporter/datasets.py, checked), cut to the configured limits (tests train on small slices)."""
    d = config.data
    dataset = datasets.load_dataset(d.source, Path(d.cache_dir) if d.cache_dir else None, d.class_names)
    data = data_from_arrays(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, d.train_limit, d.test_limit
    )
    log.info(
        "data %s: %d training and %d test frames of %s, %d classes",
        dataset.source,
        len(data.train_y),
        len(data.test_y),
        "x".join(map(str, dataset.input_shape)),
        dataset.classes,
    )
    return replace(
        data,
        classes=dataset.classes,
        class_names=dataset.class_names,
        source=dataset.source,
        preprocessing=dataset.preprocessing,
    )


def data_from_arrays(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    train_limit: int = 0,
    test_limit: int = 0,
) -> Data:
    """Frames (N, H, W) or (N, H, W, C) to the trainer's (N, C, H, W) tensors, cut to the limits."""

    def images(a: np.ndarray, limit: int) -> Tensor:
        a = a[: limit or None]
        a = a[..., np.newaxis] if a.ndim == 3 else a
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def labels(a: np.ndarray, limit: int) -> Tensor:
        return torch.from_numpy(a[: limit or None].astype(np.int64))

    return Data(
        images(train_x, train_limit),
        labels(train_y, train_limit),
        images(test_x, test_limit),
        labels(test_y, test_limit),
    )


def check_on_akd1000(model_config: ModelConfig) -> Any:
    """Map the configured network on a virtual AKD1000 (hardware only) before any training: build it,
    export its freshly initialised integer layers, hand them to akida and its mapper. Returns the
    mapping (``exporter.akida_build.DeviceMapping``); ConfigError (one line) if akida refuses a layer
    or the network does not fit the chip.

    Uses its own random generator state (restored after), so a run's results do not depend on it.
    """
    from .akida_build import map_on_akd1000

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers = export_integer_layers(ZeroAwareNet(model_config))
    try:
        return map_on_akd1000(to_akida(layers))
    except ModelError as error:
        raise ConfigError(f"model: {error}") from None


def check_frames(data: Data, model_config: ModelConfig) -> None:
    """ConfigError (one line) unless the data's frames have the network's input shape."""
    _, c, x, y = data.train_x.shape
    if (x, y, c) != tuple(model_config.input_shape):
        raise ConfigError(
            f"the data's frames are {x}x{y}x{c} (X x Y x C) but model.input_shape is "
            f"{'x'.join(map(str, model_config.input_shape))}: choose data of that shape or change the network"
        )
    outputs = model_config.architecture().layers[-1].width
    if data.classes != outputs:
        raise ConfigError(
            f"data.source {data.source}: {data.classes} classes, but the network's last layer has {outputs} "
            "outputs: set its units to the number of classes"
        )
    top = 2**model_config.input_bits - 1
    for name, frames in (("training", data.train_x), ("test", data.test_x)):
        if model_config.input_bits < 8 and len(frames) and int(frames.max()) > top:
            raise ConfigError(
                f"the {name} frames hold values up to {int(frames.max())} but model.input_bits is "
                f"{model_config.input_bits} (values 0..{top}): quantise the frames or raise input_bits"
            )


def seed_everything(seed: int, threads: int) -> torch.Generator:
    """Seed torch and fix the thread count (float reductions depend on it); returns the data generator."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with zeros.

    Why: the 4-bit network overfits MNIST's training set within a few epochs; small shifts are the
    cheapest regulariser that keeps inputs exact uint8 frames (no interpolation).
    """
    if max_shift == 0:
        return images
    n, size = len(images), images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets)])


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine decay from ``lr`` to ``lr_min`` over ``total`` steps."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def ramp(qat_progress: float, start: int, length: int) -> float:
    """Penalty multiplier: 0 before ``start`` (QAT epochs), rising linearly to 1 over ``length`` epochs."""
    return min(max((qat_progress - start) / length, 0.0), 1.0)


def prune_fraction(qat_progress: float, sparsity: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic schedule: fast early pruning, gentle near the target."""
    t = min(max((qat_progress - start) / (end - start), 0.0), 1.0)
    return sparsity * (1 - (1 - t) ** 3)


def apply_pruning(model: ZeroAwareNet, fraction: float) -> None:
    """Zero the smallest-magnitude ``fraction`` of each 4-bit layer's weights (masks only grow)."""
    if fraction <= 0:
        return
    with torch.no_grad():
        for weight, mask in model.prunable():
            magnitude = (weight * mask).abs().flatten()
            k = int(fraction * magnitude.numel())
            if k > 0:
                cutoff = magnitude.kthvalue(k).values
                mask.mul_((weight.abs() > cutoff).to(mask.dtype))


def load_teacher(run_dir: Path) -> ZeroAwareNet:
    """The trained network of a run directory (its ``model.pt``), frozen, for distillation.

    ``weights_only=True``: the file holds state dicts and plain config values only, so nothing in it
    can execute code when loaded.
    """
    path = run_dir / "model.pt"
    try:
        saved = torch.load(path, weights_only=True)
        errors: list[str] = []
        teacher = ZeroAwareNet(model_from_dict(saved["config"]["model"], errors))
        if errors:
            raise ConfigError(f"distill.teacher: {path}: its model config is not valid ({'; '.join(errors)})")
        teacher.load_state_dict(saved["model"])
    except FileNotFoundError:
        raise ConfigError(
            f"distill.teacher: {path} does not exist; train the teacher first (edge-export train --out {run_dir})"
        ) from None
    except (RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
        raise ConfigError(f"distill.teacher: {path} is not a model.pt written by edge-export train ({error})") from None
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s soft-target term, T^2 x KL(softmax(t/T) || softmax(s/T)), batch-mean.

    The T^2 keeps its gradient scale independent of T, so ``distill.weight`` means the same at any T.
    """
    student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


@dataclass
class EpochStats:
    loss: float
    accuracy: float  # on the training batches seen, with the forward used for training
    nonzero_fraction: float  # fraction of activated neurons firing (QAT: exact counts)


def train_one_epoch(
    model: ZeroAwareNet,
    optimizer: torch.optim.Optimizer,
    data: Data,
    config: Config,
    generator: torch.Generator,
    step0: int,
    total_steps: int,
    qat_epoch: int | None,
    weighted: event_costs.PenaltyCosts | None,
    progress: bool,
    desc: str,
    teacher: ZeroAwareNet | None = None,
) -> EpochStats:
    """One pass over the training set; penalties and pruning only in QAT epochs (``qat_epoch`` set).

    ``weighted``: the energy weighting's costs (``penalty.weighting = "energy"``), None to count.
    """
    t, p = config.train, config.penalty
    model.train()
    order = torch.randperm(len(data.train_y), generator=generator)
    batches = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
    sites = penalties.event_sites(model)
    neurons = [site.neurons for site in sites]
    sizes = [w.numel() for w in model.weight_arrays()]
    loss_sum = correct = seen = fired = 0.0
    bar = tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for i, index in enumerate(bar):
        qat_progress = None if qat_epoch is None else qat_epoch + i / len(batches)
        if qat_progress is not None and config.prune.sparsity > 0:
            apply_pruning(
                model,
                prune_fraction(qat_progress, config.prune.sparsity, config.prune.start_epoch, config.prune.end_epoch),
            )
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step0 + i, total_steps, t.lr, t.lr_min)
        x, y = random_shift(data.train_x[index].float(), t.shift, generator), data.train_y[index]
        result = model(x)
        loss = F.cross_entropy(result.logits, y)
        if teacher is not None and config.distill.weight > 0:
            with torch.no_grad():
                teacher_logits = teacher(x).logits
            loss = loss + config.distill.weight * distillation_loss(
                result.logits, teacher_logits, config.distill.temperature
            )
        if qat_progress is not None:
            strength = ramp(qat_progress, p.start_epoch, p.ramp_epochs)
            if strength > 0 and p.activations > 0:
                counts = penalties.activation_counts(result.acts, result.pre, p.form, p.width)
                costs: list[Tensor | float] = [1.0] * len(sites)
                if weighted is not None:  # the cost of one more output event of each hidden layer
                    costs = [weighted.events[site.index] for site in sites]
                loss = loss + strength * p.activations * penalties.activation_penalty(counts, costs, neurons)
            if strength > 0 and p.weights > 0:
                wcounts = penalties.weight_counts(result.weight_ratios, p.form, p.width)
                if weighted is None:
                    loss = loss + strength * p.weights * penalties.weight_penalty(wcounts, sizes)
                else:  # the same weighted fraction as the events': energy of the non-zero weights / if all were;
                    # every weight array of a layer (a separable layer has two) at that layer's cost per weight
                    per_array = [weighted.weights[i] for i, group in enumerate(result.layer_ratios) for _ in group]
                    loss = loss + strength * p.weights * penalties.activation_penalty(wcounts, per_array, sizes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += float(loss) * len(y)
            correct += float((result.scores.argmax(1) == y).sum())
            seen += len(y)
            fired += sum(float((a > 0).sum()) for a in result.acts) / sum(neurons)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", nz=f"{fired / seen:.4f}")
    return EpochStats(loss_sum / seen, correct / seen, fired / seen)


def measured_penalty_costs(
    model: ZeroAwareNet, cost: ModelCost, images: np.ndarray, config: Config
) -> event_costs.PenaltyCosts:
    """The energy weighting's costs at the model's current operating point: its integer layers run in
    the simulator on ``images``, priced by ``cost`` (the v2 model bound to the network's mapping)."""
    _, counters = simulate(export_integer_layers(model), images)
    weighted = event_costs.penalty_costs(cost, counters)
    if config.penalty.weights > 0 and not any(w > 0 for w in weighted.weights):
        raise ConfigError(
            f"penalty.weighting = 'energy': the {config.penalty.cost_device} profile charges no layer "
            "for its synaptic ops, so non-zero weights cost nothing to weight by (set penalty.weights = 0)"
        )
    return weighted


def torch_eval(model: ZeroAwareNet, images: Tensor) -> Tensor:
    """Class scores of the training-time forward (int32 potentials once quantised), in batches."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i : i + EVAL_BATCH].float()).scores for i in range(0, len(images), EVAL_BATCH)])


# ---------------------------------------------------------------- measuring the exported model


def simulate(layers: list[IntegerLayer], images: np.ndarray) -> tuple[np.ndarray, tuple[LayerCounters, ...]]:
    """Run the EXPORTED model in the project's bit-exact simulator; return (N, classes) scores and
    counters. ``images``: (N, X, Y) or (N, X, Y, C) uint8 frames.

    The model goes through akida's own object (``to_akida``) and the runtime's converter, the same
    path a ``.fbz`` takes, so the report measures what a bundle will run.
    """
    model = from_akida(to_akida(layers))
    result = Simulator(model).run(images.reshape(-1, *model.input_shape))
    return result.outputs.reshape(len(images), -1), result.counters.layers


def summarise(
    layers: list[IntegerLayer],
    counters: tuple[LayerCounters, ...],
    scores: np.ndarray,
    labels: np.ndarray,
    energy_model: Any | None,
) -> dict[str, Any]:
    """The report: accuracy, events, weights, synops and (if a model is given) energy per image.

    Names follow NeuroBench: ``activations_nonzero`` are the events a layer emits (the input of the
    next layer); ``synops`` are effective synaptic operations (a non-zero input times a non-zero
    weight it reaches; the input layer's HRC is dense, so the energy model charges its dense MACs).
    """
    means = [c.means() for c in counters]
    per_layer = [
        {
            "name": c.name,
            "kind": layer.kind,
            "input_events_per_image": m["input_events"],
            "activations_nonzero_per_image": m["output_events"],
            "weights_nonzero": c.nonzero_weights,
            "weights_total": c.weights,
            "synops_per_image": m["synaptic_ops"],
        }
        for c, layer, m in zip(counters, layers, means, strict=True)
    ]
    report: dict[str, Any] = {
        "images": len(labels),
        "accuracy": float((scores.argmax(axis=1) == labels).mean()),
        "layers": per_layer,
        # Events that travel between layers: the outputs of every layer but the last (whose potentials
        # are read by the host); the input layer's own input is dense pixels.
        "activations_nonzero_per_image": float(sum(m["output_events"] for m in means[:-1])),
        "weights_nonzero": sum(c.nonzero_weights for c in counters),
        "weights_total": sum(c.weights for c in counters),
        "synops_per_image": float(sum(m["synaptic_ops"] for m in means)),
        "scores_sha256": hashlib.sha256(scores.astype("<i4").tobytes()).hexdigest(),
    }
    if energy_model is not None:
        report["energy"] = modelled_energy(layers, counters)
    return report


def modelled_energy(layers: list[IntegerLayer], counters: tuple[LayerCounters, ...]) -> dict[str, Any]:
    """Per device, the v2 model's figures per image for the exported integer network, mapped by
    akida's own mapper (AllNps, akida's default) exactly as ``edge-export export`` maps it."""
    from edge_runtime.energy import DEVICES, DeviceProfile
    from edge_runtime.mapping import DEFAULT_MAP_MODE, map_model

    out: dict[str, Any] = {}
    for device in DEVICES:
        profile = DeviceProfile.packaged(device)
        estimate = profile.bind(map_model(to_akida(layers), device, DEFAULT_MAP_MODE)).evaluate_counters(counters)
        out[device] = {
            "profile": profile.version,
            "total_j_per_image": float(estimate.total_j.mean()),
            "dynamic_j_per_image": float(estimate.dynamic_j.mean()),
            "chip_s_per_image": float(estimate.chip_s.mean()),
            "frame_s_per_image": float(estimate.frame_s.mean()),
        }
    return out


def load_energy_model() -> Any | None:
    """The AKD1000 device profile (penalty weights), or None (logged) while its file is missing."""
    from edge_runtime.energy import DeviceProfile

    try:
        return DeviceProfile.packaged("akd1000")
    except (FileNotFoundError, ConfigError) as error:
        log.warning("no energy model available (%s); energy is left out and penalties use fan-out costs", error)
        return None


# ---------------------------------------------------------------- run directory


def layer_spec(layers: list[IntegerLayer]) -> list[dict[str, Any]]:
    """Hyper-parameters of each layer, enough to rebuild it with akida's Python API."""
    return [dict(layer.spec) for layer in layers]


def params_arrays(layers: list[IntegerLayer]) -> dict[str, np.ndarray]:
    """``params.npz`` key layout: ``<layer>.weights`` / ``.weights_pw`` / ``.threshold`` / ``.act_step``
    (akida dtypes)."""
    return integer_arrays(layers)


def layers_from_arrays(arrays: dict[str, np.ndarray] | Any, specs: list[dict[str, Any]]) -> list[IntegerLayer]:
    """Inverse of :func:`params_arrays` (accepts an open ``np.load`` result), with the run's
    ``spec.json`` layer list."""

    def get(key: str) -> np.ndarray | None:
        return np.asarray(arrays[key]) if key in arrays else None

    return [
        IntegerLayer(
            spec["kind"],
            np.asarray(arrays[f"{spec['name']}.weights"]),
            get(f"{spec['name']}.threshold"),
            get(f"{spec['name']}.act_step"),
            dict(spec),
            get(f"{spec['name']}.weights_pw"),
        )
        for spec in specs
    ]


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write (temp file + os.replace), so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)


def save_checkpoint(
    path: Path, model: ZeroAwareNet, optimizer: torch.optim.Optimizer, config: Config, epoch: int
) -> None:
    """State dicts and the config only (loadable with ``torch.load(..., weights_only=True)``)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": config_to_dict(config),
            "epoch": epoch,
        },
        tmp,
    )
    os.replace(tmp, path)


def write_run(
    out: Path,
    model: ZeroAwareNet,
    config: Config,
    layers: list[IntegerLayer],
    report: dict[str, Any],
    eval_scores: np.ndarray,
) -> None:
    """Everything the exporter needs: integer params + spec, golden scores, config, model, report."""
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = params_arrays(layers)
    tmp = out / "params.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out / "params.npz")
    digest = hashlib.sha256((out / "params.npz").read_bytes()).hexdigest()
    np.save(out / "eval_scores.npy", eval_scores.astype(np.int32))
    write_json(
        out / "spec.json",
        {
            "format": PARAMS_FORMAT,
            "target": "AKD1000 (Akida 1.0)",
            "input": {
                "shape": list(config.model.input_shape),
                "dtype": "uint8",
                **({"bits": config.model.input_bits} if config.model.input_bits != 8 else {}),
            },
            "layers": layer_spec(layers),
            "params": {
                "file": "params.npz",
                "sha256": digest,
                "keys": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
            },
            "eval_scores": {"file": "eval_scores.npy", "images": "test split, first N in order", "n": len(eval_scores)},
            "seed": config.train.seed,
        },
    )
    write_json(out / "config.json", config_to_dict(config))
    torch.save({"model": model.state_dict(), "config": config_to_dict(config)}, out / "model.pt")
    write_json(out / "report.json", report)


# ---------------------------------------------------------------- the whole run


def train(
    config: Config,
    out: Path | None = None,
    data: Data | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[ZeroAwareNet, dict[str, Any]]:
    """Train, export and measure one model; writes the run directory when ``out`` is given."""
    for warning in config_warnings(config):
        log.warning("%s", warning)
    mapping = check_on_akd1000(config.model)  # before anything is trained: a net the chip cannot run fails now
    log.info("the network maps on AKD1000: %s", ", ".join(f"{n} {kind}" for kind, n in mapping.nps.items()))
    started = time.monotonic()
    generator = seed_everything(config.train.seed, config.train.threads)
    data = data or load_data(config)
    check_frames(data, config.model)
    model = ZeroAwareNet(config.model)
    energy_model = load_energy_model()
    teacher = load_teacher(Path(config.distill.teacher)) if config.distill.teacher else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config_to_dict(config))  # recorded before any epoch runs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    t = config.train
    steps_per_epoch = math.ceil(len(data.train_y) / t.batch_size)
    total_steps = steps_per_epoch * (t.float_epochs + t.qat_epochs)
    history = []
    p = config.penalty
    energy_weighting = p.weighting == "energy" and (p.activations > 0 or p.weights > 0)
    cost: ModelCost | None = None  # the v2 model bound to akida's mapping of the network, once
    for epoch in range(t.float_epochs + t.qat_epochs):
        qat_epoch = epoch - t.float_epochs if epoch >= t.float_epochs else None
        if qat_epoch == 0:
            calibrate_steps(model, data.train_x[:2048].float(), t.calib_percentile)
            model.quantised.fill_(True)
            log.info("switched to the integer (QAT) forward after %d float epochs", t.float_epochs)
        weighted = None
        if energy_weighting and qat_epoch is not None:
            if cost is None:  # the mapping depends on the layers' shapes only
                cost = event_costs.bound_cost(to_akida(export_integer_layers(model)), p.cost_device)
            frames = data.train_x[: p.cost_images].numpy().transpose(0, 2, 3, 1)  # (N, X, Y, C) frames
            weighted = measured_penalty_costs(model, cost, frames, config)
            log.info("energy weighting (%s, long batch): %s", cost.profile.version, weighted.describe())
        phase = "float" if qat_epoch is None else "qat"
        desc = f"{phase} {epoch + 1}/{t.float_epochs + t.qat_epochs}"
        stats = train_one_epoch(
            model,
            optimizer,
            data,
            config,
            generator,
            epoch * steps_per_epoch,
            total_steps,
            qat_epoch,
            weighted,
            progress,
            desc,
            teacher,
        )
        test_acc = float((torch_eval(model, data.test_x).argmax(1) == data.test_y).float().mean())
        entry = {
            "epoch": epoch + 1,
            "phase": phase,
            "loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "nonzero_fraction": stats.nonzero_fraction,
            "test_accuracy": test_acc,
            "seconds": time.monotonic() - started,
        }
        if weighted is not None:
            entry["penalty_costs_j"] = {"events": list(weighted.events), "weights": list(weighted.weights)}
        history.append(entry)
        log.info(
            "epoch %d (%s): loss %.4f train acc %.4f test acc %.4f non-zero %.4f",
            epoch + 1,
            phase,
            stats.loss,
            stats.accuracy,
            test_acc,
            stats.nonzero_fraction,
        )
        if on_epoch:
            on_epoch(entry)
        if out is not None:
            save_checkpoint(out / "checkpoint.pt", model, optimizer, config, epoch + 1)
    layers = export_integer_layers(model)
    train_scores = torch_eval(model, data.test_x).numpy().astype(np.int32)
    test_images = np.ascontiguousarray(data.test_x.numpy().transpose(0, 2, 3, 1))  # (N, X, Y, C) frames
    exported_scores, counters = simulate(layers, test_images)
    report = summarise(layers, counters, exported_scores, data.test_y.numpy(), energy_model)
    engine_scores = to_akida(layers).forward(test_images)
    report["exact_match_training_forward"] = bool(np.array_equal(train_scores, exported_scores))
    report["exact_match_akida_engine"] = bool(
        np.array_equal(engine_scores.reshape(exported_scores.shape), exported_scores)
    )
    report["seed"] = config.train.seed
    report["train_seconds"] = time.monotonic() - started
    report["history"] = history
    if out is not None:
        write_run(out, model, config, layers, report, train_scores)
        run_data.write_run_data(out, data.run_data())
    return model, report
