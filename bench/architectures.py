"""The public Akida 1.0 architectures behind the silicon measurements, rebuilt with akida's layer API.

Why rebuild them: the measurements (``bench/data/akida1-silicon.json``) give clocks and energy per
model, but the energy model's inputs are per-layer shapes, NP placements and event counts. akida's
own mapper, run on these rebuilt models, says how many neural processors each layer gets on a
virtual AKD1000 / AKD1500 in each map mode (the published NP totals check the rebuild), and the
layer shapes turn the published per-layer sparsities into input events. Weights are random and
non-zero: mapping depends on shapes only, and no event count is read from these models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import akida
import numpy as np

# akidanet_imagenet (akida_models): (filters at alpha 1, stride) of the layers after the input conv.
_AKIDANET = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]


def expand(architecture: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The explicit layer list of an architecture entry (``layers`` as given, or an AkidaNet recipe)."""
    if "layers" in architecture:
        return [dict(layer) for layer in architecture["layers"]]
    recipe = architecture["akidanet"]
    alpha, size = recipe["alpha"], recipe["resolution"]
    layers: list[dict[str, Any]] = [
        {
            "name": "conv_0",
            "type": "InputConvolutional",
            "input_shape": [size, size, 3],
            "kernel": 3,
            "filters": int(32 * alpha),
            "stride": 2,
        }
    ]
    for index, (filters, stride) in enumerate(_AKIDANET, start=1):
        kind = "Convolutional" if index <= 3 else "SeparableConvolutional"
        name = f"conv_{index}" if index <= 3 else f"separable_{index}"
        layer = {"name": name, "type": kind, "kernel": 3, "filters": int(filters * alpha), "stride": stride}
        if index == len(_AKIDANET):
            layer["pool"] = "global_avg"
        layers.append(layer)
    layers.extend(dict(head) for head in recipe["head"])
    return layers


def build(layers: Sequence[Mapping[str, Any]], seed: int = 0) -> akida.Model:
    """An akida.Model of the layer list, weights random and non-zero (8-bit input layer, 4-bit others)."""
    rng = np.random.default_rng(seed)
    model = akida.Model()
    for spec in layers:
        model.add(_layer(spec))
        made = model.layers[-1]
        for variable in made.get_variable_names():
            if variable.startswith("weights"):
                shape = made.get_variable(variable).shape
                high = 127 if spec["type"] == "InputConvolutional" else 7
                values = rng.integers(1, high + 1, size=shape) * rng.choice([-1, 1], size=shape)
                made.set_variable(variable, values.astype(np.int8))
    return model


def _layer(spec: Mapping[str, Any]) -> Any:
    name, kind = spec["name"], spec["type"]
    activation = spec.get("activation", True)
    common: dict[str, Any] = {"name": name, "activation": activation, "act_bits": 4 if activation else 1}
    if kind == "FullyConnected":
        return akida.FullyConnected(units=spec["units"], weights_bits=4, **common)
    kernel, stride = spec["kernel"], spec.get("stride", 1)
    conv: dict[str, Any] = {
        "kernel_size": (kernel, kernel),
        "filters": spec["filters"],
        "kernel_stride": (stride, stride),
        **common,
    }
    pool = spec.get("pool")
    if pool == "max":
        conv.update(pool_type=akida.PoolType.Max, pool_size=(2, 2), pool_stride=(2, 2))
    elif pool == "global_avg":
        conv.update(pool_type=akida.PoolType.Average)
    if kind == "InputConvolutional":
        return akida.InputConvolutional(input_shape=tuple(spec["input_shape"]), weights_bits=8, **conv)
    if kind == "Convolutional":
        return akida.Convolutional(weights_bits=4, **conv)
    if kind == "SeparableConvolutional":
        return akida.SeparableConvolutional(weights_bits=4, **conv)
    raise ValueError(f"layer {name!r}: unknown type {kind!r}")
