"""Zero-aware penalties: differentiable surrogates of the NUMBER of non-zero activations and weights.

Why counts: on Akida a non-zero 4-bit activation is one event whatever its value, and a zero weight
costs no synaptic operation, so energy follows counts, not magnitudes. The count itself has zero
gradient almost everywhere, so each form below keeps the exact count in the forward pass (what we
log is what the chip sees) and chooses a gradient:

* ``sigmoid``: straight-through indicator of ``u > 0`` with the gradient of a sigmoid centred on the
  firing boundary; ``u = (pot - threshold) / act_step``, so ``u = 0`` is half a quantisation step
  of the real pre-activation, where round(relu(z) / delta) flips from 0 to 1;
* ``linear``: the same indicator with a triangular (piecewise-linear) gradient;
* ``hoyer``: Hoyer-square, (sum |a|)^2 / sum a^2 per image, a scale-invariant smooth proxy of L0;
* ``l1``: the control, sum of activation values (in quantisation steps), what plain activity
  regularisation does.

The activation term is weighted per layer by the energy one output event costs there, so the
optimiser trades the expensive events (conv outputs with large fan-out) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .qat import ZeroAwareNet


class _Indicator(torch.autograd.Function):
    """Exact indicator ``x > 0`` forward; a chosen bump-shaped gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor, width: float, shape: str) -> Tensor:
        ctx.save_for_backward(x)
        ctx.width, ctx.shape = width, shape
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.shape == "sigmoid":
            # Temperature width/4: 96% of the bump's mass lies within +-width of the boundary.
            tau = ctx.width / 4
            sig = torch.sigmoid(x / tau)
            bump = sig * (1 - sig) / tau
        else:
            bump = (1 - x.abs() / ctx.width).clamp_min(0) / ctx.width
        return grad * bump, None, None


def nonzero_indicator(x: Tensor, width: float, shape: str) -> Tensor:
    """1 where ``x > 0`` else 0, with a surrogate gradient of half-width ``width`` around 0."""
    return _Indicator.apply(x, width, shape)


def activation_counts(acts: Sequence[Tensor], pre: Sequence[Tensor], form: str, width: float) -> list[Tensor]:
    """Per activated layer, the mean over the batch of the surrogate count per image."""
    counts = []
    for a, u in zip(acts, pre, strict=True):
        flat_a, flat_u = a.flatten(1), u.flatten(1)
        if form in ("sigmoid", "linear"):
            per_image = nonzero_indicator(flat_u, width, form).sum(dim=1)
        elif form == "hoyer":
            per_image = flat_a.sum(dim=1) ** 2 / flat_a.pow(2).sum(dim=1).clamp_min(1e-6)
        elif form == "l1":
            per_image = flat_a.sum(dim=1)
        else:
            raise ValueError(f"unknown penalty form {form!r}")
        counts.append(per_image.mean())
    return counts


def weight_counts(ratios: Sequence[Tensor], form: str, width: float) -> list[Tensor]:
    """Per layer, the surrogate number of non-zero integer weights (|round(ratio)| >= 1)."""
    counts = []
    for r in ratios:
        magnitude = r.abs().flatten()
        if form in ("sigmoid", "linear"):
            counts.append(nonzero_indicator(magnitude - 0.5, width, form).sum())
        elif form == "hoyer":
            counts.append(magnitude.sum() ** 2 / magnitude.pow(2).sum().clamp_min(1e-6))
        else:
            counts.append(magnitude.sum())
    return counts


@dataclass(frozen=True)
class EventSite:
    """One hidden (firing) layer as the activation penalty sees it: its index, name and neurons."""

    index: int
    name: str
    neurons: int


def event_sites(model: ZeroAwareNet) -> list[EventSite]:
    """Per hidden layer (every layer but the last, all of which fire), its neuron count (after pooling):
    the per-layer hook of the event penalties (``exporter.event_costs`` prices each site's events)."""
    last = len(model.specs) - 1
    return [EventSite(i, model.names[i], math.prod(model.geometry[i].output_shape)) for i in range(last)]


def layer_neurons(model: ZeroAwareNet) -> list[int]:
    """Neurons of each hidden layer (after pooling)."""
    return [site.neurons for site in event_sites(model)]


def activation_penalty(counts: Sequence[Tensor], costs: Sequence[Tensor | float], neurons: Sequence[int]) -> Tensor:
    """Modelled event energy per image as a fraction of the energy if every neuron fired (about [0, 1]).

    ``costs`` may carry gradients; the normaliser does not, so it only sets
    the scale.
    """
    total = sum(float(torch.as_tensor(c).detach()) * n for c, n in zip(costs, neurons, strict=True))
    energy: Tensor = sum(c * count for c, count in zip(costs, counts, strict=True))  # type: ignore[assignment]
    return energy / total


def weight_penalty(counts: Sequence[Tensor], sizes: Sequence[int]) -> Tensor:
    """Non-zero weights as a fraction of all weights."""
    nonzero: Tensor = sum(counts)  # type: ignore[assignment]  # a sum of tensors is a tensor
    return nonzero / sum(sizes)
