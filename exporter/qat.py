"""Any Akida 1.0 network from the config, and its quantisation-aware forward pass, which IS the chip's
integer arithmetic. (About 560 lines, one module on purpose: the float and integer forwards of every
layer kind, the calibration and the export read the same parameter layout, which a split would scatter.)

The layers come from ``[model]`` (exporter/architecture.py): an InputConvolutional (8-bit weights on
the HRC, on uint8 pixels), then Convolutional, SeparableConvolutional and FullyConnected layers with
1/2/4-bit weights and activations, max or global average pooling, the last FullyConnected with or
without activation. The shipped MNIST network (AKD1000 maps it fully; a max-pooled conv must be
followed by a conv, so the second conv is strided instead of pooled):

    uint8 (N, 28, 28, 1)
    -> InputConvolutional 3x3 'Same', 8-bit weights, max pool 2  -> (14, 14, conv0), 4-bit activations
    -> Convolutional 3x3 stride 2 'Same', 4-bit weights          -> (7, 7, conv1),   4-bit activations
    -> FullyConnected, 4-bit weights                             -> fc,              4-bit activations
    -> FullyConnected 10, 4-bit weights, activation=False        -> int32 class potentials

Why the QAT forward computes integers and not a float "fake-quant" approximation: what we count
during training (non-zero activations) must be exactly what the chip will see, and the exported
model must reproduce the training-time eval outputs bit for bit. So every layer computes integer
potentials (integer-valued float32 tensors; every partial sum stays below 2**24 so float32 is exact,
which the config checks), pools them (max, or the global average pool's sum, saturating at the
engine's 20 bits like FullyConnected potentials where the layer could reach them), and applies
Akida 1.0's activation rule with an integer threshold and an integer effective step ``E``:

    out = clip(ceil((pot - threshold) / E), 0, 2**act_bits - 1)

exported as ``act_step = E * 2**(act_bits - 4)``, for which the engine's fixed-point rule
(``t16 = floor(16 * act_step) = E * 2**act_bits``, docs/akida-semantics.md) gives exactly this.

Gradients are straight-through: rounding passes the gradient unchanged, the activation passes it
where the output is not clipped. The float parameters behind the integers (LSQ-style) are:

* ``W`` (float weights) and ``delta_in`` (the previous layer's per-channel activation step): the
  layer quantises ``V = W * delta_in`` per output channel, ``w_int = round(V / s)``, ``s = max|V| / qmax``;
  a separable layer quantises its depthwise ``V_dw = W_dw * delta_in`` per channel (scale ``s_dw``),
  then its pointwise ``V_pw = W_pw * s_dw`` per filter (scale ``s``): the engine fuses the two with no
  rounding in between, so one potential unit is again worth ``s``;
* ``b`` (bias) and ``delta`` (this layer's activation step): the real pre-activation is
  ``z = s * pot + b`` and the activation is ``round(relu(z) / delta)``, i.e.
  ``threshold = (delta / 2 - b) / s`` and ``E = delta / s``, both rounded to integers
  (cnn2snn's own v1 conversion uses the same ``threshold = -bias + step / 2``). A global average pool
  sums P positions where the real network averages them, so there ``s`` is replaced by ``s / P``.

The class scores of the last layer are its raw integer potentials; its weights use ONE scale for all
units so that the argmax of the potentials is the argmax of the real logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .architecture import (
    ACT_STEP_MAX,
    POTENTIAL_LIMIT,
    Architecture,
    Geometry,
    LayerConfig,
    potential_bound,
    spec_entry,
)
from .config import ModelConfig

ACT_BITS = 4  # the shipped networks' activation bits (a layer's own are in its LayerConfig)
ACT_LEVELS = 2**ACT_BITS - 1  # 15: the largest 4-bit activation
INPUT_WEIGHT_MAX = 127  # 8-bit weights of the InputConvolutional layer
WEIGHT_MAX = 7  # 4-bit weights are in [-7, 7] (enforced by the engine)
PIXEL_MAX = 255.0
CLASSES = 10
IMAGE_SIZE = 28


def weight_range(bits: int) -> tuple[int, int]:
    """(lowest, highest) integer weight the engine takes: 8-bit [-127, 127] (symmetric; the engine
    allows -128), 4-bit [-7, 7], 2-bit [-1, 1], 1-bit [0, 1]."""
    if bits == 8:
        return -INPUT_WEIGHT_MAX, INPUT_WEIGHT_MAX
    if bits == 1:
        return 0, 1
    top = 2 ** (bits - 1) - 1
    return -top, top


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient is the identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _StepActivation(torch.autograd.Function):
    """Return the exact integer activation; pass the gradient to ``u`` where the output is not clipped.

    ``u = (pot - threshold) / act_step`` is the differentiable surrogate; the exact value is computed
    separately (in float64) so that float32 rounding of ``u`` can never change an output.
    """

    @staticmethod
    def forward(ctx, u: Tensor, exact: Tensor, levels: int) -> Tensor:
        ctx.save_for_backward((u > -1) & (u < levels))
        return exact

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (passing,) = ctx.saved_tensors
        return grad * passing, None, None


def round_ste(x: Tensor) -> Tensor:
    return _RoundSTE.apply(x)


def akida_activation(pot: Tensor, threshold: Tensor, step: Tensor, levels: int = ACT_LEVELS) -> Tensor:
    """Akida 1.0 activation of integer potentials (exact values, straight-through gradients).

    ``threshold`` and ``step`` (the effective step E) are integer-valued, broadcast along dim 1
    (channels) of ``pot``; ``levels`` = 2**act_bits - 1.
    """
    th, st = _channels(threshold, pot), _channels(step, pot)
    with torch.no_grad():
        exact = torch.ceil((pot.double() - th.double()) / st.double()).clamp_(0, levels).float()
    return _StepActivation.apply((pot - th) / st, exact, levels)


def penalty_margin(pot: Tensor, layer: QuantLayer) -> Tensor:
    """``u = (pot - threshold) / act_step`` for the event penalty: a neuron fires iff u > 0.

    Same values as the activation's, but the gradient reaches the threshold only through the bias
    and never the step (see ZeroAwareNet.quantised_layers).
    """
    assert layer.penalty_threshold is not None and layer.step is not None
    return (pot - _channels(layer.penalty_threshold, pot)) / _channels(layer.step.detach(), pot)


def _channels(values: Tensor, like: Tensor) -> Tensor:
    return values.view((1, -1) + (1,) * (like.dim() - 2))


def quantise_weights(v: Tensor, qmax: int, per_channel: bool, qmin: int | None = None) -> tuple[Tensor, Tensor]:
    """Integer weights in [qmin, qmax] (default symmetric) for the effective float weights ``v``
    (out channels first).

    Returns (integer weights, scale per output channel). The scale follows max|v| and is not
    differentiated: shrinking every weight of a channel together changes nothing on the chip.
    """
    scale = weight_scale(v, qmax, per_channel)
    return round_ste(v / _rows(scale, v)).clamp(-qmax if qmin is None else qmin, qmax), scale


def weight_scale(v: Tensor, qmax: int, per_channel: bool) -> Tensor:
    """max|v| / qmax per output channel (or one for all), without gradient."""
    with torch.no_grad():
        flat = v.detach().abs().flatten(1)
        peak = flat.amax(dim=1) if per_channel else flat.amax().expand(v.shape[0])
        return peak.clamp_min(1e-12) / qmax


def _rows(values: Tensor, like: Tensor) -> Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


@dataclass
class ForwardResult:
    """What one forward pass produces; ``acts``/``pre`` are per hidden layer (outputs = events)."""

    logits: Tensor  # (N, classes) real-valued scores for the loss
    scores: Tensor  # (N, classes) the chip's outputs (int32 potentials, or activations) (QAT) / float logits
    acts: list[Tensor]  # integer activations (QAT) / ReLU outputs (float), each (N, C, X, Y) or (N, C)
    pre: list[Tensor]  # QAT only: u = (pot - threshold) / act_step per hidden layer; fires iff u > 0
    weight_ratios: list[Tensor]  # v / scale per weight array (QAT only), for the weight penalty
    layer_ratios: list[tuple[Tensor, ...]] = field(default_factory=list)  # the same, grouped per layer


@dataclass
class QuantLayer:
    """One layer's integer parameters during QAT (tensors carrying straight-through gradients)."""

    weights: Tensor  # integer-valued, torch layout (Cout, Cin, kx, ky), depthwise (C, 1, kx, ky) or (units, inputs)
    scale: Tensor  # (Cout,) real value of one potential unit (before a global average pool's sum)
    ratio: Tensor  # effective float weights / scale (integer weight = round(ratio)); gradient to W only
    threshold: Tensor | None  # integer-valued (Cout,); None for an output layer without activation
    step: Tensor | None  # integer-valued effective step E >= 1 (Cout,); None without activation
    penalty_threshold: Tensor | None  # = threshold in value; its gradient reaches the bias only
    weights_pw: Tensor | None = None  # separable: pointwise (F, C), integer-valued
    ratio_pw: Tensor | None = None

    @property
    def ratios(self) -> tuple[Tensor, ...]:
        return (self.ratio,) if self.ratio_pw is None else (self.ratio, self.ratio_pw)


