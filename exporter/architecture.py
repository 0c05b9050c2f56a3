"""The network as a list of Akida 1.0 layers from the training config, checked against the chip's rules.

Why a layer list and not a fixed class: the models people run on Akida 1.0 (DS-CNN keyword spotting,
the ISCAS 3-conv net, AkidaNet) differ only in the stack of the same four layer kinds, so the
training config names the stack (``[[model.layers]]``, docs/training.md) and one generic QAT network
(:mod:`exporter.qat`) trains any of them. Every rule the engine or AKD1000 would enforce is checked
here, when the config is read, with one message naming the layer (index and type) and the rule,
so a wrong stack fails in a second and not after an hour of training (mapping on AKD1000 itself
needs the integer layers: :func:`exporter.train.check_on_akd1000`, run before any epoch).

Geometry follows akida's axes: a feature map is ``(X, Y, C)`` (torch holds it as ``(N, C, X, Y)``);
'same' padding puts the odd extra row/column after (``edge_runtime.akida_rules.window_geometry``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.akida_rules import window_geometry

LAYER_TYPES = ("input_conv", "conv", "separable", "dense")
AKIDA_KINDS = {
    "input_conv": "InputConvolutional",
    "conv": "Convolutional",
    "separable": "SeparableConvolutional",
    "dense": "FullyConnected",
}
POOLS = ("none", "max", "global_average")
PADDINGS = ("same", "valid")
KERNELS = {"input_conv": (3, 5, 7), "conv": (1, 3, 5, 7), "separable": (3, 5, 7)}
# AKD1000 maps 2- or 4-bit separable weights only ("Separable CNP weights bitwidth must be 2 or 4"; the engine runs 1)
WEIGHT_BITS = {"input_conv": (8,), "conv": (1, 2, 4), "separable": (2, 4), "dense": (1, 2, 4)}
ACT_BITS = (1, 2, 4)
INPUT_CHANNELS = (1, 3)  # an InputConvolutional takes greyscale or RGB
INPUT_BITS = (1, 2, 4, 8)  # 8: uint8 pixels into an InputConvolutional; 1/2/4: events straight in (InputData)
MAX_POOL_SIZES = (1, 2)  # AKD1000 refuses 3 ("Pooling size 3 is not supported on NSoC_v2"; the engine runs it)
ACT_STEP_MAX = 65535  # AKD1000's CNPs refuse a larger act_step ("act_step should be between 0 and 65535")
DENSE_MAX_INPUTS = 57334  # Akida 1.0 FullyConnected input size limit
FLOAT32_EXACT = 2**24  # the QAT forward computes integer potentials in float32: exact below this
POTENTIAL_LIMIT = 2**19  # the engine's 20-bit potentials (FullyConnected, global average pool sums)
PIXEL_MAX = 255


@dataclass(frozen=True)
class LayerConfig:
    """One Akida 1.0 layer of the network (one ``[[model.layers]]`` table, defaults filled in)."""

    type: str  # input_conv | conv | separable | dense
    name: str = ""  # "" = conv<i> for the convolutional kinds, fc<i> for dense (i = index in the list)
    filters: int = 0  # convolutional kinds: output channels
    units: int = 0  # dense: outputs
    kernel: int = 3  # square kernel side (convolutional kinds)
    stride: int = 1
    padding: str = "same"  # same | valid
    padding_value: int = 0  # input_conv only: the pixel value 'same' padding adds
    pool: str = "none"  # none | max | global_average (convolutional kinds)
    pool_size: int = 2  # max pool window side
    pool_stride: int = 0  # 0 = pool_size
    weight_bits: int = 0  # 0 = 8 for input_conv, 4 otherwise
    activation_bits: int = 4
    activation: bool = True  # only the last layer may be false (its raw int32 potentials are the scores)

    @property
    def kind(self) -> str:
        return AKIDA_KINDS[self.type]

    @property
    def width(self) -> int:
        """Filters or units: the output channels."""
        return self.units if self.type == "dense" else self.filters

    @property
    def bits(self) -> int:
        """Weight bits with the default filled in."""
        return self.weight_bits or (8 if self.type == "input_conv" else 4)

    def resolved(self) -> LayerConfig:
        """The same layer with its defaults written out (so equal layers compare equal)."""
        stride = (self.pool_stride or self.pool_size) if self.pool == "max" else self.pool_stride
        return dataclasses.replace(self, weight_bits=self.bits, pool_stride=stride)

    @property
    def max_pool(self) -> tuple[int, int] | None:
        """(size, stride) of the max pool, or None."""
        return (self.pool_size, self.pool_stride or self.pool_size) if self.pool == "max" else None


@dataclass(frozen=True)
class Geometry:
    """Where one layer sits in the network: shapes are akida's (X, Y, C)."""

    input_shape: tuple[int, int, int]
    conv_shape: tuple[int, int]  # (X, Y) of the potentials before pooling (convolutional kinds)
    pad: tuple[int, int, int, int]  # convolution padding: x before, x after, y before, y after
    pool_pad: tuple[int, int, int, int]  # max pool windows past the edge, same order (see simulator)
    output_shape: tuple[int, int, int]
    input_bits: int

    @property
    def positions(self) -> int:
        """Potentials a global average pool sums (the pre-pool output positions)."""
        return self.conv_shape[0] * self.conv_shape[1]


