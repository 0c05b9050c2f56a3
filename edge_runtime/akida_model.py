"""Akida 1.0 models as plain, frozen NumPy data.

Why our own types: the simulator, the energy model and the daemon must run (and be tested) without
akida's engine, and must see exactly the integers the chip sees. So a ``.fbz`` is read once, through
``akida.Model`` (the only reader of the format), into the dataclasses below, and nothing else in the
runtime touches akida. ``akida`` is imported lazily inside :func:`load_model`, so importing this
module stays cheap and works where akida is not installed.

Array conventions are akida's own, so values can be compared with ``akida.Model.forward``:

* a feature map is ``(X, Y, C)`` (akida's input_width, input_height, channels); frames are
  ``(N, X, Y, C)``;
* conv weights are ``(KX, KY, C, F)`` exactly as stored (an InputConvolutional cross-correlates with
  them, a Convolutional convolves: see docs/akida-semantics.md);
* FullyConnected weights are ``(X * Y * C, units)``, rows in akida's flattening order (x fastest,
  then y, then c).

Every array is made read-only so a frozen layer really cannot change under a running simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ModelError
from .fbz_check import check_fbz

Padding = Literal["same", "valid"]
Shape3 = tuple[int, int, int]

# akida.Padding / akida.PoolType values, as ``layer.parameters`` reports them (plain ints).
_PADDINGS: dict[int, Padding] = {0: "valid", 1: "same"}
_POOL_NONE, _POOL_MAX, _POOL_AVERAGE = 0, 1, 2
SUPPORTED_TYPES = ("InputConvolutional", "Convolutional", "FullyConnected")


def _frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class MaxPool:
    """Max pooling of the potentials (before firing); windows use the layer's padding mode."""

    size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True, eq=False)
class _Neurons:
    """What every Akida 1.0 layer has: integer weights and a per-neuron firing rule."""

    name: str
    input_shape: Shape3
    output_shape: Shape3
    weights: np.ndarray  # int8
    threshold: np.ndarray  # int32, one per filter / unit
    act_step: np.ndarray  # float32, one per filter / unit
    act_bits: int
    weights_bits: int
    input_bits: int
    activation: bool

    @property
    def neurons(self) -> int:
        return int(np.prod(self.output_shape))


@dataclass(frozen=True, eq=False)
class _ConvNeurons(_Neurons):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    pool: MaxPool | None

    @property
    def filters(self) -> int:
        return int(self.weights.shape[-1])


@dataclass(frozen=True, eq=False)
class InputConv(_ConvNeurons):
    """InputConvolutional: dense 8-bit pixels on the HRC, cross-correlation, padded with ``padding_value``."""

    padding_value: int


@dataclass(frozen=True, eq=False)
class Conv(_ConvNeurons):
    """Convolutional: 1/2/4-bit events, true convolution (kernel flipped), zero padding."""


@dataclass(frozen=True, eq=False)
class Dense(_Neurons):
    """FullyConnected: every input reaches every unit; weights ``(X*Y*C, units)`` in akida's order."""

    @property
    def units(self) -> int:
        return int(self.weights.shape[-1])


Layer = InputConv | Conv | Dense


@dataclass(frozen=True)
class AkidaModel:
    """A sequential Akida 1.0 model: one InputConv, then Conv and Dense layers."""

    layers: tuple[Layer, ...]

    @property
    def input_shape(self) -> Shape3:
        return self.layers[0].input_shape

    @property
    def output_shape(self) -> Shape3:
        return self.layers[-1].output_shape

    @property
    def output_dtype(self) -> np.dtype:
        """uint8 activations when the last layer fires, else its raw int32 potentials (as akida returns)."""
        return np.dtype(np.uint8 if self.layers[-1].activation else np.int32)


def load_model(path: str | Path) -> AkidaModel:
    """Read a ``.fbz`` with akida's own reader and convert it; every failure is one ModelError line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    check_fbz(path)  # a damaged file must not crash this process inside akida
    import akida  # lazy: only loading a .fbz needs the engine

    try:
        model = akida.Model(str(path))
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"{path}: not a readable Akida model ({error})") from None
    try:
        return from_akida(model)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from None


def from_akida(model: Any) -> AkidaModel:
    """Convert an in-memory ``akida.Model``; raise ModelError naming the first unsupported layer."""
    layers = list(model.layers)
    if not layers:
        raise ModelError("the model has no layers")
    converted: list[Layer] = []
    for index, layer in enumerate(layers):
        kind = layer.parameters.layer_type.name
        if kind not in SUPPORTED_TYPES:
            raise ModelError(
                f"layer '{layer.name}' has type {kind}; only Akida 1.0 {', '.join(SUPPORTED_TYPES)} are supported"
            )
        if (kind == "InputConvolutional") != (index == 0):
            raise ModelError(
                f"layer '{layer.name}' ({kind}): an Akida 1.0 model must start with exactly one InputConvolutional"
            )
        if index < len(layers) - 1 and not layer.parameters.activation:
            raise ModelError(f"layer '{layer.name}' ({kind}) has no activation but is not the last layer")
        converted.append(_convert(layer, kind))
    return AkidaModel(tuple(converted))


def _convert(layer: Any, kind: str) -> Layer:
    params = layer.parameters
    variables = layer.variables
    common: dict[str, Any] = {
        "name": layer.name,
        "input_shape": _shape3(layer.input_dims),
        "output_shape": _shape3(layer.output_dims),
        "threshold": _frozen(variables["threshold"], np.int32),
        "act_step": _frozen(variables["act_step"], np.float32),
        "act_bits": int(params.act_bits),
        "weights_bits": int(params.weights_bits),
        "input_bits": int(layer.input_bits),
        "activation": bool(params.activation),
    }
    weights = np.asarray(variables["weights"])
    if kind == "FullyConnected":
        return Dense(weights=_frozen(weights.reshape(-1, weights.shape[-1]), np.int8), **common)
    conv: dict[str, Any] = {
        "weights": _frozen(weights, np.int8),
        "kernel": (int(params.kernel_width), int(params.kernel_height)),
        "stride": (int(params.stride_x), int(params.stride_y)),
        "padding": _padding(layer.name, kind, int(params.padding)),
        "pool": _pool(layer.name, kind, params),
    }
    if kind == "InputConvolutional":
        return InputConv(padding_value=int(params.padding_value), **common, **conv)
    return Conv(**common, **conv)


def _shape3(dims: Any) -> Shape3:
    x, y, c = (int(d) for d in dims)
    return (x, y, c)


def _padding(name: str, kind: str, value: int) -> Padding:
    try:
        return _PADDINGS[value]
    except KeyError:
        raise ModelError(
            f"layer '{name}' ({kind}) uses padding mode {value}; only Same and Valid are supported"
        ) from None


def _pool(name: str, kind: str, params: Any) -> MaxPool | None:
    pool_type = int(params.pool_type)
    if pool_type == _POOL_NONE:
        return None
    if pool_type != _POOL_MAX:
        label = "average" if pool_type == _POOL_AVERAGE else f"type {pool_type}"
        raise ModelError(f"layer '{name}' ({kind}) uses {label} pooling; only max pooling is supported")
    return MaxPool(
        size=(int(params.pooling_width), int(params.pooling_height)),
        stride=(int(params.pooling_stride_x), int(params.pooling_stride_y)),
    )