@dataclass(frozen=True)
class IntegerLayer:
    """One layer exactly as handed to akida (layouts of ``layer.variables`` in akida 2.19.3)."""

    kind: str  # "InputConvolutional" | "Convolutional" | "SeparableConvolutional" | "FullyConnected"
    weights: np.ndarray  # int8; (KX, KY, Cin, Cout) for convs, depthwise (KX, KY, C, 1), (1, 1, X*Y*C, units) for FC
    threshold: np.ndarray | None  # int32 (Cout,), None without activation
    act_step: np.ndarray | None  # float32 (Cout,), E * 2**(act_bits - 4); None without activation
    spec: dict[str, Any] = field(default_factory=dict)  # the layer's spec.json entry (name, kind, geometry, bits)
    weights_pw: np.ndarray | None = None  # separable: pointwise int8 (1, 1, C, F)

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class ZeroAwareNet(nn.Module):
    """The network, trainable in float (warm-up) or with the integer forward (QAT).

    Parameters are named per layer index i: ``w<i>`` weights (a separable layer's depthwise, and
    ``wp<i>`` its pointwise), ``b<i>`` bias and ``delta<i>`` activation step of a layer that fires,
    ``mask<i>`` / ``maskp<i>`` pruning masks of every layer but the input one. They are created in
    that order (all weights, then biases, steps, masks), the order and initialisation of the fixed
    MNIST network this class generalises, so its old-form configs train bit for bit as before and
    its checkpoints still load.
    """

    quantised: Tensor  # a buffer, declared so type checkers know it is a tensor

    def __init__(self, model: ModelConfig | Architecture) -> None:
        super().__init__()
        arch = model.architecture() if isinstance(model, ModelConfig) else model
        self.arch = arch
        self.specs: tuple[LayerConfig, ...] = arch.layers
        self.geometry: list[Geometry] = arch.geometry()
        self.names = arch.names()
        # the real value of one input unit's step: pixels 0..255, or InputData events 0..2**bits - 1
        self.input_max = PIXEL_MAX if arch.input_bits == 8 else float(2**arch.input_bits - 1)
        self._weights: list[list[nn.Parameter]] = []
        for i, (layer, geo) in enumerate(zip(self.specs, self.geometry, strict=True)):
            x, y, c = geo.input_shape
            k = layer.kernel
            shapes: list[tuple[int, ...]]
            if layer.type == "dense":
                shapes = [(layer.units, x * y * c)]
            elif layer.type == "separable":
                shapes = [(c, 1, k, k), (layer.filters, c)]
            else:
                shapes = [(layer.filters, c, k, k)]
            params = [nn.Parameter(torch.empty(shape)) for shape in shapes]
            for prefix, param in zip(("w", "wp"), params, strict=False):
                setattr(self, f"{prefix}{i}", param)
            self._weights.append(params)
        for prefix, init in (("b", torch.zeros), ("delta", torch.ones)):  # steps: set by calibrate_steps()
            for i, layer in enumerate(self.specs):
                if layer.activation:
                    setattr(self, f"{prefix}{i}", nn.Parameter(init(layer.width)))
        # Pruning masks of the non-input layers (1 = kept); buffers so checkpoints carry them.
        for i, params in enumerate(self._weights[1:], start=1):
            for prefix, param in zip(("mask", "maskp"), params, strict=False):
                self.register_buffer(f"{prefix}{i}", torch.ones(param.shape))
        self.register_buffer("quantised", torch.tensor(False))
        for params in self._weights:
            for w in params:
                nn.init.kaiming_uniform_(w, a=5**0.5)
        # where the engine's 20-bit potentials (a FullyConnected's, a global average pool's sum) can saturate
        self._saturating = [
            (layer.type == "dense" or layer.pool == "global_average") and potential_bound(layer, geo) >= POTENTIAL_LIMIT
            for layer, geo in self._layers()
        ]

    def _layers(self) -> list[tuple[LayerConfig, Geometry]]:
        return list(zip(self.specs, self.geometry, strict=True))

    def weight(self, index: int, pointwise: bool = False) -> Tensor:
        weight: Tensor = getattr(self, f"{'wp' if pointwise else 'w'}{index}")
        return weight

    def bias(self, index: int) -> Tensor | None:
        return getattr(self, f"b{index}", None)

    def delta(self, index: int) -> Tensor | None:
        return getattr(self, f"delta{index}", None)

    def weight_arrays(self) -> list[Tensor]:
        """Every weight tensor, in layer order (a separable layer's depthwise, then pointwise)."""
        return [w for params in self._weights for w in params]

    def prunable(self) -> list[tuple[Tensor, Tensor]]:
        """(weights, mask) of the weight arrays of every layer but the first (which is never pruned)."""
        pairs: list[tuple[Tensor, Tensor]] = []
        for i, params in enumerate(self._weights[1:], start=1):
            for prefix, w in zip(("mask", "maskp"), params, strict=False):
                pairs.append((w, getattr(self, f"{prefix}{i}")))
        return pairs

    def masked(self) -> list[list[Tensor]]:
        """Per layer its weight arrays with the pruning masks applied (the input layer has none)."""
        out: list[list[Tensor]] = [list(self._weights[0])]
        for i, params in enumerate(self._weights[1:], start=1):
            out.append(
                [w * getattr(self, f"{prefix}{i}") for prefix, w in zip(("mask", "maskp"), params, strict=False)]
            )
        return out

    def forward(self, pixels: Tensor) -> ForwardResult:
        """``pixels``: (N, C, X, Y) float tensor of uint8 values 0..255."""
        return self._integer(pixels) if bool(self.quantised) else self._float(pixels)

    @staticmethod
    def _flatten(x: Tensor) -> Tensor:
        """(N, C, X, Y) -> (N, C*Y*X) in Akida's order: Fortran over (X, Y, C), X fastest."""
        return x.transpose(2, 3).flatten(1) if x.dim() == 4 else x

    @staticmethod
    def _padded(x: Tensor, pad: tuple[int, int, int, int], value: float = 0.0) -> tuple[Tensor, tuple[int, int]]:
        """The input and the ``padding`` argument of conv2d: symmetric zero padding is conv2d's own,
        anything else ('same' with the odd extra row after, a padding value) an explicit F.pad."""
        px0, px1, py0, py1 = pad
        if px0 == px1 and py0 == py1 and value == 0:
            return x, (px0, py0)
        return F.pad(x, (py0, py1, px0, px1), value=value), (0, 0)

    @staticmethod
    def _max_pool(z: Tensor, layer: LayerConfig, geo: Geometry) -> Tensor:
        """Max pool (of potentials or float pre-activations); 'same' windows past the edge see only real values."""
        assert layer.max_pool is not None
        size, stride = layer.max_pool
        qx0, qx1, qy0, qy1 = geo.pool_pad
        if any(geo.pool_pad):
            z = F.pad(z, (qy0, qy1, qx0, qx1), value=float("-inf"))
        return F.max_pool2d(z, (size, size), (stride, stride))

    def _conv(self, x: Tensor, i: int, weights: list[Tensor], bias: Tensor | None, pad_value: float) -> Tensor:
        layer, geo = self.specs[i], self.geometry[i]
        x, padding = self._padded(x, geo.pad, pad_value)
        if layer.type == "separable":
            depthwise = F.conv2d(x, weights[0], None, stride=layer.stride, padding=padding, groups=geo.input_shape[2])
            return F.conv2d(depthwise, weights[1][:, :, None, None], bias)
        return F.conv2d(x, weights[0], bias, stride=layer.stride, padding=padding)

    def _float(self, pixels: Tensor) -> ForwardResult:
        x = pixels / self.input_max
        acts: list[Tensor] = []
        for i, (weights, (layer, geo)) in enumerate(zip(self.masked(), self._layers(), strict=True)):
            bias = self.bias(i)
            if layer.type == "dense":
                z = F.linear(self._flatten(x), weights[0], bias)
            else:
                z = self._conv(x, i, weights, bias, layer.padding_value / self.input_max)
                if layer.max_pool is not None:
                    z = self._max_pool(z, layer, geo)
                elif layer.pool == "global_average":
                    z = z.mean(dim=(2, 3), keepdim=True)
            if i == len(self.specs) - 1:
                logits = self._flatten(z)
                return ForwardResult(logits, logits, acts, [], [])
            x = F.relu(z)
            acts.append(x)
        raise AssertionError("a network has a last layer")

    def effective_weights(self, detach_steps: bool = False) -> list[list[Tensor]]:
        """Per layer, the float weights times the real step of their input (what gets quantised);
        a separable layer's pointwise weights times its depthwise scale."""
        out: list[list[Tensor]] = []
        for i, (weights, (layer, geo)) in enumerate(zip(self.masked(), self._layers(), strict=True)):
            if i == 0 and layer.type == "input_conv":
                out.append([weights[0] / PIXEL_MAX])
                continue
            d: Tensor | None = self.delta(i - 1) if i else torch.full((geo.input_shape[2],), 1 / self.input_max)
            assert d is not None  # every layer but the last fires
            d = d.detach() if detach_steps else d
            if layer.type == "dense":
                positions = geo.input_shape[0] * geo.input_shape[1]
                d_in = d.repeat_interleave(positions) if positions > 1 else d  # channel is the slowest index
                out.append([weights[0] * d_in])
            elif layer.type == "separable":
                v_dw = weights[0] * d.view(-1, 1, 1, 1)
                s_dw = weight_scale(v_dw, weight_range(layer.bits)[1], per_channel=True)
                out.append([v_dw, weights[1] * s_dw.view(1, -1)])
            else:
                out.append([weights[0] * d.view(1, -1, 1, 1)])
        return out

    def quantised_layers(self) -> list[QuantLayer]:
        """Per layer the integer weights, threshold and act_step, with straight-through gradients.

        Two tensors exist only for the penalties, equal in value to their forward counterparts but
        with gradients that cannot reach the activation steps. Without that, the weight penalty
        shrinks a step to shrink every weight it multiplies (useless: the per-channel weight scale
        follows) until the layer's activations become binary, and the event penalty coarsens the
        step of every neuron instead of raising the thresholds of the ones that should be silent.
        """
        layers = []
        for i, (vs, vs_fixed_steps, (layer, geo)) in enumerate(
            zip(self.effective_weights(), self.effective_weights(detach_steps=True), self._layers(), strict=True)
        ):
            qmin, qmax = weight_range(layer.bits)
            b, delta = self.bias(i), self.delta(i)
            per_channel = delta is not None  # an output layer without activation: one scale for all units
            w_int, scale = quantise_weights(vs[0], qmax, per_channel or layer.type == "separable", qmin)
            ratio = vs_fixed_steps[0] / _rows(scale, vs[0])  # a weight is zero on the chip iff |ratio| < 0.5
            w_pw = ratio_pw = None
            if layer.type == "separable":
                w_pw, scale = quantise_weights(vs[1], qmax, per_channel, qmin)
                ratio_pw = vs_fixed_steps[1] / _rows(scale, vs[1])
            if qmin == 0:  # 1-bit weights are 0 or 1: a negative ratio is a zero weight, like a small one
                ratio = ratio.clamp_min(0)
                ratio_pw = None if ratio_pw is None else ratio_pw.clamp_min(0)
            if b is None or delta is None:  # the output layer: raw potentials, no activation
                layers.append(QuantLayer(w_int, scale, ratio, None, None, None, w_pw, ratio_pw))
                continue
            unit = scale / geo.positions if layer.pool == "global_average" else scale
            delta = delta.abs().clamp_min(1e-8)
            threshold = round_ste((delta / 2 - b) / unit)
            step = round_ste(delta / unit).clamp(1.0, ACT_STEP_MAX * 2 ** (4 - layer.activation_bits))
            penalty_threshold = round_ste((delta.detach() / 2 - b) / unit)
            layers.append(QuantLayer(w_int, scale, ratio, threshold, step, penalty_threshold, w_pw, ratio_pw))
        return layers

    def _integer_potentials(self, x: Tensor, i: int, q: QuantLayer) -> Tensor:
        layer, geo = self.specs[i], self.geometry[i]
        if layer.type == "dense":
            pot = F.linear(self._flatten(x), q.weights)
            # the engine clips a FullyConnected's potential to 20 bits (only where it can get there)
            return pot.clamp(-POTENTIAL_LIMIT, POTENTIAL_LIMIT - 1) if self._saturating[i] else pot
        weights = [q.weights] if q.weights_pw is None else [q.weights, q.weights_pw]
        # Akida's Convolutional is a TRUE convolution; torch cross-correlates, so the exported kernel
        # is flipped (export_integer_layers). Training uses the cross-correlation kernel directly.
        pot = self._conv(x, i, weights, None, float(layer.padding_value))
        if layer.max_pool is not None:
            return self._max_pool(pot, layer, geo)  # pool the potentials, then activate
        if layer.pool != "global_average":
            return pot
        flat = pot.flatten(2)  # (N, F, X*Y), x slowest: the engine's order of summation
        if not self._saturating[i]:
            return flat.sum(dim=2)[:, :, None, None]
        total = torch.zeros_like(flat[:, :, 0])
        for p in range(flat.shape[2]):  # the engine's running sum saturates at 20 bits after each addition
            total = (total + flat[:, :, p]).clamp(-POTENTIAL_LIMIT, POTENTIAL_LIMIT - 1)
        return total[:, :, None, None]

    def _integer(self, pixels: Tensor) -> ForwardResult:
        quantised = self.quantised_layers()
        x, acts, pots = pixels, [], []
        last = len(self.specs) - 1
        for i, (q, layer) in enumerate(zip(quantised, self.specs, strict=True)):
            pot = self._integer_potentials(x, i, q)
            if i == last:
                break
            # Hidden layers always have a threshold and a step (None is for the output layer only).
            x = akida_activation(pot, q.threshold, q.step, 2**layer.activation_bits - 1)  # type: ignore[arg-type]
            acts.append(x)
            pots.append(pot)
        out = quantised[last]
        if out.threshold is None or out.step is None:
            scores = self._flatten(pot)
            logits = scores * out.scale[0]
        else:  # the last layer fires: its activations are the scores, worth delta each
            scores = akida_activation(pot, out.threshold, out.step, 2 ** self.specs[last].activation_bits - 1)
            delta = self.delta(last)
            assert delta is not None
            logits = scores * delta.abs()
        pre = [penalty_margin(pot, q) for pot, q in zip(pots, quantised, strict=False)]
        ratios = [r for q in quantised for r in q.ratios]
        return ForwardResult(logits, scores, acts, pre, ratios, [q.ratios for q in quantised])