@dataclass(frozen=True)
class Architecture:
    """The whole network: input, then the layers (a dense last; an input_conv first on 8-bit pixels,
    else an InputData in front of the first layer, which takes the 1/2/4-bit frames as events)."""

    input_shape: tuple[int, int, int]
    layers: tuple[LayerConfig, ...]
    input_bits: int = 8

    def names(self) -> list[str]:
        return [layer_name(layer, i) for i, layer in enumerate(self.layers)]

    def geometry(self) -> list[Geometry]:
        """Per layer its shapes; assumes :func:`rule_errors` found nothing."""
        out, shape, bits = [], self.input_shape, self.input_bits
        for layer in self.layers:
            geometry = layer_geometry(layer, shape, bits)
            out.append(geometry)
            shape, bits = geometry.output_shape, layer.activation_bits
        return out

    @property
    def classes(self) -> int:
        return self.layers[-1].width


def layer_name(layer: LayerConfig, index: int) -> str:
    return layer.name or f"{'fc' if layer.type == 'dense' else 'conv'}{index}"


def layer_geometry(layer: LayerConfig, shape: tuple[int, int, int], input_bits: int) -> Geometry:
    x, y, _ = shape
    if layer.type == "dense":
        return Geometry(shape, (1, 1), (0, 0, 0, 0), (0, 0, 0, 0), (1, 1, layer.units), input_bits)
    ox, px0, px1 = window_geometry(x, layer.kernel, layer.stride, layer.padding)  # type: ignore[arg-type]
    oy, py0, py1 = window_geometry(y, layer.kernel, layer.stride, layer.padding)  # type: ignore[arg-type]
    pool_pad = (0, 0, 0, 0)
    out = (ox, oy, layer.filters)
    if layer.max_pool is not None:
        size, stride = layer.max_pool
        qx, qx0, qx1 = window_geometry(ox, size, stride, layer.padding)  # type: ignore[arg-type]
        qy, qy0, qy1 = window_geometry(oy, size, stride, layer.padding)  # type: ignore[arg-type]
        pool_pad, out = (qx0, qx1, qy0, qy1), (qx, qy, layer.filters)
    elif layer.pool == "global_average":
        out = (1, 1, layer.filters)
    return Geometry(shape, (ox, oy), (px0, px1, py0, py1), pool_pad, out, input_bits)


def legacy_layers(conv0: int, conv1: int, fc: int, classes: int = 10) -> tuple[LayerConfig, ...]:
    """The old ``[model] conv0/conv1/fc`` form: the fixed MNIST network it always meant."""
    layers = (
        LayerConfig("input_conv", filters=conv0, kernel=3, pool="max", pool_size=2),
        LayerConfig("conv", filters=conv1, kernel=3, stride=2),
        LayerConfig("dense", units=fc),
        LayerConfig("dense", units=classes, activation=False),
    )
    return tuple(layer.resolved() for layer in layers)


def layer_table(layer: LayerConfig) -> dict[str, Any]:
    """The ``[[model.layers]]`` table that reads back into ``layer`` (only the keys that apply)."""
    table: dict[str, Any] = {"type": layer.type}
    if layer.name:
        table["name"] = layer.name
    if layer.type == "dense":
        table["units"] = layer.units
    else:
        table.update(filters=layer.filters, kernel=layer.kernel, stride=layer.stride, padding=layer.padding)
        if layer.type == "input_conv":
            table["padding_value"] = layer.padding_value
        table["pool"] = layer.pool
        if layer.pool == "max":
            table.update(pool_size=layer.pool_size, pool_stride=layer.pool_stride or layer.pool_size)
    table.update(weight_bits=layer.bits, activation_bits=layer.activation_bits, activation=layer.activation)
    return table


