"""The count surrogates: exact counts forward, sensible gradients, and they really reduce counts."""

from __future__ import annotations

import pytest
import torch

from exporter import penalties
from exporter.config import ModelConfig
from exporter.qat import ZeroAwareNet, calibrate_steps

TINY = ModelConfig(conv0=6, conv1=8, fc=16)
FORMS = ("sigmoid", "linear", "hoyer", "l1")


@pytest.mark.parametrize("shape", ["sigmoid", "linear"])
def test_indicator_counts_exactly_and_has_a_bump_gradient(shape: str):
    x = torch.linspace(-2, 2, 401, dtype=torch.float64, requires_grad=True)
    out = penalties.nonzero_indicator(x, 0.5, shape)
    assert torch.equal(out.detach(), (x > 0).double())
    out.sum().backward()
    grad = x.grad
    assert grad.argmax() == 200 and torch.allclose(grad, grad.flip(0))  # peaked at the boundary, symmetric
    assert float(grad.sum() * 0.01) == pytest.approx(1.0, abs=0.05)  # a unit step's worth of slope
    assert float(grad[x.detach().abs() > 1].max()) < 0.01 * float(grad.max())  # ~nothing far from the boundary


def test_activation_penalty_is_a_fraction_of_all_firing_energy():
    neurons, costs = [100, 50, 10], [3.0, 2.0, 1.0]
    all_fire = [torch.tensor(float(n)) for n in neurons]
    assert float(penalties.activation_penalty(all_fire, costs, neurons)) == pytest.approx(1.0)
    assert float(penalties.activation_penalty([torch.tensor(0.0)] * 3, costs, neurons)) == 0.0


def toy_model(mnist_data) -> tuple[ZeroAwareNet, torch.Tensor]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ZeroAwareNet(TINY)
    pixels = torch.from_numpy(mnist_data.train_images[:128]).float().unsqueeze(1)
    calibrate_steps(model, pixels, 99.0)
    model.quantised.fill_(True)
    return model, pixels


def fired(model: ZeroAwareNet, pixels: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(float((a > 0).sum()) for a in model(pixels).acts)


def nonzero_weights(model: ZeroAwareNet) -> int:
    with torch.no_grad():
        return sum(int((layer.weights != 0).sum()) for layer in model.quantised_layers())


@pytest.mark.parametrize("form", FORMS)
def test_activation_penalty_reduces_the_exact_count(mnist_data, form: str):
    """Minimising only the penalty must lower the number of firing neurons the chip would see."""
    model, pixels = toy_model(mnist_data)
    before = fired(model, pixels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    neurons = penalties.layer_neurons(model)
    for _ in range(25):
        result = model(pixels)
        counts = penalties.activation_counts(result.acts, result.pre, form, 0.5)
        loss = penalties.activation_penalty(counts, [1.0, 1.0, 1.0], neurons)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert fired(model, pixels) < 0.7 * before


@pytest.mark.parametrize("form", FORMS)
def test_weight_penalty_reduces_nonzero_weights(mnist_data, form: str):
    model, pixels = toy_model(mnist_data)
    before = nonzero_weights(model)
    # A small step: fc weights are ~0.02 and one unit of a 4-bit weight is ~0.003, so Adam at 3e-3
    # would jump weights across several levels per step.
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-4)
    sizes = [w.numel() for w in (model.w0, model.w1, model.w2, model.w3)]
    for _ in range(25):
        result = model(pixels)
        loss = penalties.weight_penalty(penalties.weight_counts(result.weight_ratios, form, 0.5), sizes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert nonzero_weights(model) < 0.95 * before


def test_surrogate_count_equals_the_exact_count_forward(mnist_data):
    model, pixels = toy_model(mnist_data)
    result = model(pixels)
    counts = penalties.activation_counts(result.acts, result.pre, "sigmoid", 0.5)
    exact = [float((a > 0).flatten(1).sum(1).double().mean()) for a in result.acts]
    assert [float(c.detach()) for c in counts] == pytest.approx(exact)
