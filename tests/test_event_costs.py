"""The cost-weighted penalty's costs: derivatives of the v2 model's own figures, and how training uses them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from edge_runtime.energy import PJ, DeviceProfile, ModelCost
from edge_runtime.energy_inputs import ModelMapping, Placement
from edge_runtime.errors import ConfigError, DataError
from exporter import event_costs
from exporter import train as train_module
from exporter.config import Config, ModelConfig, config_from_dict, with_overrides
from exporter.evaluate import simulate
from exporter.qat import ZeroAwareNet, calibrate_steps, export_integer_layers, to_akida
from exporter.train import train
from exporter.training_data import data_from_arrays

akida = pytest.importorskip("akida")


def synthetic_cost(passes: int = 1, device: str = "akd1000") -> ModelCost:
    """Every kind of unit, no akida needed: HRC, a CNP layer on 4 NPs, an FNP2 and an FNP3 layer."""
    layers = (
        Placement("in", "HRC", 1, 16, 9, 196, ("HRC",)),
        Placement("conv", "CNP", 4, 32, 9, 49, ("CNP1",) * 4),
        Placement("fc", "FNP", 1, 64, np_types=("FNP2",)),
        Placement("out", "FNP", 1, 10, np_types=("FNP3",)),
    )
    mapping = ModelMapping(device, "AllNps", layers, passes, 1, 784, 30_000)
    return DeviceProfile.packaged(device).bind(mapping)


def activity(frames: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame events and synops, (frames, 4), with events far from zero (no step in reach of a
    finite difference); some frames slowest in the CNP layer, most in the FNP2 layer."""
    rng = np.random.default_rng(seed)
    busy_cnp = rng.uniform([100, 4000, 10, 5], [200, 6000, 40, 60], size=(frames // 2, 4))
    busy_fnp = rng.uniform([100, 200, 60, 5], [200, 3000, 300, 60], size=(frames - frames // 2, 4))
    events = np.concatenate([busy_fnp, busy_cnp])
    fanout = rng.uniform([5, 20, 30, 3], [20, 200, 64, 10], size=(frames, 4))
    return events, events * fanout


def finite_difference(
    cost: ModelCost, events: np.ndarray, synops: np.ndarray, layer: int, frames_per_call: float, h: float = 0.1
) -> float:
    """d(mean total_j)/d(events of ``layer``), every frame's synops moving at that frame's fan-out."""
    step = np.zeros_like(events)
    step[:, layer] = h
    fanout = synops / events

    def total(sign: float) -> float:
        moved = events + sign * step
        return float(cost.evaluate(moved, synops + sign * step * fanout, frames_per_call).total_j.mean())

    return (total(1) - total(-1)) / (2 * h)


@pytest.mark.parametrize("frames_per_call", [math.inf, 10.0, 1.0])
@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("device", ["akd1000", "akd1500"])
def test_event_costs_are_the_derivative_of_the_models_total_energy(frames_per_call, passes, device):
    cost = synthetic_cost(passes, device)
    events, synops = activity()
    slowest = (cost.clk[0] + cost.clk[1] + events * cost.clk[2]).argmax(axis=1)
    assert set(slowest) == {1, 2}  # the frames disagree on the slowest layer: the average matters
    got = event_costs.input_event_costs(cost, events, synops, frames_per_call)
    expected = [finite_difference(cost, events, synops, layer, frames_per_call) for layer in range(4)]
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-15)  # costs: 1e-11 .. 1e-6 J
    assert got[0] == 0.0  # the HRC is dense: its input events cost nothing


def test_long_batch_cost_is_the_formula_one_over_n_plus_n_minus_one_over_n():
    """(1/n + (n-1)/n x [slowest]) x floor x clocks per event / clock, + the dynamic energy of the event."""
    cost = synthetic_cost()
    events, synops = activity(frames=1)
    c = cost.profile.coefficients
    slowest = int((cost.clk[0] + cost.clk[1] + events * cost.clk[2]).argmax())
    for n in (1.0, 4.0, math.inf):
        share = np.full(4, 1.0 if n == 1 else (0.0 if math.isinf(n) else 1 / n))
        share[slowest] = 1.0
        dynamic = PJ * (cost.pj[2] + cost.pj[3] * synops[0] / events[0])
        expected = c.floor_power_w * cost.clk[2] / c.clock_hz * share + dynamic
        assert event_costs.input_event_costs(cost, events, synops, n) == pytest.approx(expected, rel=1e-12)


def test_weight_costs_are_synops_per_weight_times_the_energy_of_a_synop():
    cost = synthetic_cost()
    events, synops = activity()
    nonzero = [100, 5000, 20000, 300]
    got = event_costs.weight_costs(cost, synops, nonzero)
    for layer in range(4):  # d(dynamic)/d(synops of the layer) by a finite difference, x synops per weight
        step = np.zeros_like(synops)
        step[:, layer] = 1.0
        slope = float(
            cost.evaluate(events, synops + step).dynamic_j.mean() - cost.evaluate(events, synops).dynamic_j.mean()
        )
        assert got[layer] == pytest.approx(slope * synops[:, layer].mean() / nonzero[layer], rel=1e-6, abs=1e-30)
    assert got[0] == 0.0 and all(got[1:] > 0)  # the dense HRC's weights save nothing in the model
    assert event_costs.weight_costs(cost, synops, [0, 1, 1, 1])[0] == 0.0  # no weights, no cost


def test_shapes_are_checked():
    cost = synthetic_cost()
    with pytest.raises(DataError):
        event_costs.input_event_costs(cost, np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(DataError):
        event_costs.input_event_costs(cost, np.ones((2, 4)), np.ones((2, 4)), frames_per_call=0.5)
    with pytest.raises(DataError):
        event_costs.weight_costs(cost, np.ones((2, 4)), [1, 2])


@pytest.fixture(scope="module")
def mnist_costs(mnist_data):
    """The shipped 4-layer MNIST network (default widths) mapped by akida, measured on 64 images."""
    torch.manual_seed(0)
    model = ZeroAwareNet(ModelConfig())
    calibrate_steps(model, torch.from_numpy(mnist_data.train_images[:256]).float().unsqueeze(1), 99.9)
    model.quantised.fill_(True)
    layers = export_integer_layers(model)
    cost = event_costs.bound_cost(to_akida(layers), "akd1000")
    _, counters = simulate(layers, mnist_data.train_images[:64])
    return cost, counters


def test_mnist_the_events_into_the_slowest_layer_cost_most(mnist_costs):
    """fc2 runs on an FNP2 and is the slowest layer: an event into it (a conv1 output) costs most."""
    cost, counters = mnist_costs
    assert [p.name for p in cost.mapping.layers] == ["conv0", "conv1", "fc2", "fc3"]
    assert cost.mapping.layers[2].np_types == ("FNP2",)
    assert all(cost.evaluate_counters(counters).layer_clocks.argmax(axis=1) == 2)
    weighted = event_costs.penalty_costs(cost, counters)
    assert len(weighted.events) == 3 and len(weighted.weights) == 4
    assert int(np.argmax(weighted.events)) == 1  # conv1's output events = fc2's input events
    assert weighted.events[1] > 100 * max(weighted.events[0], weighted.events[2])  # floor x time dominates
    events = np.stack([c.input_events for c in counters], axis=1).astype(float)
    synops = np.stack([c.synaptic_ops for c in counters], axis=1).astype(float)
    per_input = event_costs.input_event_costs(cost, events, synops)
    assert weighted.events == pytest.approx(tuple(per_input[1:]), rel=1e-12)  # output of l = input of l + 1
    assert weighted.weights[0] == 0.0 and "nJ per output event" in weighted.describe()


def test_counters_of_another_model_are_refused(mnist_costs):
    cost, counters = mnist_costs
    with pytest.raises(DataError, match="counters of layers"):
        event_costs.penalty_costs(cost, counters[:3])


# ----------------------------------------------------------------------------- config and training


def test_weighting_defaults_to_count_and_is_validated():
    assert Config().penalty.weighting == "count"
    with pytest.raises(ConfigError, match=r"penalty\.weighting must be one of count, energy"):
        config_from_dict({"penalty": {"weighting": "joules"}}, "x.toml")
    with pytest.raises(ConfigError, match=r"penalty\.cost_device must be one of akd1000, akd1500"):
        config_from_dict({"penalty": {"cost_device": "akd2000"}}, "x.toml")


def test_retired_energy_keys_false_still_load_true_are_refused_in_one_line():
    kept = config_from_dict({"penalty": {"energy_weighted": False, "through_weights": False, "activations": 2.0}})
    assert kept.penalty.weighting == "count" and kept.penalty.activations == 2.0
    for key in ("energy_weighted", "through_weights"):
        with pytest.raises(ConfigError) as error:
            config_from_dict({"penalty": {key: True}}, "old.toml")
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"old.toml: penalty.{key} was retired")
        assert 'penalty.weighting = "energy"' in message


def tiny(weighting: str, qat_epochs: int = 2) -> Config:
    overrides = [
        ("train.threads", 1),
        ("train.float_epochs", 0),
        ("train.qat_epochs", qat_epochs),
        ("train.batch_size", 64),
        ("penalty.activations", 4.0),
        ("penalty.weights", 0.5),
        ("penalty.weighting", weighting),
        ("penalty.cost_images", 32),
    ]
    return replace(with_overrides(Config(), overrides), model=ModelConfig(conv0=4, conv1=4, fc=8))


def test_energy_weighting_maps_once_and_reprices_every_qat_epoch(mnist_data, monkeypatch):
    data = data_from_arrays(
        mnist_data.train_images, mnist_data.train_labels, mnist_data.test_images, mnist_data.test_labels, 128, 64
    )
    bound, measured = [], []
    real_bound, real_measured = event_costs.bound_cost, train_module.measured_penalty_costs

    def counting_bound(*args, **kwargs):
        bound.append(args)
        return real_bound(*args, **kwargs)

    def counting_measured(model, cost, images, config):
        weighted = real_measured(model, cost, images, config)
        measured.append((len(images), weighted))
        return weighted

    monkeypatch.setattr(event_costs, "bound_cost", counting_bound)
    monkeypatch.setattr(train_module, "measured_penalty_costs", counting_measured)
    _, report = train(tiny("energy"), data=data, progress=False)
    assert len(bound) == 1 and len(measured) == 2 and all(n == 32 for n, _ in measured)
    recorded = [entry["penalty_costs_j"] for entry in report["history"]]
    assert recorded == [{"events": list(w.events), "weights": list(w.weights)} for _, w in measured]
    assert recorded[0] != recorded[1]  # measured again on the model as it is after the first epoch

    bound.clear()
    _, counted = train(tiny("count"), data=data, progress=False)
    assert bound == [] and all("penalty_costs_j" not in entry for entry in counted["history"])


def test_energy_weighted_penalty_follows_the_costs(mnist_data):
    """With every cost on one layer's events, the event penalty's gradient reaches only the thresholds
    (biases) of that layer and the layers before it, not those after."""
    from exporter import penalties

    torch.manual_seed(0)
    model = ZeroAwareNet(ModelConfig(conv0=4, conv1=4, fc=8))
    pixels = torch.from_numpy(mnist_data.train_images[:64]).float().unsqueeze(1)
    calibrate_steps(model, pixels, 99.0)
    model.quantised.fill_(True)
    result = model(pixels)
    counts = penalties.activation_counts(result.acts, result.pre, "sigmoid", 3.0)
    weighted = event_costs.PenaltyCosts(events=(0.0, 1e-6, 0.0), weights=(0.0, 1.0, 1.0, 1.0))
    penalties.activation_penalty(counts, weighted.events, penalties.layer_neurons(model)).backward()
    assert model.b2.grad is None or float(model.b2.grad.abs().sum()) == 0.0
    assert float(model.b1.grad.abs().sum()) > 0


def test_energy_weighting_without_any_penalty_warns():
    from exporter.config import config_warnings

    idle = with_overrides(Config(), [("penalty.weighting", "energy")])
    assert any("nothing is weighted" in w for w in config_warnings(idle))
    assert config_warnings(with_overrides(idle, [("penalty.activations", 1.0)])) == []
