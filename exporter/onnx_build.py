"""The integer Akida 1.0 network as an ONNX graph that gives exactly the engine's outputs.

Why this graph is exact, and not merely close (docs/bundle.md has the argument with numbers):

* Every tensor holds integers. Convolutions and FullyConnected layers (written as a Conv whose
  kernel covers the whole input map) run in float32, which is exact while every product and partial
  sum stays below 2**24 in magnitude; :func:`check_exact` proves that per layer from the weights and
  the input range, whatever order the runtime sums in, and refuses the model otherwise.
* The firing rule needs no division. akida's engine fires level ``k`` (1 <= k <= 2**act_bits - 1)
  exactly when ``(pot - threshold) * 2**act_bits > (k - 1) * t16``, with ``t16 = floor(16 * act_step)``
  (docs/akida-semantics.md; :func:`edge_runtime.akida_rules.fire` is the reference). For integer
  potentials that is ``pot >= level_k`` with integer ``level_k`` computed here in exact integer
  arithmetic, so the activation is a count of true comparisons: exact on any IEEE float32 hardware,
  with no reliance on how a runtime divides.
* The engine's 32-bit arithmetic can wrap for absurd thresholds or steps; the graph does not mimic
  that, so :func:`check_exact` refuses such layers rather than emit a graph that would differ.
* The engine's potentials are 20-bit where that can matter (docs/akida-semantics.md): a
  FullyConnected's potential is clipped (a Clip node), and a global average pool adds its positions'
  potentials one by one, x slowest, saturating at each step (a ReduceSum where no partial sum can
  leave the range, else a chain of Add + Clip over the positions: exact, as every partial sum is).
* A SeparableConvolutional is one Conv with its fused kernel (depthwise x pointwise): integer
  products of integers, so exact under the same 2**24 bound.

Layout: the graph takes akida's frames ``(N, X, Y, C)`` uint8 and returns what ``akida.Model.forward``
returns, ``(N, X', Y', F)`` uint8 activations or int32 potentials. Inside it works in ONNX's NCHW with
H = akida's X and W = Y, so a Convolutional's true convolution is a cross-correlation with the
kernel flipped on both spatial axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime import __version__
from edge_runtime.akida_model import AkidaModel, ConvLayer, Dense, InputConv, Layer
from edge_runtime.akida_rules import (
    POTENTIAL_MAX,
    POTENTIAL_MIN,
    engine_t16,
    potential_extremes,
    saturates,
    summed_positions,
    window_geometry,
)
from edge_runtime.errors import ModelError

OPSET = 17  # supported by onnxruntime >= 1.12; newer opsets add nothing this graph needs
IR_VERSION = 8  # the IR version of opset 17, so older runtimes on edge hosts can load the file
FLOAT32_EXACT = 2**24
INPUT_NAME, OUTPUT_NAME = "input", "output"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class LayerBound:
    """The largest magnitudes one layer's float32 arithmetic can meet; all must be < 2**24."""

    name: str
    max_abs_potential: int  # |potential| bound: sum of |w| over a neuron's inputs x the largest input
    max_abs_level: int  # |level| bound of the firing comparisons (0 without activation)

    @property
    def max_abs_value(self) -> int:
        return max(self.max_abs_potential, self.max_abs_level)


def _fan_in_matrix(layer: Layer) -> np.ndarray:
    """Weights as (fan-in, filters) int64 (a SepConv's fused); the layout of the rows does not matter for bounds."""
    weights = layer.weights if isinstance(layer, Dense) else layer.fused_weights
    return weights.reshape(-1, weights.shape[-1]).astype(np.int64)