def rule_errors(input_shape: Sequence[int], layers: Sequence[LayerConfig], input_bits: int = 8) -> list[str]:
    """The first Akida 1.0 / AKD1000 rule the stack breaks, as one message naming the layer (the
    layers after a bad one are not checked: their shapes depend on it); [] if none."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        return [f"model.input_shape must be [X, Y, C] of positive sizes, got {list(input_shape)}"]
    if not layers:
        return ["model.layers is empty: a network needs an input_conv layer and a dense output layer"]
    if input_bits not in INPUT_BITS:
        return [f"model.input_bits {input_bits}: 8 (pixels into an input_conv) or 1, 2, 4 (InputData events)"]
    errors = []
    shape, bits = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2])), input_bits
    for index, layer in enumerate(layers):
        problem = _layer_problem(index, layer, layers, shape, input_bits)
        where = f"model.layers[{index}] ({layer.type}{f' {layer.name!r}' if layer.name else ''})"
        if problem:
            errors.append(f"{where}: {problem}")
            break  # the next layers' shapes depend on this one
        geometry = layer_geometry(layer, shape, bits)
        problem = _size_problem(layer, geometry)
        if problem:
            errors.append(f"{where}: {problem}")
            break
        shape, bits = geometry.output_shape, layer.activation_bits
    names = [layer_name(layer, i) for i, layer in enumerate(layers)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice and not errors:
        errors.append(f"model.layers: names {', '.join(twice)} are used twice; each layer needs its own")
    return errors


def _layer_problem(
    index: int, layer: LayerConfig, layers: Sequence[LayerConfig], shape: tuple[int, int, int], input_bits: int
) -> str | None:
    last = index == len(layers) - 1
    previous = layers[index - 1] if index else None
    checks: list[tuple[bool, str]] = [
        (layer.type in LAYER_TYPES, f"type must be one of {', '.join(LAYER_TYPES)}"),
    ]
    if layer.type not in LAYER_TYPES:
        return checks[0][1]
    checks += [
        (
            (layer.type == "input_conv") == (index == 0) or input_bits != 8,
            "the first layer, and only the first, must be an input_conv (Akida 1.0 models start with one "
            "InputConvolutional on the 8-bit pixels; model.input_bits 1, 2 or 4 puts an InputData there instead)",
        ),
        (
            layer.type != "input_conv" or input_bits == 8,
            f"an input_conv takes 8-bit pixels, not model.input_bits {input_bits} (with 1/2/4-bit inputs the "
            "frames go straight to a conv, separable or dense first layer as events)",
        ),
        (
            layer.type != "input_conv" or shape[2] in INPUT_CHANNELS,
            f"an InputConvolutional takes 1 or 3 input channels; model.input_shape has {shape[2]}",
        ),
        (layer.width >= 1, f"needs {'units' if layer.type == 'dense' else 'filters'} >= 1"),
        (
            layer.type != "dense" or (layer.filters == 0 and layer.pool == "none" and layer.kernel == 3),
            "a dense layer takes units, not filters, kernel or pool",
        ),
        (layer.type == "dense" or layer.units == 0, "a convolutional layer takes filters, not units"),
        (
            layer.bits in WEIGHT_BITS[layer.type],
            f"weight_bits {layer.bits}: Akida 1.0 {layer.kind} weights are "
            f"{' or '.join(map(str, WEIGHT_BITS[layer.type]))} bits",
        ),
        (
            layer.activation_bits in ACT_BITS,
            f"activation_bits {layer.activation_bits}: Akida 1.0 activations are 1, 2 or 4 bits",
        ),
        (layer.activation or last, "only the last layer may have activation = false (the engine refuses it elsewhere)"),
        (not last or layer.type == "dense", "the last layer must be a dense layer (one output per class)"),
        (
            layer.type == "input_conv" or layer.padding_value == 0,
            "padding_value applies to an input_conv only (other layers pad with 0)",
        ),
        (
            previous is None or previous.type != "dense" or layer.type == "dense",
            "only a dense layer may follow a dense layer",
        ),
        (
            previous is None or previous.pool != "max" or layer.type in ("conv", "separable"),
            "a max-pooled layer must be followed by a conv or separable layer (AKD1000 cannot map a dense "
            "layer after a max pool)",
        ),
    ]
    if layer.type != "dense":
        checks += [
            (
                layer.kernel in KERNELS[layer.type],
                f"kernel {layer.kernel}: Akida 1.0 {layer.kind} kernels are {', '.join(map(str, KERNELS[layer.type]))}",
            ),
            (
                layer.stride in (1, 2) and layer.stride <= layer.kernel,
                f"stride {layer.stride}: strides are 1 or 2, at most the kernel size",
            ),
            (
                layer.type == "input_conv" or layer.stride == 1 or layer.kernel == 3,
                f"stride 2 with kernel {layer.kernel}: AKD1000 supports stride 2 only for 3x3 kernels after the "
                "input layer",
            ),
            (layer.padding in PADDINGS, f"padding {layer.padding!r}: one of {', '.join(PADDINGS)}"),
            (
                layer.type == "input_conv" or layer.padding == "same",
                f"padding {layer.padding!r}: AKD1000 maps only 'same' padding after the input layer",
            ),
            (layer.pool in POOLS, f"pool {layer.pool!r}: one of {', '.join(POOLS)}"),
            (
                layer.pool != "max"
                or (
                    layer.pool_size in MAX_POOL_SIZES and 1 <= (layer.pool_stride or layer.pool_size) <= layer.pool_size
                ),
                f"max pool {layer.pool_size} stride {layer.pool_stride or layer.pool_size}: AKD1000 max pools are "
                "1 or 2 wide, with a stride at most the size",
            ),
            (
                layer.pool != "max" or layer.type != "input_conv" or layer.pool_stride in (0, layer.pool_size),
                f"max pool {layer.pool_size} stride {layer.pool_stride}: AKD1000's input layer pools with a "
                "stride equal to the size",
            ),
            (
                layer.pool != "global_average" or layer.type != "input_conv",
                "global average pooling: AKD1000's input layer pools only by max",
            ),
            (
                layer.type != "input_conv" or 0 <= layer.padding_value <= PIXEL_MAX,
                "padding_value must be a pixel value 0..255",
            ),
        ]
    for ok, message in checks:
        if not ok:
            return message
    return None


def _size_problem(layer: LayerConfig, geometry: Geometry) -> str | None:
    """Shape rules: something left after 'valid', dense input size, exact float32 potentials."""
    x, y, c = geometry.input_shape
    if layer.type == "dense":
        if x * y * c > DENSE_MAX_INPUTS:
            return f"{x * y * c} inputs; an Akida 1.0 FullyConnected takes at most {DENSE_MAX_INPUTS}"
    elif min(geometry.conv_shape) < 1 or min(geometry.output_shape[:2]) < 1:
        return f"leaves no output positions on its {x}x{y} input (kernel {layer.kernel}, {layer.padding})"
    largest = potential_bound(layer, geometry, summed=False)
    if largest >= FLOAT32_EXACT:
        return (
            f"its potentials can reach {largest}, beyond 2**24 where the QAT forward's float32 sums stop being "
            "exact; use fewer channels or a smaller kernel"
        )
    return None


def potential_bound(layer: LayerConfig, geometry: Geometry, summed: bool = True) -> int:
    """The largest |potential| the layer can compute, from its input range, weight range and fan-in;
    with ``summed``, after a global average pool's sum of all positions (what decides 20-bit
    saturation), else at one position (what decides float32 exactness: the pool's running sum is
    clamped to 20 bits after each addition where it could pass them)."""
    x, y, c = geometry.input_shape
    if layer.type == "dense":
        fan_in = x * y * c
    else:
        fan_in = layer.kernel * layer.kernel * (c if layer.type != "separable" else 1)
    input_max = PIXEL_MAX if layer.type == "input_conv" else 2**geometry.input_bits - 1
    weight_max = 127 if layer.bits == 8 else max(2 ** (layer.bits - 1) - 1, 1)
    largest = input_max * weight_max * fan_in
    if layer.type == "separable":
        largest *= weight_max * c  # the pointwise sum over channels of the depthwise results
    if summed and layer.pool == "global_average":
        largest *= geometry.positions
    return largest


def spec_entry(layer: LayerConfig, name: str, geometry: Geometry, first: bool = False) -> dict[str, Any]:
    """The layer as a run's ``spec.json`` lists it (what ``exporter.run_reader.model_from_spec`` reads).

    The first layer of a network without an input_conv also records the InputData in front of it
    (``input_shape``, ``input_bits``)."""
    entry: dict[str, Any] = {"name": name, "kind": layer.kind}
    if first and layer.type != "input_conv":
        entry.update(input_shape=list(geometry.input_shape), input_bits=geometry.input_bits)
    if layer.type == "dense":
        entry["units"] = layer.units
    else:
        if layer.type == "input_conv":
            entry["input_shape"] = list(geometry.input_shape)
        pool: dict[str, Any] | None = None
        if layer.max_pool is not None:
            size, stride = layer.max_pool
            pool = {"type": "max", "size": [size, size], "stride": [stride, stride]}
        elif layer.pool == "global_average":
            pool = {"type": "global_average"}
        entry.update(
            filters=layer.filters,
            kernel_size=[layer.kernel, layer.kernel],
            kernel_stride=[layer.stride, layer.stride],
            padding=layer.padding,
        )
        if layer.type == "input_conv":
            entry["padding_value"] = layer.padding_value
        entry["pool"] = pool
    entry.update(weights_bits=layer.bits, activation=layer.activation)
    if layer.activation:
        entry["act_bits"] = layer.activation_bits
    return entry