def calibrate_steps(model: ZeroAwareNet, pixels: Tensor, percentile: float) -> None:
    """Set each layer's activation step from float activations so 2**act_bits - 1 steps cover ``percentile``.

    Why: LSQ-style steps need a sensible start; a per-layer percentile keeps rare large activations
    from stretching the activation range. Broadcast to every channel of the layer.
    """
    with torch.no_grad():
        result = model._float(pixels)
        acts = list(result.acts)
        if model.specs[-1].activation:
            acts.append(F.relu(result.logits))
        for i, act in enumerate(acts):
            delta = model.delta(i)
            assert delta is not None
            positive = act[act > 0]
            top = torch.quantile(positive[:1_000_000], percentile / 100) if positive.numel() else torch.tensor(1.0)
            delta.fill_(float(top) / (2 ** model.specs[i].activation_bits - 1))


def export_integer_layers(model: ZeroAwareNet) -> list[IntegerLayer]:
    """The trained integer parameters in akida's layouts (what the chip and simulator consume).

    Layout conversions (probed against the engine, see tests): torch conv weights (Cout, Cin, kx, ky)
    -> akida (kx, ky, Cin, Cout); the Convolutional kernel (and a separable layer's depthwise one,
    (C, 1, kx, ky) -> (kx, ky, C, 1)) is flipped on both spatial axes because akida convolves where
    torch cross-correlates; pointwise (F, C) -> (1, 1, C, F); FC weights (units, inputs) ->
    (1, 1, inputs, units) with inputs already in Akida's Fortran flatten order. The effective step E
    is exported as act_step = E * 2**(act_bits - 4) (exact in float32).
    """
    with torch.no_grad():
        quantised = model.quantised_layers()

    def ints(t: Tensor, dtype: type) -> np.ndarray:
        array = t.detach().cpu().numpy()
        out = np.rint(array).astype(dtype)
        assert np.array_equal(out, array), "integer parameters must be integer-valued"
        return out

    out: list[IntegerLayer] = []
    for name, q, (layer, geo) in zip(model.names, quantised, model._layers(), strict=True):
        threshold = act_step = None
        if q.threshold is not None and q.step is not None:
            threshold = ints(q.threshold, np.int32)
            act_step = ints(q.step, np.int64).astype(np.float32)
            if layer.activation_bits != 4:
                act_step = act_step * np.float32(2.0 ** (layer.activation_bits - 4))
        weights_pw = None
        if layer.type == "dense":
            weights = ints(q.weights, np.int8).T[None, None]
        elif layer.type == "input_conv":
            weights = ints(q.weights, np.int8).transpose(2, 3, 1, 0)
        elif layer.type == "conv":
            weights = ints(q.weights, np.int8).transpose(2, 3, 1, 0)[::-1, ::-1]
        else:
            assert q.weights_pw is not None
            weights = ints(q.weights, np.int8).transpose(2, 3, 0, 1)[::-1, ::-1]
            weights_pw = np.ascontiguousarray(ints(q.weights_pw, np.int8).T[None, None])
        spec = spec_entry(layer, name, geo, first=not out)
        out.append(IntegerLayer(layer.kind, np.ascontiguousarray(weights), threshold, act_step, spec, weights_pw))
    return out


