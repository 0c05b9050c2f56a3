"""Training configuration: frozen dataclasses loaded from a commented TOML file.

Why frozen dataclasses and not a dict: a typo in a key must fail at load time with the list of
allowed keys, not hours later as a KeyError (or, worse, be silently ignored). Every error in a file
is collected and reported in one line together with the file path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.energy import DEVICES
from edge_runtime.errors import ConfigError, DataError
from edge_runtime.schema import INVALID, TOML, parse
from edge_runtime.tomlconfig import read_toml

from .architecture import Architecture, LayerConfig, layer_table, legacy_layers, rule_errors
from .datasets import parse_source, resolve_source

PENALTY_FORMS = ("sigmoid", "linear", "hoyer", "l1")
WEIGHTINGS = ("count", "energy")
# [penalty] keys of the v1-era energy weighting, superseded by ``weighting`` (see _retired_keys).
RETIRED_PENALTY_KEYS = ("energy_weighted", "through_weights")
EXPECTED_ACCURACY_MARGIN = 0.01  # "far below" train.expected_accuracy: more than one point


@dataclass(frozen=True)
class ModelConfig:
    """The Akida 1.0 network: a list of layers (``[[model.layers]]``, see exporter/architecture.py and
    docs/training.md), or the old form, the widths of the fixed MNIST network (InputConv 3x3+pool2 ->
    Conv 3x3/2 -> FC -> FC 10), used when ``layers`` is empty."""

    conv0: int = 32  # old form: filters of the InputConvolutional layer (8-bit weights, on the HRC)
    conv1: int = 64  # old form: filters of the stride-2 Convolutional layer (4-bit weights)
    fc: int = 128  # old form: units of the hidden FullyConnected layer (4-bit weights)
    input_shape: tuple[int, int, int] = (28, 28, 1)  # (X, Y, C) of the uint8 frames
    input_bits: int = 8  # 8: uint8 pixels into an input_conv; 1/2/4: frames of 0..2**bits-1 into an InputData
    layers: tuple[LayerConfig, ...] = ()

    def architecture(self) -> Architecture:
        layers = self.layers or legacy_layers(self.conv0, self.conv1, self.fc)
        return Architecture(self.input_shape, layers, self.input_bits)


_LEGACY_KEYS = ("conv0", "conv1", "fc")


def model_problems(raw: Any, model: ModelConfig) -> tuple[ModelConfig, list[str]]:
    """What the schema cannot say about ``[model]``: the layer list and the old widths are two forms
    (give one), a given layer list is not empty; the layers come back with their defaults written out."""
    errors = []
    given = raw if isinstance(raw, Mapping) else {}
    if "layers" in given and any(key in given for key in _LEGACY_KEYS):
        errors.append(
            "model.layers and model.conv0/conv1/fc are two forms of the network; give the layer list or the widths"
        )
    if "layers" in given and not model.layers:
        errors.append("model.layers is empty: a network needs an input_conv layer and a dense output layer")
    return dataclasses.replace(model, layers=tuple(layer.resolved() for layer in model.layers)), errors


def model_from_dict(raw: Any, errors: list[str]) -> ModelConfig:
    """A ``[model]`` table alone (e.g. a distillation teacher's recorded config); problems go to ``errors``."""
    model = parse(ModelConfig, raw, TOML, errors, "model")
    if model is INVALID:
        return ModelConfig()
    model, problems = model_problems(raw, model)
    errors.extend(problems)
    return model


def model_to_dict(model: ModelConfig) -> dict[str, Any]:
    """JSON-safe; the form it was given in (so ``--set model.fc=64`` still works on the old form)."""
    out: dict[str, Any] = {"input_shape": list(model.input_shape), "input_bits": model.input_bits}
    if model.layers:
        out["layers"] = [layer_table(layer) for layer in model.layers]
    else:
        out.update(conv0=model.conv0, conv1=model.conv1, fc=model.fc)
    return out


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train on (exporter/datasets.py); the limits exist so tests can train on small slices."""

    source: str = "mnist"  # mnist | digits | npz:FILE.npz | idx:DIR | images:DIR (paths relative to the config file)
    class_names: tuple[str, ...] = ()  # one per class; () = the source's own (npz, folder names), else 0..N-1
    cache_dir: str = ""  # "" = the default cache ($EDGE_CACHE_DIR or ~/.cache/akida-edge)
    train_limit: int = 0  # 0 = all 60,000 training images
    test_limit: int = 0  # 0 = all 10,000 test images


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule: float warm-up epochs, then quantisation-aware epochs."""

    seed: int = 0
    threads: int = 2  # torch threads; the result is deterministic for a given seed AND thread count
    batch_size: int = 128
    float_epochs: int = 2  # plain float training before the integer (QAT) forward is switched on
    qat_epochs: int = 6
    lr: float = 2e-3  # Adam; cosine-decayed to lr_min over all epochs
    lr_min: float = 5e-5
    weight_decay: float = 0.0
    calib_percentile: float = 99.9  # activation step = this percentile of float activations / 15
    shift: int = 0  # augmentation: random translation of each training image by up to this many pixels
    # test accuracy a full run of this config reaches; `edge-export export` warns when the exported model
    # measures more than EXPECTED_ACCURACY_MARGIN below it (0 = no expectation, no warning)
    expected_accuracy: float = 0.0


@dataclass(frozen=True)
class PenaltyConfig:
    """Zero-aware penalties on counts of non-zero activations and weights.

    ``activations`` and ``weights`` are the loss weights (0 disables). Each term is a weighted count
    as a fraction of its value if every neuron fired (every weight were non-zero), so the loss
    weights are dimensionless; ``weighting`` chooses the weights (alike, or each event's and weight's
    modelled energy). ``form`` chooses the surrogate of the count (see penalties.py).
    """

    activations: float = 0.0
    weights: float = 0.0
    form: str = "sigmoid"  # one of PENALTY_FORMS; "l1" is the control (sum of activation values)
    width: float = 0.5  # surrogate gradient half-width, in activation (or weight) quantisation steps
    # "count": every firing neuron and every non-zero weight alike; "energy": each layer's counts weighted
    # by the modelled total energy per frame of one more event / non-zero weight there (exporter/event_costs.py),
    # measured on cost_images training images at the start of every QAT epoch
    weighting: str = "count"
    cost_device: str = "akd1000"  # the device profile (model v2) the energy weighting prices with
    cost_images: int = 512
    start_epoch: int = 0  # first QAT epoch (0-based) with penalties; ramps linearly over ramp_epochs
    ramp_epochs: int = 1


@dataclass(frozen=True)
class PruneConfig:
    """Gradual magnitude pruning of the 4-bit layers during QAT (0 = off).

    The pruned fraction follows the cubic schedule of Zhu & Gupta (2017) from 0 at ``start_epoch``
    to ``sparsity`` at ``end_epoch``; the input layer (288 weights) is never pruned.
    """

    sparsity: float = 0.0
    start_epoch: int = 0  # QAT epochs, 0-based
    end_epoch: int = 3


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a trained run (Hinton et al. 2015), off unless ``teacher`` is set.

    Why: the penalties silence neurons the network would use to separate hard digits; the teacher's
    soft class scores tell the sparse student which errors are near misses, which recovers accuracy at
    the same event count better than the hard labels alone.
    """

    teacher: str = ""  # run directory of `edge-export train` (its model.pt), relative to the cwd; "" = off
    weight: float = 1.0  # loss weight of T^2 x KL(teacher || student) at temperature T, added to the CE
    temperature: float = 4.0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    penalty: PenaltyConfig = field(default_factory=PenaltyConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


def _check_ranges(config: Config) -> list[str]:
    t, p, pr, m = config.train, config.penalty, config.prune, config.model
    checks = [
        (m.layers != () or min(m.conv0, m.conv1, m.fc) >= 1, "model widths must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.float_epochs >= 0 and t.qat_epochs >= 1, "train.float_epochs must be >= 0 and qat_epochs >= 1"),
        (t.threads >= 1, "train.threads must be >= 1"),
        (0 < t.lr_min <= t.lr, "train.lr_min must be in (0, lr]"),
        (0 < t.calib_percentile <= 100, "train.calib_percentile must be in (0, 100]"),
        (0 <= t.shift <= 4, "train.shift must be in 0..4"),
        (0 <= t.expected_accuracy <= 1, "train.expected_accuracy must be in [0, 1]"),
        (p.form in PENALTY_FORMS, f"penalty.form must be one of {', '.join(PENALTY_FORMS)}"),
        (p.weighting in WEIGHTINGS, f"penalty.weighting must be one of {', '.join(WEIGHTINGS)}"),
        (p.cost_device in DEVICES, f"penalty.cost_device must be one of {', '.join(DEVICES)}"),
        (p.cost_images >= 1, "penalty.cost_images must be >= 1"),
        (p.activations >= 0 and p.weights >= 0, "penalty weights must be >= 0"),
        (p.width > 0, "penalty.width must be > 0"),
        (p.ramp_epochs >= 1, "penalty.ramp_epochs must be >= 1"),
        (0 <= pr.sparsity < 1, "prune.sparsity must be in [0, 1)"),
        (0 <= pr.start_epoch < pr.end_epoch, "prune.start_epoch must be < prune.end_epoch"),
        (config.data.train_limit >= 0 and config.data.test_limit >= 0, "data limits must be >= 0"),
        (
            config.distill.weight >= 0 and config.distill.temperature > 0,
            "distill.weight must be >= 0 and distill.temperature > 0",
        ),
    ]
    errors = [message for ok, message in checks if not ok] + _source_problems(config.data.source)
    return errors + rule_errors(m.input_shape, m.architecture().layers, m.input_bits)


def _source_problems(source: str) -> list[str]:
    try:
        parse_source(source)
    except DataError as error:
        return [str(error)]
    return []


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but almost certainly not meant: a penalty or pruning schedule that never
    begins within the QAT epochs trains a plain model under a zero-aware name."""
    t, p, pr = config.train, config.penalty, config.prune
    warnings = []
    if (p.activations > 0 or p.weights > 0) and t.qat_epochs <= p.start_epoch:
        warnings.append(
            f"penalties start at QAT epoch {p.start_epoch} but train.qat_epochs is {t.qat_epochs}: "
            "they never apply (raise qat_epochs or lower penalty.start_epoch)"
        )
    if p.weighting == "energy" and p.activations == 0 and p.weights == 0:
        warnings.append(
            "penalty.weighting is 'energy' but penalty.activations and penalty.weights are 0: nothing is weighted"
        )
    if pr.sparsity > 0 and t.qat_epochs <= pr.start_epoch:
        warnings.append(
            f"pruning starts at QAT epoch {pr.start_epoch} but train.qat_epochs is {t.qat_epochs}: "
            "it never applies (raise qat_epochs or lower prune.start_epoch)"
        )
    return warnings


def accuracy_warning(recorded: Mapping[str, Any], accuracy: float | None, where: str) -> str | None:
    """One line when a run's measured ``accuracy`` is far below what its config (``recorded``, the
    run's config.json) expects in ``train.expected_accuracy``; None when it is not, or nothing is
    expected (older runs, 0) or measured (no labels)."""
    train = recorded.get("train")
    expected = train.get("expected_accuracy", 0.0) if isinstance(train, Mapping) else 0.0
    if not isinstance(expected, int | float) or not expected or accuracy is None:
        return None
    if accuracy >= expected - EXPECTED_ACCURACY_MARGIN:
        return None
    return (
        f"{where}: accuracy {accuracy:.2%} is {100 * (expected - accuracy):.1f} points below the {expected:.2%} "
        "its config expects (train.expected_accuracy): a cut-down, too short or diverged run? "
        "(see data limits, epochs and the history in its report.json)"
    )


def config_from_dict(raw: Mapping[str, Any], origin: str = "<config>") -> Config:
    """Validate a parsed TOML document with the one schema validator (``edge_runtime.schema``); raises
    one ConfigError listing every problem."""
    errors: list[str] = []
    raw = _retired_keys(raw, origin)
    config = parse(Config, raw, TOML, errors)
    if config is not INVALID:
        model, problems = model_problems(raw.get("model", {}), config.model)
        config = dataclasses.replace(config, model=model)
        errors.extend(problems)
    errors.extend(_check_ranges(config) if not errors else [])
    if errors:
        raise ConfigError(f"{origin}: " + "; ".join(errors))
    return config


def _retired_keys(raw: Mapping[str, Any], origin: str) -> Mapping[str, Any]:
    """Drop ``penalty.energy_weighted`` / ``through_weights`` set to false (what ``weighting = "count"``
    does); refuse them set to true in one line: that weighting priced an event by the next layer's
    dynamic energy only, v2's coefficients used v1's way, and ``weighting = "energy"`` supersedes it."""
    penalty = raw.get("penalty")
    if not isinstance(penalty, Mapping) or not any(key in penalty for key in RETIRED_PENALTY_KEYS):
        return raw
    for key in RETIRED_PENALTY_KEYS:
        if penalty.get(key, False) is not False:
            raise ConfigError(
                f'{origin}: penalty.{key} was retired; use penalty.weighting = "energy" (each event and '
                'weight priced at its modelled total energy per frame, model v2) or "count"'
            )
    kept = {key: value for key, value in penalty.items() if key not in RETIRED_PENALTY_KEYS}
    return {**raw, "penalty": kept}


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file; a relative path in ``data.source`` is relative to the file
    (as in the daemon's config), so a config and its data can move together."""
    raw = read_toml(path)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        raw["data"] = {**data, "source": resolve_source(data["source"], path.absolute().parent)}
    return config_from_dict(raw, str(path))


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict (JSON-safe) so a run directory records exactly what was trained."""
    out = dataclasses.asdict(config)
    out["model"] = model_to_dict(config.model)
    return out


def with_overrides(config: Config, overrides: Sequence[tuple[str, Any]], origin: str = "--set") -> Config:
    """Return ``config`` with dotted keys replaced (``penalty.activations``), validated like a file."""
    raw = config_to_dict(config)
    for dotted, value in overrides:
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{origin}: {dotted!r} is not of the form section.key")
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw, origin)
