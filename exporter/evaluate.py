"""Measuring a trained model the way it will ship: its exported integer layers on the bit-exact simulator
(accuracy, per-layer activity counters) and the energy model v2 on them, for the run's report."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edge_runtime.akida_model import from_akida
from edge_runtime.counters import LayerCounters
from edge_runtime.errors import ConfigError
from edge_runtime.simulator import Simulator

from .qat import (
    IntegerLayer,
    ZeroAwareNet,
    to_akida,
)

log = logging.getLogger(__name__)


EVAL_BATCH = 1000


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