def integer_arrays(layers: list[IntegerLayer]) -> dict[str, np.ndarray]:
    """``params.npz`` key layout: ``<layer>.weights`` / ``.weights_pw`` / ``.threshold`` / ``.act_step``."""
    arrays: dict[str, np.ndarray] = {}
    for layer in layers:
        arrays[f"{layer.name}.weights"] = layer.weights
        if layer.weights_pw is not None:
            arrays[f"{layer.name}.weights_pw"] = layer.weights_pw
        if layer.threshold is not None and layer.act_step is not None:
            arrays[f"{layer.name}.threshold"] = layer.threshold
            arrays[f"{layer.name}.act_step"] = layer.act_step
    return arrays


def integer_model(layers: list[IntegerLayer]) -> Any:  # -> edge_runtime.akida_model.AkidaModel
    """The runtime's model of the integer layers, built the way ``edge-export export`` builds a run's."""
    from .run_reader import model_from_spec

    first = layers[0].spec
    specs = [layer.spec for layer in layers]
    return model_from_spec(specs, first["input_shape"], integer_arrays(layers), int(first.get("input_bits", 8)))


def to_akida(layers: list[IntegerLayer]) -> Any:  # -> akida.Model (akida is imported only when needed)
    """akida's own model of the integer layers (through the exporter's builder, the path a bundle takes)."""
    from .akida_build import to_akida as build

    return build(integer_model(layers))
