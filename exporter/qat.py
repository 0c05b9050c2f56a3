"""The Akida 1.0 MNIST network and its quantisation-aware forward pass, which IS the chip's integer arithmetic.

Network (AKD1000 maps it fully; a max-pooled conv must be followed by a conv, so the second conv is
strided instead of pooled):

    uint8 (N, 28, 28, 1)
    -> InputConvolutional 3x3 'Same', 8-bit weights, max pool 2  -> (14, 14, conv0), 4-bit activations
    -> Convolutional 3x3 stride 2 'Same', 4-bit weights          -> (7, 7, conv1),   4-bit activations
    -> FullyConnected, 4-bit weights                             -> fc,              4-bit activations
    -> FullyConnected 10, 4-bit weights, activation=False        -> int32 class potentials

Why the QAT forward computes integers and not a float "fake-quant" approximation: what we count
during training (non-zero activations) must be exactly what the chip will see, and the exported
model must reproduce the training-time eval outputs bit for bit. So every layer computes integer
potentials (integer-valued float32 tensors; every partial sum stays below 2**24 so float32 is exact),
max-pools them, and applies Akida 1.0's activation rule with an integer threshold and an integer
act_step (for integer steps the engine's rule is unambiguous: probed bit-exact):

    out = clip(ceil((pot - threshold) / act_step), 0, 15)            (act_bits = 4)

Gradients are straight-through: rounding passes the gradient unchanged, the activation passes it
where the output is not clipped. The float parameters behind the integers (LSQ-style) are:

* ``W`` (float weights) and ``delta_in`` (the previous layer's per-channel activation step): the
  layer quantises ``V = W * delta_in`` per output channel, ``w_int = round(V / s)``, ``s = max|V| / qmax``;
* ``b`` (bias) and ``delta`` (this layer's activation step): the real pre-activation is
  ``z = s * pot + b`` and the activation is ``round(relu(z) / delta)``, i.e.
  ``threshold = (delta / 2 - b) / s`` and ``act_step = delta / s``, both rounded to integers
  (cnn2snn's own v1 conversion uses the same ``threshold = -bias + step / 2``).

The class scores of the last layer are its raw integer potentials; its weights use ONE scale for all
units so that the argmax of the potentials is the argmax of the real logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

ACT_BITS = 4
ACT_LEVELS = 2**ACT_BITS - 1  # 15: the largest 4-bit activation
INPUT_WEIGHT_MAX = 127  # 8-bit weights of the InputConvolutional layer
WEIGHT_MAX = 7  # 4-bit weights are in [-7, 7] (enforced by the engine)
PIXEL_MAX = 255.0
CLASSES = 10
IMAGE_SIZE = 28


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
    def forward(ctx, u: Tensor, exact: Tensor) -> Tensor:
        ctx.save_for_backward((u > -1) & (u < ACT_LEVELS))
        return exact

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (passing,) = ctx.saved_tensors
        return grad * passing, None


def round_ste(x: Tensor) -> Tensor:
    return _RoundSTE.apply(x)


def akida_activation(pot: Tensor, threshold: Tensor, step: Tensor) -> Tensor:
    """Akida 1.0 activation of integer potentials (exact values, straight-through gradients).

    ``threshold`` and ``step`` are integer-valued, broadcast along dim 1 (channels) of ``pot``.
    """
    th, st = _channels(threshold, pot), _channels(step, pot)
    with torch.no_grad():
        exact = torch.ceil((pot.double() - th.double()) / st.double()).clamp_(0, ACT_LEVELS).float()
    return _StepActivation.apply((pot - th) / st, exact)


def penalty_margin(pot: Tensor, layer: QuantLayer) -> Tensor:
    """``u = (pot - threshold) / act_step`` for the event penalty: a neuron fires iff u > 0.

    Same values as the activation's, but the gradient reaches the threshold only through the bias
    and never the step (see ZeroAwareNet.quantised_layers).
    """
    assert layer.penalty_threshold is not None and layer.step is not None
    return (pot - _channels(layer.penalty_threshold, pot)) / _channels(layer.step.detach(), pot)


def _channels(values: Tensor, like: Tensor) -> Tensor:
    return values.view((1, -1) + (1,) * (like.dim() - 2))


def quantise_weights(v: Tensor, qmax: int, per_channel: bool) -> tuple[Tensor, Tensor]:
    """Symmetric integer weights for the effective float weights ``v`` (out channels first).

    Returns (integer weights, scale per output channel). The scale follows max|v| and is not
    differentiated: shrinking every weight of a channel together changes nothing on the chip.
    """
    with torch.no_grad():
        flat = v.detach().abs().flatten(1)
        peak = flat.amax(dim=1) if per_channel else flat.amax().expand(v.shape[0])
        scale = peak.clamp_min(1e-12) / qmax
    return round_ste(v / _rows(scale, v)).clamp(-qmax, qmax), scale


def _rows(values: Tensor, like: Tensor) -> Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


@dataclass
class ForwardResult:
    """What one forward pass produces; ``acts``/``pre`` are per activated layer (outputs = events)."""

    logits: Tensor  # (N, 10) real-valued scores for the loss
    scores: Tensor  # (N, 10) the chip's int32 potentials (QAT) or the float logits
    acts: list[Tensor]  # integer activations (QAT) / ReLU outputs (float), each (N, C, H, W) or (N, C)
    pre: list[Tensor]  # QAT only: u = (pot - threshold) / act_step per activated layer; fires iff u > 0
    weight_ratios: list[Tensor]  # v / scale per layer (QAT only), for the weight penalty


@dataclass
class QuantLayer:
    """One layer's integer parameters during QAT (tensors carrying straight-through gradients)."""

    weights: Tensor  # integer-valued, torch layout (Cout, Cin, kh, kw) or (units, inputs)
    scale: Tensor  # (Cout,) real value of one weight unit times the input's real step
    ratio: Tensor  # effective float weights / scale (integer weight = round(ratio)); gradient to W only
    threshold: Tensor | None  # integer-valued (Cout,); None for the output layer
    step: Tensor | None  # integer-valued act_step >= 1 (Cout,); None for the output layer
    penalty_threshold: Tensor | None  # = threshold in value; its gradient reaches the bias only