def _potential_range(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Per filter, the potentials the firing can see: the sums' extremes, within 20 bits where the
    engine clips or saturates them."""
    low, high = potential_extremes(layer, _fan_in_matrix(layer))
    if saturates(layer, _fan_in_matrix(layer)):
        low, high = np.maximum(low, POTENTIAL_MIN), np.minimum(high, POTENTIAL_MAX)
    return low, high


def fire_levels(threshold: np.ndarray, act_step: np.ndarray, act_bits: int) -> np.ndarray:
    """(F, 2**act_bits - 1) int64: the smallest integer potential that reaches each activation level.

    ``(pot - th) * 2**b > (k - 1) * t16`` <=> ``pot > th + (k - 1) * t16 / 2**b``
    <=> ``pot >= floor((th * 2**b + (k - 1) * t16) / 2**b) + 1``, all in integers.
    """
    t16 = engine_t16(act_step)
    k = np.arange(2**act_bits - 1, dtype=np.int64)
    scaled = threshold.astype(np.int64)[:, None] * 2**act_bits + k[None, :] * t16[:, None]
    return np.floor_divide(scaled, 2**act_bits) + 1


def layer_bounds(model: AkidaModel) -> tuple[LayerBound, ...]:
    """Per layer, the magnitudes the float32 graph computes with (see :func:`check_exact`)."""
    bounds = []
    for layer in model.layers:
        matrix = _fan_in_matrix(layer)
        low, high = potential_extremes(layer, matrix)
        potential = int(max(np.abs(low).max(initial=0), np.abs(high).max(initial=0)))
        if saturates(layer, matrix) and summed_positions(layer) > 1:
            # the running sum stays within 20 bits, and one position's potential is added at a time
            potential = potential // summed_positions(layer) + POTENTIAL_MAX + 1
        level = 0
        if layer.activation:
            levels = fire_levels(layer.threshold, layer.act_step, layer.act_bits)
            # Levels beyond the potential range are clamped to +-(potential + 1) in the graph.
            level = int(min(np.abs(levels).max(initial=0), potential + 1))
        bounds.append(LayerBound(layer.name, potential, level))
    return tuple(bounds)


def check_exact(model: AkidaModel) -> tuple[LayerBound, ...]:
    """Prove the float32 graph equals the engine for every possible input, or raise ModelError."""
    bounds = layer_bounds(model)
    for layer, bound in zip(model.layers, bounds, strict=True):
        if bound.max_abs_value >= FLOAT32_EXACT:
            raise ModelError(
                f"layer '{layer.name}': potentials can reach {bound.max_abs_value} >= 2**24, beyond exact "
                "float32 integers; the ONNX graph would not be bit-exact"
            )
        if layer.activation:
            _check_no_wraparound(layer)
    return bounds


def _check_no_wraparound(layer: Layer) -> None:
    """Refuse steps and thresholds for which the engine's 32-bit firing arithmetic can wrap."""
    low, high = _potential_range(layer)
    top = high - layer.threshold.astype(np.int64)
    bottom = low - layer.threshold.astype(np.int64)
    t16 = engine_t16(layer.act_step)
    problems = []
    if np.any(t16 < 1):
        problems.append("act_step below 1/16")
    if np.any(top > _INT32_MAX) or np.any(bottom < _INT32_MIN):
        problems.append("potential - threshold can leave the int32 range")
    if np.any((16 * np.maximum(top, 0) - 1) << layer.act_bits >= 2**32):
        problems.append("potential - threshold is large enough to wrap the engine's 32-bit activation")
    if problems:
        raise ModelError(
            f"layer '{layer.name}': {'; '.join(problems)}; the engine's result there is an artefact of "
            "its integer wrap-around, which the ONNX graph does not reproduce: use thresholds and "
            "act_steps in the potentials' range"
        )


class _Graph:
    """Accumulates nodes and initialisers with readable, layer-prefixed names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _onnx_kernel(layer: Layer) -> np.ndarray:
    """Weights as ONNX Conv wants them: (F, C, kH=kX, kW=kY) float32."""
    if isinstance(layer, Dense):
        x, y, c = layer.input_shape
        # Rows are akida's flattening of (X, Y, C) with x fastest, i.e. a Fortran-order reshape.
        kernel = layer.weights.reshape((x, y, c, layer.units), order="F")
    else:
        kernel = layer.fused_weights if isinstance(layer, InputConv) else layer.fused_weights[::-1, ::-1]
    return kernel.transpose(3, 2, 0, 1).astype(np.float32)


def _limits(graph: _Graph, name: str) -> tuple[str, str]:
    """The engine's 20-bit potential range as Clip bounds."""
    return (
        graph.const(f"{name}/potential_min", np.array(POTENTIAL_MIN, np.float32)),
        graph.const(f"{name}/potential_max", np.array(POTENTIAL_MAX, np.float32)),
    )


def _add_global_pool(graph: _Graph, layer: ConvLayer, x: str) -> str:
    """(N, F, X, Y) potentials -> (N, F, 1, 1): the engine's sum over positions, x slowest."""
    name = layer.name
    if not saturates(layer, _fan_in_matrix(layer)):
        axes = graph.const(f"{name}/spatial_axes", np.array([2, 3], np.int64))
        return graph.node("ReduceSum", [x, axes], f"{name}/pooled", keepdims=1)
    positions = summed_positions(layer)
    flat = graph.const(f"{name}/flat_shape", np.array([0, 0, positions], np.int64))
    x = graph.node("Reshape", [x, flat], f"{name}/positions")  # C order over (X, Y): x slowest
    parts = [f"{name}/position_{p}" for p in range(positions)]
    graph.nodes.append(helper.make_node("Split", [x], parts, name=f"{name}/split", axis=2))  # equal parts
    low, high = _limits(graph, name)
    total = parts[0]
    for p in range(1, positions):
        total = graph.node("Add", [total, parts[p]], f"{name}/sum_{p}")
        total = graph.node("Clip", [total, low, high], f"{name}/saturated_{p}")
    shape = graph.const(f"{name}/pooled_shape", np.array([0, 0, 1, 1], np.int64))
    return graph.node("Reshape", [total, shape], f"{name}/pooled")


def _add_conv(graph: _Graph, layer: ConvLayer, x: str, kernel: str) -> str:
    """[Pad with padding_value] -> Conv -> [MaxPool of the potentials], 'same' padding odd extra after."""
    name, (sx, sy), (kx, ky) = layer.name, layer.stride, layer.kernel
    ox, px0, px1 = window_geometry(layer.input_shape[0], kx, sx, layer.padding)
    oy, py0, py1 = window_geometry(layer.input_shape[1], ky, sy, layer.padding)
    pads = [px0, py0, px1, py1]
    if isinstance(layer, InputConv) and layer.padding_value and any(pads):
        pad_spec = graph.const(f"{name}/pads", np.array([0, 0, px0, py0, 0, 0, px1, py1], np.int64))
        value = graph.const(f"{name}/padding_value", np.array(layer.padding_value, np.float32))
        x = graph.node("Pad", [x, pad_spec, value], f"{name}/padded")
        pads = [0, 0, 0, 0]
    x = graph.node("Conv", [x, kernel], f"{name}/potentials", strides=[sx, sy], pads=pads)
    if layer.global_avg_pool:
        return _add_global_pool(graph, layer, x)
    if layer.pool is None:
        return x
    (wx, wy), (qsx, qsy) = layer.pool.size, layer.pool.stride
    _, qx0, qx1 = window_geometry(ox, wx, qsx, layer.padding)
    _, qy0, qy1 = window_geometry(oy, wy, qsy, layer.padding)
    return graph.node(
        "MaxPool", [x], f"{name}/pooled", kernel_shape=[wx, wy], strides=[qsx, qsy], pads=[qx0, qy0, qx1, qy1]
    )


def _add_firing(graph: _Graph, layer: Layer, x: str, bound: LayerBound) -> str:
    """Activation = number of levels the potential reaches (see the module docstring)."""
    name = layer.name
    limit = bound.max_abs_potential + 1  # clamping keeps every level exact and changes no comparison
    levels = np.clip(fire_levels(layer.threshold, layer.act_step, layer.act_bits), -limit, limit)
    levels_const = graph.const(f"{name}/levels", levels.astype(np.float32)[:, None, None, :])  # (F, 1, 1, K)
    axis = graph.const(f"{name}/last_axis", np.array([-1], np.int64))
    x = graph.node("Unsqueeze", [x, axis], f"{name}/potentials_1")  # (N, F, X, Y, 1)
    x = graph.node("GreaterOrEqual", [x, levels_const], f"{name}/reached")  # (N, F, X, Y, K)
    x = graph.node("Cast", [x], f"{name}/reached_f", to=TensorProto.FLOAT)
    return graph.node("ReduceSum", [x, axis], f"{name}/activations", keepdims=0)


def _add_layer(graph: _Graph, layer: Layer, x: str, bound: LayerBound) -> str:
    kernel = graph.const(f"{layer.name}/weights", _onnx_kernel(layer))
    if isinstance(layer, Dense):
        x = graph.node("Conv", [x, kernel], f"{layer.name}/potentials")
        if saturates(layer, _fan_in_matrix(layer)):
            x = graph.node("Clip", [x, *_limits(graph, layer.name)], f"{layer.name}/clipped")
    else:
        x = _add_conv(graph, layer, x, kernel)
    return _add_firing(graph, layer, x, bound) if layer.activation else x


def to_onnx(model: AkidaModel, name: str) -> onnx.ModelProto:
    """The checked, exact ONNX graph of ``model``; raises ModelError if exactness cannot be proved."""
    bounds = check_exact(model)
    graph = _Graph()
    x = graph.node("Cast", [INPUT_NAME], "input_f", to=TensorProto.FLOAT)
    x = graph.node("Transpose", [x], "input_nchw", perm=[0, 3, 1, 2])
    for layer, bound in zip(model.layers, bounds, strict=True):
        x = _add_layer(graph, layer, x, bound)
    x = graph.node("Transpose", [x], "output_nhwc", perm=[0, 2, 3, 1])
    out_type = TensorProto.UINT8 if model.output_dtype == np.uint8 else TensorProto.INT32
    graph.node("Cast", [x], OUTPUT_NAME, to=out_type)
    proto = helper.make_graph(
        graph.nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", *model.input_shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, out_type, ["N", *model.output_shape])],
        graph.initializers,
    )
    onnx_model = helper.make_model(
        proto,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="akida-edge",
        producer_version=__version__,
        doc_string="Akida 1.0 integer network; outputs equal akida.Model.forward bit for bit (docs/bundle.md).",
    )
    onnx_model.ir_version = IR_VERSION
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as error:  # a bug here, not a user error: keep the traceback
        raise RuntimeError(f"built an invalid ONNX graph for {name}: {error}") from error
    return onnx_model
