"""Small random models of the default architecture, and bundles made from them, for tests.

Why not tests/akida_random.py's models: those exercise every engine feature with arbitrary act_steps
and extreme thresholds (the simulator's job); a bundle needs a model that maps on AKD1000 and looks
like a trained one. So this builds the project's network (InputConv 3x3 + max pool 2 -> Conv 3x3
stride 2 -> FC -> FC 10 potentials) at small widths, with random integer weights and thresholds set
from the frames it is given so that each layer fires on 10-40% of its neurons, as trained models do.
Reusable by the daemon's tests: ``make_bundle(tmp_path / "b", rng, frames, labels)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.akida_model import AkidaModel
from edge_runtime.manifest import Manifest
from edge_runtime.simulator import Simulator
from exporter.bundle_build import EvalSet, export_model
from exporter.run_reader import model_from_spec

CLASSES = 10


def default_spec(conv0: int = 8, conv1: int = 16, fc: int = 32) -> list[dict[str, Any]]:
    """The default architecture as a run's ``spec.json`` layer list (widths are the filter counts)."""
    return [
        {
            "name": "conv0",
            "kind": "InputConvolutional",
            "filters": conv0,
            "kernel_size": [3, 3],
            "kernel_stride": [1, 1],
            "padding": "same",
            "padding_value": 0,
            "pool": {"type": "max", "size": [2, 2], "stride": [2, 2]},
            "weights_bits": 8,
            "activation": True,
            "act_bits": 4,
        },
        {
            "name": "conv1",
            "kind": "Convolutional",
            "filters": conv1,
            "kernel_size": [3, 3],
            "kernel_stride": [2, 2],
            "padding": "same",
            "pool": None,
            "weights_bits": 4,
            "activation": True,
            "act_bits": 4,
        },
        {"name": "fc2", "kind": "FullyConnected", "units": fc, "weights_bits": 4, "activation": True, "act_bits": 4},
        {"name": "fc3", "kind": "FullyConnected", "units": CLASSES, "weights_bits": 4, "activation": False},
    ]


def _weights(rng: np.random.Generator, shape: tuple[int, ...], bits: int) -> np.ndarray:
    limit = 127 if bits == 8 else 2 ** (bits - 1) - 1
    weights = rng.integers(-limit, limit + 1, size=shape)
    weights[rng.random(shape) < 0.3] = 0  # some zero weights, as pruning leaves
    return weights.astype(np.int8)


def random_params(
    rng: np.random.Generator, spec: list[dict[str, Any]], frames: np.ndarray, density: float = 0.25
) -> dict[str, np.ndarray]:
    """``params.npz`` arrays for ``spec``: random weights, then per-filter integer thresholds at the
    (1 - density) quantile of that filter's potentials on ``frames`` and integer steps spreading the
    firing neurons over all 15 levels."""
    arrays: dict[str, np.ndarray] = {}
    channels = frames.shape[-1]
    for index, layer in enumerate(spec):
        name, units = layer["name"], layer.get("filters", layer.get("units"))
        if layer["kind"] == "FullyConnected":
            inputs = int(np.prod(_output_shape(spec[:index], arrays, frames)))
            arrays[f"{name}.weights"] = _weights(rng, (1, 1, inputs, units), layer["weights_bits"])
        else:
            kx, ky = layer["kernel_size"]
            arrays[f"{name}.weights"] = _weights(rng, (kx, ky, channels, units), layer["weights_bits"])
        channels = units
        if not layer["activation"]:
            continue
        probe = [*spec[:index], {**layer, "activation": False}]
        potentials = _run(probe, arrays, frames).reshape(-1, units).astype(np.float64)
        threshold = np.floor(np.quantile(potentials, 1 - density, axis=0))
        top = np.quantile(potentials, 0.995, axis=0)
        arrays[f"{name}.threshold"] = threshold.astype(np.int32)
        arrays[f"{name}.act_step"] = np.maximum(np.ceil((top - threshold) / 15), 1).astype(np.float32)
    return arrays


def _model(spec: list[dict[str, Any]], arrays: dict[str, np.ndarray], frames: np.ndarray) -> AkidaModel:
    return model_from_spec(spec, frames.shape[1:], arrays)


def _run(spec: list[dict[str, Any]], arrays: dict[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    return Simulator(_model(spec, arrays, frames)).run(frames).outputs


def _output_shape(spec: list[dict[str, Any]], arrays: dict[str, np.ndarray], frames: np.ndarray) -> tuple:
    return _model(spec, arrays, frames[:1]).output_shape


def random_default_model(
    rng: np.random.Generator, frames: np.ndarray, widths: tuple[int, int, int] = (8, 16, 32), density: float = 0.25
) -> AkidaModel:
    """A default-architecture model whose layers fire on about ``density`` of their neurons on ``frames``."""
    spec = default_spec(*widths)
    return _model(spec, random_params(rng, spec, frames, density), frames)


def with_layer(model: AkidaModel, index: int, **changes: Any) -> AkidaModel:
    """A copy of ``model`` with one layer's fields replaced (for building broken models)."""
    layers = list(model.layers)
    layers[index] = replace(layers[index], **changes)
    return AkidaModel(tuple(layers))


def write_run_dir(path: Path, rng: np.random.Generator, frames: np.ndarray, seed: int = 7) -> Path:
    """A run directory in ``edge-export train``'s format (spec.json, params.npz, config.json), no training."""
    spec = default_spec()
    arrays = random_params(rng, spec, frames)
    path.mkdir(parents=True)
    np.savez(path / "params.npz", **arrays)
    digest = hashlib.sha256((path / "params.npz").read_bytes()).hexdigest()
    (path / "spec.json").write_text(
        json.dumps(
            {
                "format": "akida-v1-integer-params/1",
                "input": {"shape": list(frames.shape[1:]), "dtype": "uint8"},
                "layers": [{**spec[0], "input_shape": list(frames.shape[1:])}, *spec[1:]],
                "params": {"file": "params.npz", "sha256": digest},
                "seed": seed,
            }
        )
    )
    config = {"model": {"conv0": 8, "conv1": 16, "fc": 32}, "train": {"seed": seed}}
    (path / "config.json").write_text(json.dumps(config))
    return path


def eval_set(
    frames: np.ndarray, labels: np.ndarray | None, name: str = "test-frames", class_names: tuple[str, ...] | None = None
) -> EvalSet:
    return EvalSet(name, frames, labels, class_names, "test frames, used as they are")


def make_bundle(
    out: Path,
    rng: np.random.Generator,
    frames: np.ndarray,
    labels: np.ndarray | None = None,
    widths: tuple[int, int, int] = (8, 16, 32),
    class_names: tuple[str, ...] | None = None,
) -> tuple[Manifest, AkidaModel]:
    """Export a random default-architecture model (calibrated on ``frames``) as a verified bundle at ``out``."""
    model = random_default_model(rng, frames, widths)
    return export_model(model, out, eval_set(frames, labels, class_names=class_names)), model
