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
  them, a Convolutional convolves: see docs/akida-semantics.md); a SeparableConvolutional keeps its
  depthwise ``(KX, KY, C, 1)`` and pointwise ``(1, 1, C, F)`` weights as akida stores them;
* FullyConnected weights are ``(X * Y * C, units)``, rows in akida's flattening order (x fastest,
  then y, then c).

Every array is made read-only so a frozen layer really cannot change under a running simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
SUPPORTED_TYPES = ("InputData", "InputConvolutional", "Convolutional", "SeparableConvolutional", "FullyConnected")
_INPUT_TYPES = ("InputData", "InputConvolutional")
MAX_INPUT_DATA_BITS = 4  # the engine refuses wider (8-bit, signed) InputData in front of an Akida 1.0 layer


def _frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    out: np.ndarray = np.array(array, dtype=dtype, copy=True)
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

    @property
    def stored_weights(self) -> tuple[np.ndarray, ...]:
        """Every weight array the chip stores for the layer (what the weight counters count)."""
        return (self.weights,)


@dataclass(frozen=True, eq=False)
class _ConvNeurons(_Neurons):
    """What every convolutional layer has.

    ``global_avg_pool``: akida's ``PoolType.Average`` (Akida 1.0 has only the global kind): the
    potentials of all output positions are summed per filter (a sum, not a mean: the engine folds the
    division into the threshold and act_step), then fired once, giving a (1, 1, F) output. It excludes
    ``pool`` (max pooling).
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: Padding
    pool: MaxPool | None
    global_avg_pool: bool = field(default=False, kw_only=True)

    @property
    def filters(self) -> int:
        return int(self.weights.shape[-1])

    @property
    def fused_weights(self) -> np.ndarray:
        """(KX, KY, C, F) int64: the one kernel the layer applies (as stored, not yet flipped)."""
        return self.weights.astype(np.int64)


@dataclass(frozen=True, eq=False)
class InputConv(_ConvNeurons):
    """InputConvolutional: dense 8-bit pixels on the HRC, cross-correlation, padded with ``padding_value``."""

    padding_value: int


@dataclass(frozen=True, eq=False)
class Conv(_ConvNeurons):
    """Convolutional: 1/2/4-bit events, true convolution (kernel flipped), zero padding."""


@dataclass(frozen=True, eq=False)
class SepConv(_ConvNeurons):
    """SeparableConvolutional: a depthwise true convolution (``weights``, (KX, KY, C, 1)), then a
    pointwise one (``weights_pw``, (1, 1, C, F)), fused by the engine with no rounding in between,
    so the layer equals a Convolutional with kernel ``dw[x, y, c] * pw[c, f]`` (probed bit-exact)."""

    weights_pw: np.ndarray  # int8, (1, 1, C, F)

    @property
    def filters(self) -> int:
        return int(self.weights_pw.shape[-1])

    @property
    def stored_weights(self) -> tuple[np.ndarray, ...]:
        return (self.weights, self.weights_pw)

    @property
    def fused_weights(self) -> np.ndarray:
        return self.weights.astype(np.int64) * self.weights_pw[0, 0].astype(np.int64)[None, None]


@dataclass(frozen=True)
class InputData:
    """InputData: the model's input as 1/2/4-bit events straight into the first neural layer (no
    HRC). It has no neurons or weights; the engine refuses frame values above ``2**input_bits - 1``."""

    name: str
    input_shape: Shape3
    input_bits: int

    @property
    def output_shape(self) -> Shape3:
        return self.input_shape

    @property
    def max_value(self) -> int:
        return 2**self.input_bits - 1


@dataclass(frozen=True, eq=False)
class Dense(_Neurons):
    """FullyConnected: every input reaches every unit; weights ``(X*Y*C, units)`` in akida's order."""

    @property
    def units(self) -> int:
        return int(self.weights.shape[-1])


Layer = InputConv | Conv | SepConv | Dense
ConvLayer = InputConv | Conv | SepConv


@dataclass(frozen=True)
class AkidaModel:
    """A sequential Akida 1.0 model: the layers with neurons, in order (one InputConv first, or an
    ``input_data`` in front of Conv / SepConv / Dense layers).

    ``input_data`` is kept out of ``layers`` because it has no neurons, weights or counters: every
    consumer of ``layers`` (simulator, counters, energy, ONNX) sees only layers that compute.
    """

    layers: tuple[Layer, ...]
    input_data: InputData | None = None

    @property
    def input_shape(self) -> Shape3:
        return self.layers[0].input_shape

    @property
    def output_shape(self) -> Shape3:
        return self.layers[-1].output_shape

    @property
    def input_max(self) -> int:
        """The largest frame value the model takes: 255 for an InputConv, ``2**bits - 1`` for InputData."""
        return self.input_data.max_value if self.input_data is not None else 255

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
    input_data = None
    for index, layer in enumerate(layers):
        kind = layer.parameters.layer_type.name
        if kind not in SUPPORTED_TYPES:
            raise ModelError(
                f"layer '{layer.name}' has type {kind}; only Akida 1.0 {', '.join(SUPPORTED_TYPES)} are supported"
            )
        if (kind in _INPUT_TYPES) != (index == 0):
            raise ModelError(
                f"layer '{layer.name}' ({kind}): an Akida 1.0 model must start with exactly one "
                "InputData or InputConvolutional"
            )
        if kind == "InputData":
            input_data = _input_data(layer)
            continue
        if index < len(layers) - 1 and not layer.parameters.activation:
            raise ModelError(f"layer '{layer.name}' ({kind}) has no activation but is not the last layer")
        converted.append(_convert(layer, kind))
    if not converted:
        raise ModelError(f"layer '{layers[0].name}' (InputData) is the whole model; it needs a layer after it")
    return AkidaModel(tuple(converted), input_data)


def _input_data(layer: Any) -> InputData:
    params = layer.parameters
    if params.input_signed:
        raise ModelError(f"layer '{layer.name}' (InputData) has signed inputs; only unsigned inputs are supported")
    bits = int(params.input_bits)
    if not 1 <= bits <= MAX_INPUT_DATA_BITS:
        raise ModelError(
            f"layer '{layer.name}' (InputData) has {bits}-bit inputs; Akida 1.0 layers take "
            f"1 to {MAX_INPUT_DATA_BITS} bits"
        )
    return InputData(name=layer.name, input_shape=_shape3(layer.output_dims), input_bits=bits)


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
        "global_avg_pool": int(params.pool_type) == _POOL_AVERAGE,
    }
    if kind == "InputConvolutional":
        return InputConv(padding_value=int(params.padding_value), **common, **conv)
    if kind == "SeparableConvolutional":
        return SepConv(weights_pw=_frozen(variables["weights_pw"], np.int8), **common, **conv)
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
    """The max pooling, or None (no pooling, or global average pooling: see ``global_avg_pool``)."""
    pool_type = int(params.pool_type)
    if pool_type in (_POOL_NONE, _POOL_AVERAGE):
        return None
    if pool_type != _POOL_MAX:
        raise ModelError(
            f"layer '{name}' ({kind}) uses pooling type {pool_type}; only max and global average pooling are supported"
        )
    return MaxPool(
        size=(int(params.pooling_width), int(params.pooling_height)),
        stride=(int(params.pooling_stride_x), int(params.pooling_stride_y)),
    )
