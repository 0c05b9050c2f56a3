"""Zero-aware training as small reusable functions: data, schedule, one epoch, export, measurement.

The flow (``train``): float warm-up epochs -> calibrate activation steps -> QAT epochs with the
integer forward and the zero-aware penalties (optionally gradual magnitude pruning) -> export the
integer layers -> measure the EXPORTED model on the test set (NumPy integer reference, not the
training graph) -> write the run directory. Each QAT epoch also evaluates the integer forward, so
the log shows the accuracy and sparsity of what will ship, not of a float proxy.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from edge_runtime.energy import ModelCost
from edge_runtime.errors import ConfigError, ModelError

from . import event_costs, penalties, run_data
from .config import Config, ModelConfig, config_to_dict, config_warnings, model_from_dict
from .evaluate import load_energy_model, simulate, summarise, torch_eval
from .qat import (
    ZeroAwareNet,
    calibrate_steps,
    export_integer_layers,
    to_akida,
)
from .run_files import save_checkpoint, write_json, write_run
from .training_data import Data, check_frames, load_data

log = logging.getLogger(__name__)


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