@dataclass(frozen=True)
class IntegerLayer:
    """One layer exactly as handed to akida (layouts of ``layer.variables`` in akida 2.19.3)."""

    kind: str  # "InputConvolutional" | "Convolutional" | "FullyConnected"
    weights: np.ndarray  # int8; (3, 3, Cin, Cout) for convs, (1, 1, X*Y*C, units) for FC
    threshold: np.ndarray | None  # int32 (Cout,), None without activation
    act_step: np.ndarray | None  # float32 (Cout,), integer-valued; None without activation


class ZeroAwareNet(nn.Module):
    """The network, trainable in float (warm-up) or with the integer forward (QAT)."""

    # Buffers (register_buffer), declared so type checkers know they are tensors.
    mask1: Tensor
    mask2: Tensor
    mask3: Tensor
    quantised: Tensor

    def __init__(self, widths: ModelConfig) -> None:
        super().__init__()
        c0, c1, fc = widths.conv0, widths.conv1, widths.fc
        self.widths = widths
        self.flat = c1 * 7 * 7
        self.w0 = nn.Parameter(torch.empty(c0, 1, 3, 3))
        self.w1 = nn.Parameter(torch.empty(c1, c0, 3, 3))
        self.w2 = nn.Parameter(torch.empty(fc, self.flat))
        self.w3 = nn.Parameter(torch.empty(CLASSES, fc))
        self.b0 = nn.Parameter(torch.zeros(c0))
        self.b1 = nn.Parameter(torch.zeros(c1))
        self.b2 = nn.Parameter(torch.zeros(fc))
        # Activation steps per channel (real units); set from float activations by calibrate_steps().
        self.delta0 = nn.Parameter(torch.ones(c0))
        self.delta1 = nn.Parameter(torch.ones(c1))
        self.delta2 = nn.Parameter(torch.ones(fc))
        # Pruning masks of the 4-bit layers (1 = kept); buffers so checkpoints carry them.
        self.register_buffer("mask1", torch.ones(c1, c0, 3, 3))
        self.register_buffer("mask2", torch.ones(fc, self.flat))
        self.register_buffer("mask3", torch.ones(CLASSES, fc))
        self.register_buffer("quantised", torch.tensor(False))
        for w in (self.w0, self.w1, self.w2, self.w3):
            nn.init.kaiming_uniform_(w, a=5**0.5)

    def masked(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.w0, self.w1 * self.mask1, self.w2 * self.mask2, self.w3 * self.mask3

    def forward(self, pixels: Tensor) -> ForwardResult:
        """``pixels``: (N, 1, 28, 28) float tensor of uint8 values 0..255."""
        return self._integer(pixels) if bool(self.quantised) else self._float(pixels)

    @staticmethod
    def _flatten(x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C*W*H) in Akida's order: Fortran over (X=H, Y=W, C), X fastest."""
        return x.transpose(2, 3).flatten(1)

    def _float(self, pixels: Tensor) -> ForwardResult:
        w0, w1, w2, w3 = self.masked()
        z0 = F.max_pool2d(F.conv2d(pixels / PIXEL_MAX, w0, self.b0, padding=1), 2)
        a0 = F.relu(z0)
        z1 = F.conv2d(F.pad(a0, (0, 1, 0, 1)), w1, self.b1, stride=2)  # 'Same' stride 2: pad bottom/right
        a1 = F.relu(z1)
        z2 = F.linear(self._flatten(a1), w2, self.b2)
        a2 = F.relu(z2)
        logits = F.linear(a2, w3)
        return ForwardResult(logits, logits, [a0, a1, a2], [], [])

    def effective_weights(self, detach_steps: bool = False) -> list[Tensor]:
        """Per layer, the float weights times the real step of their input (what gets quantised)."""
        w0, w1, w2, w3 = self.masked()
        d0, d1, d2 = (d.detach() if detach_steps else d for d in (self.delta0, self.delta1, self.delta2))
        d1_flat = d1.repeat_interleave(7 * 7)  # Akida flatten: channel is the slowest index
        return [w0 / PIXEL_MAX, w1 * d0.view(1, -1, 1, 1), w2 * d1_flat, w3 * d2]

    def quantised_layers(self) -> list[QuantLayer]:
        """Per layer the integer weights, threshold and act_step, with straight-through gradients.

        Two tensors exist only for the penalties, equal in value to their forward counterparts but
        with gradients that cannot reach the activation steps. Without that, the weight penalty
        shrinks a step to shrink every weight it multiplies (useless: the per-channel weight scale
        follows) until the layer's activations become binary, and the event penalty coarsens the
        step of every neuron instead of raising the thresholds of the ones that should be silent.
        """
        layers = []
        for v, v_fixed_steps, b, delta, qmax, per_channel in zip(
            self.effective_weights(),
            self.effective_weights(detach_steps=True),
            (self.b0, self.b1, self.b2, None),
            (self.delta0, self.delta1, self.delta2, None),
            (INPUT_WEIGHT_MAX, WEIGHT_MAX, WEIGHT_MAX, WEIGHT_MAX),
            (True, True, True, False),
            strict=True,
        ):
            w_int, scale = quantise_weights(v, qmax, per_channel)
            ratio = v_fixed_steps / _rows(scale, v)  # a weight is zero on the chip iff |ratio| < 0.5
            if b is None or delta is None:  # the output layer: raw potentials, no activation
                layers.append(QuantLayer(w_int, scale, ratio, None, None, None))
                continue
            delta = delta.abs().clamp_min(1e-8)
            threshold = round_ste((delta / 2 - b) / scale)
            step = round_ste(delta / scale).clamp_min(1.0)
            penalty_threshold = round_ste((delta.detach() / 2 - b) / scale)
            layers.append(QuantLayer(w_int, scale, ratio, threshold, step, penalty_threshold))
        return layers

    def _integer(self, pixels: Tensor) -> ForwardResult:
        l0, l1, l2, l3 = self.quantised_layers()
        pot0 = F.max_pool2d(F.conv2d(pixels, l0.weights, padding=1), 2)  # pool the potentials, then activate
        # Hidden layers always have a threshold and a step (None is for the output layer only).
        a0 = akida_activation(pot0, l0.threshold, l0.step)  # type: ignore[arg-type]
        # Akida's Convolutional is a TRUE convolution; torch cross-correlates, so the exported kernel
        # is flipped (export_integer_layers). Training uses the cross-correlation kernel directly.
        pot1 = F.conv2d(F.pad(a0, (0, 1, 0, 1)), l1.weights, stride=2)
        a1 = akida_activation(pot1, l1.threshold, l1.step)  # type: ignore[arg-type]
        pot2 = F.linear(self._flatten(a1), l2.weights)
        a2 = akida_activation(pot2, l2.threshold, l2.step)  # type: ignore[arg-type]
        scores = F.linear(a2, l3.weights)
        logits = scores * l3.scale[0]
        pre = [penalty_margin(pot, layer) for pot, layer in ((pot0, l0), (pot1, l1), (pot2, l2))]
        ratios = [layer.ratio for layer in (l0, l1, l2, l3)]
        return ForwardResult(logits, scores, [a0, a1, a2], pre, ratios)


def calibrate_steps(model: ZeroAwareNet, pixels: Tensor, percentile: float) -> None:
    """Set each layer's activation step from float activations so 15 steps cover ``percentile``.

    Why: LSQ-style steps need a sensible start; a per-layer percentile keeps rare large activations
    from stretching the 4-bit range. Broadcast to every channel of the layer.
    """
    with torch.no_grad():
        result = model._float(pixels)
        for act, delta in zip(result.acts, (model.delta0, model.delta1, model.delta2), strict=True):
            positive = act[act > 0]
            top = torch.quantile(positive[:1_000_000], percentile / 100) if positive.numel() else torch.tensor(1.0)
            delta.fill_(float(top) / ACT_LEVELS)


def export_integer_layers(model: ZeroAwareNet) -> list[IntegerLayer]:
    """The trained integer parameters in akida's layouts (what the chip and simulator consume).

    Layout conversions (probed against the engine, see tests): torch conv weights (Cout, Cin, kh, kw)
    -> akida (kh, kw, Cin, Cout); the Convolutional kernel is flipped on both spatial axes because
    akida convolves where torch cross-correlates; FC weights (units, inputs) -> (1, 1, inputs, units)
    with inputs already in Akida's Fortran flatten order.
    """
    with torch.no_grad():
        l0, l1, l2, l3 = model.quantised_layers()

    def ints(t: Tensor, dtype: type) -> np.ndarray:
        array = t.detach().cpu().numpy()
        out = np.rint(array).astype(dtype)
        assert np.array_equal(out, array), "integer parameters must be integer-valued"
        return out

    def activation(layer: QuantLayer) -> tuple[np.ndarray | None, np.ndarray | None]:
        if layer.threshold is None or layer.step is None:
            return None, None
        return ints(layer.threshold, np.int32), ints(layer.step, np.int64).astype(np.float32)

    weights = [
        ints(l0.weights, np.int8).transpose(2, 3, 1, 0),
        ints(l1.weights, np.int8).transpose(2, 3, 1, 0)[::-1, ::-1],
        ints(l2.weights, np.int8).T[None, None],
        ints(l3.weights, np.int8).T[None, None],
    ]
    kinds = ("InputConvolutional", "Convolutional", "FullyConnected", "FullyConnected")
    return [
        IntegerLayer(kind, np.ascontiguousarray(w), *activation(layer))
        for kind, w, layer in zip(kinds, weights, (l0, l1, l2, l3), strict=True)
    ]


def to_akida(layers: list[IntegerLayer]):  # -> akida.Model (akida is imported only when needed)
    """Build akida's own model from the integer layers (used to prove exactness against its engine)."""
    import akida

    l0, l1, l2, l3 = layers
    model = akida.Model()
    model.add(
        akida.InputConvolutional(
            input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
            filters=l0.weights.shape[3],
            kernel_size=(3, 3),
            padding=akida.Padding.Same,
            weights_bits=8,
            pool_size=(2, 2),
            pool_type=akida.PoolType.Max,
            pool_stride=(2, 2),
            act_bits=ACT_BITS,
            name="conv0",
        )
    )
    model.add(
        akida.Convolutional(
            filters=l1.weights.shape[3],
            kernel_size=(3, 3),
            padding=akida.Padding.Same,
            kernel_stride=(2, 2),
            weights_bits=4,
            act_bits=ACT_BITS,
            name="conv1",
        )
    )
    model.add(akida.FullyConnected(units=l2.weights.shape[3], weights_bits=4, act_bits=ACT_BITS, name="fc2"))
    model.add(akida.FullyConnected(units=l3.weights.shape[3], weights_bits=4, activation=False, name="fc3"))
    for target, layer in zip(model.layers, layers, strict=True):
        target.variables["weights"] = layer.weights.astype(np.int8)
        if layer.threshold is not None and layer.act_step is not None:
            target.variables["threshold"] = layer.threshold.astype(np.int32)
            target.variables["act_step"] = layer.act_step.astype(np.float32)
    return model
