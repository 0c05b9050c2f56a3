"""Build an Akida 1.0 model with akida's own Python API, and map it on a virtual AKD1000.

Why akida's API and not cnn2snn: BrainChip's converters take Keras (or, for Akida 2.0 only, 8-bit
ONNX); our 4-bit Akida 1.0 network is trained in PyTorch, so the only route to a ``.fbz`` is to
create the layers with ``akida.InputConvolutional`` / ``Convolutional`` / ``FullyConnected`` and
set their variables (docs/bundle.md). The builder takes our :class:`AkidaModel`, the same object the
simulator runs, so what is saved is exactly what was verified.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import akida
import numpy as np

from edge_runtime.akida_model import AkidaModel, Conv, Dense, InputConv, Layer, SepConv
from edge_runtime.errors import ModelError

_PADDING = {"same": akida.Padding.Same, "valid": akida.Padding.Valid}


@dataclass(frozen=True)
class DeviceMapping:
    """Where a model lands on a device: neural processors by type (HRC, CNP1, FNP2, ...).

    ``per_layer`` counts distinct NPs per layer; ``nps`` counts distinct NPs over the whole model
    (one NP may serve several passes, so it is not always the sum of the layers).
    """

    device: str
    nps: dict[str, int]
    per_layer: dict[str, dict[str, int]]
    sequences: int
    passes: int


def to_akida(model: AkidaModel) -> akida.Model:
    """Create the akida layers, set weights/threshold/act_step, and check akida agrees on every shape."""
    built = akida.Model()
    if model.input_data is not None:
        data = model.input_data
        built.add(akida.InputData(input_shape=data.input_shape, input_bits=data.input_bits, name=data.name))
    for layer in model.layers:
        try:
            built.add(_akida_layer(layer))
            _set_variables(built.layers[-1], layer)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"layer '{layer.name}': akida refuses it ({error})") from None
        made = built.layers[-1]
        got = (tuple(int(d) for d in made.output_dims), int(made.input_bits))
        if got != (layer.output_shape, layer.input_bits):
            raise ModelError(
                f"layer '{layer.name}': akida computes output shape {got[0]} and input bits {got[1]}, "
                f"the model says {layer.output_shape} and {layer.input_bits}"
            )
    return built


def _akida_layer(layer: Layer) -> Any:
    common: dict[str, Any] = {
        "name": layer.name,
        "weights_bits": layer.weights_bits,
        "activation": layer.activation,
        "act_bits": layer.act_bits,
    }
    if isinstance(layer, Dense):
        return akida.FullyConnected(units=layer.units, **common)
    conv: dict[str, Any] = {
        "kernel_size": layer.kernel,
        "filters": layer.filters,
        "padding": _PADDING[layer.padding],
        "kernel_stride": layer.stride,
    }
    if layer.pool is not None:
        conv.update(pool_type=akida.PoolType.Max, pool_size=layer.pool.size, pool_stride=layer.pool.stride)
    if layer.global_avg_pool:
        conv.update(pool_type=akida.PoolType.Average)
    if isinstance(layer, InputConv):
        return akida.InputConvolutional(
            input_shape=layer.input_shape, padding_value=layer.padding_value, **conv, **common
        )
    if isinstance(layer, Conv):
        return akida.Convolutional(**conv, **common)
    if isinstance(layer, SepConv):
        return akida.SeparableConvolutional(**conv, **common)
    raise ModelError(f"layer '{layer.name}': unsupported layer type {type(layer).__name__}")


def _set_variables(made: Any, layer: Layer) -> None:
    weights = layer.weights
    if isinstance(layer, Dense):
        weights = weights.reshape(1, 1, *weights.shape)  # akida stores FC weights as (1, 1, inputs, units)
    made.variables["weights"] = np.ascontiguousarray(weights, dtype=np.int8)
    if isinstance(layer, SepConv):
        made.variables["weights_pw"] = np.ascontiguousarray(layer.weights_pw, dtype=np.int8)
    made.variables["threshold"] = np.ascontiguousarray(layer.threshold, dtype=np.int32)
    made.variables["act_step"] = np.ascontiguousarray(layer.act_step, dtype=np.float32)


def map_on_akd1000(model: akida.Model, mode: str = "AllNps") -> DeviceMapping:
    """Map ``model`` (in place) on a virtual AKD1000 with hardware only, in akida's ``mode``
    (``MapMode`` name); ModelError if it does not fit.

    ``hw_only=True`` makes akida refuse any layer it would have to run in software, so success means
    the real chip runs the whole model. Map a copy (e.g. ``akida.Model(path)``), not a model you go on
    to save or run in software.
    """
    try:
        model.map(akida.AKD1000(), hw_only=True, mode=getattr(akida.MapMode, mode))
    except RuntimeError as error:
        raise ModelError(f"the model does not map fully on AKD1000 ({' '.join(str(error).split())})") from None
    software = [seq.name for seq in model.sequences if seq.backend != akida.BackendType.Hardware]
    if software:
        raise ModelError(f"the model does not map fully on AKD1000: sequences {software} run in software")
    return _count_nps(model, "AKD1000")


def _count_nps(model: akida.Model, device: str) -> DeviceMapping:
    """Count NP components by type, per layer and overall, from the mapped sequences' passes."""
    per_layer: dict[str, set[tuple[str, tuple[int, int, int]]]] = {}
    passes = 0
    for sequence in model.sequences:
        for one_pass in sequence.passes:
            passes += 1
            for layer in one_pass.layers:
                found = per_layer.setdefault(layer.name, set())
                found.update((np_.type.name, (np_.ident.col, np_.ident.row, np_.ident.id)) for np_ in layer.mapping.nps)
    overall = set().union(*per_layer.values())
    return DeviceMapping(
        device=device,
        nps=dict(sorted(Counter(kind for kind, _ in overall).items())),
        per_layer={name: dict(sorted(Counter(kind for kind, _ in nps).items())) for name, nps in per_layer.items()},
        sequences=len(model.sequences),
        passes=passes,
    )
