"""Architectures from config: the layer list, its Akida 1.0 rule checks, and exact QAT for every layer kind.

Each network here is tiny (a few filters, MNIST crops as frames) so the engine comparisons take a
second or two; the shipped configs are only built and mapped, never trained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edge_runtime.errors import ConfigError
from exporter import cli
from exporter.config import Config, ModelConfig, config_from_dict, config_to_dict, load_config, with_overrides
from exporter.evaluate import simulate
from exporter.penalties import event_sites
from exporter.qat import ZeroAwareNet, calibrate_steps, export_integer_layers, to_akida
from exporter.train import check_on_akd1000, train
from exporter.training_data import data_from_arrays

akida = pytest.importorskip("akida")

CONFIGS = Path(__file__).resolve().parents[1] / "exporter" / "configs"
OUT = {"type": "dense", "units": 10, "activation": False}

# Every layer kind and option the trainer offers, spread over a few small networks that AKD1000 maps.
NETWORKS: dict[str, dict[str, Any]] = {
    # InputConvolutional 5x5 stride 2 'valid' on 3 channels with 2-bit activations; 1x1 conv with 2-bit
    # weights and 1-bit activations; a max pool 2 of an odd map ('same' windows past the edge); 1-bit weights.
    "input-valid-rgb": {
        "input_shape": [16, 14, 3],
        "layers": [
            {"type": "input_conv", "filters": 4, "kernel": 5, "stride": 2, "padding": "valid", "activation_bits": 2},
            {"type": "conv", "filters": 6, "kernel": 1, "weight_bits": 2, "activation_bits": 1},
            {"type": "conv", "filters": 8, "kernel": 3, "pool": "max", "pool_size": 2},
            {"type": "conv", "filters": 8, "kernel": 3, "weight_bits": 1, "activation_bits": 2},
            OUT,
        ],
    },
    # InputConvolutional 7x7 with a padding value and a max pool; conv 7x7; conv 5x5 with a global
    # average pool; a dense with 2-bit weights; the last dense fires (its 4-bit activations are the scores).
    "kernels-global-pool": {
        "input_shape": [20, 20, 1],
        "layers": [
            {"type": "input_conv", "filters": 4, "kernel": 7, "padding_value": 3, "pool": "max", "pool_size": 2},
            {"type": "conv", "filters": 6, "kernel": 7},
            {"type": "conv", "filters": 8, "kernel": 5, "pool": "global_average"},
            {"type": "dense", "units": 12, "weight_bits": 2},
            {"type": "dense", "units": 10, "activation": True},
        ],
    },
    # SeparableConvolutional: 3x3 with 2-bit weights and activations, 3x3 stride 2 with a max pool,
    # 5x5 with 2-bit weights; a dense with 1-bit activations between them and the output.
    "separable": {
        "input_shape": [24, 24, 1],
        "layers": [
            {"type": "input_conv", "filters": 8, "kernel": 3, "stride": 2},
            {"type": "separable", "filters": 8, "kernel": 3, "weight_bits": 2, "activation_bits": 2},
            {"type": "separable", "filters": 12, "kernel": 3, "stride": 2, "pool": "max", "pool_size": 2},
            {"type": "separable", "filters": 12, "kernel": 5, "weight_bits": 2},
            {"type": "dense", "units": 16, "activation_bits": 1},
            OUT,
        ],
    },
    # No input_conv: 4-bit frames go straight to a max-pooled Convolutional as events (an InputData in
    # front), then a separable layer and a dense with 2-bit activations.
    "input-data-conv": {
        "input_shape": [20, 20, 1],
        "input_bits": 4,
        "layers": [
            {"type": "conv", "filters": 8, "kernel": 3, "pool": "max", "pool_size": 2},
            {"type": "separable", "filters": 8, "kernel": 3, "stride": 2},
            {"type": "dense", "units": 16, "activation_bits": 2},
            OUT,
        ],
    },
    # 2-bit frames straight into a SeparableConvolutional.
    "input-data-separable": {
        "input_shape": [12, 12, 1],
        "input_bits": 2,
        "layers": [{"type": "separable", "filters": 8, "kernel": 5}, {"type": "conv", "filters": 8, "stride": 2}, OUT],
    },
    # A separable layer with a global average pool whose 20-bit running sum could saturate (the QAT
    # forward then sums position by position, clamping like the engine), then a 7x7 separable.
    "separable-global-pool": {
        "input_shape": [8, 8, 1],
        "layers": [
            {"type": "input_conv", "filters": 16, "kernel": 3},
            {"type": "separable", "filters": 16, "kernel": 7},
            {"type": "separable", "filters": 24, "kernel": 3, "pool": "global_average"},
            OUT,
        ],
    },
}


def frames_for(mnist_data, shape: list[int], n: int, offset: int = 0, bits: int = 8) -> np.ndarray:
    """(n, X, Y, C) uint8 frames of the given shape cut from MNIST digits (real, sparse-ish images),
    with values of ``bits`` bits (the top bits of the pixels)."""
    x, y, c = shape
    images = mnist_data.train_images[offset : offset + n]
    if x <= 12 and y <= 12:
        images = images[:, ::2, ::2]  # 14x14 digits, so a small input still holds most of the digit
    top, left = (images.shape[1] - x) // 2, (images.shape[2] - y) // 2
    crop = images[:, top : top + x, left : left + y]
    channels = [crop, crop[:, ::-1], 255 - crop][:c]
    return np.ascontiguousarray(np.stack(channels, axis=-1) >> (8 - bits))


def model_config(model: dict[str, Any]) -> ModelConfig:
    return config_from_dict({"model": model}).model


def trained(config: ModelConfig, mnist_data, seed: int = 0) -> ZeroAwareNet:
    """A net trained for a moment (one float and one QAT epoch on 256 digits), so every layer carries
    information and fires on some neurons and not others, as a real one does."""
    shape = list(config.input_shape)
    data = data_from_arrays(
        frames_for(mnist_data, shape, 256, offset=1000, bits=config.input_bits),
        mnist_data.train_labels[1000:1256],
        frames_for(mnist_data, shape, 16, bits=config.input_bits),
        mnist_data.train_labels[:16],
    )
    raw = config_to_dict(Config())
    raw["model"] = config_to_dict(Config(model=config))["model"]
    raw["train"].update(seed=seed, threads=1, float_epochs=1, qat_epochs=1, batch_size=32)
    model, _ = train(config_from_dict(raw), data=data, progress=False)
    return model


def engine_per_layer(layers, frames: np.ndarray) -> list[np.ndarray]:
    """akida's engine outputs after each layer (the full model, then with trailing layers popped)."""
    built = to_akida(layers)
    outputs = [built.forward(frames)]
    for _ in range(len(layers) - 1):
        built.pop_layer()
        outputs.append(built.forward(frames))
    return outputs[::-1]


def torch_to_akida(t: torch.Tensor) -> np.ndarray:
    """(N, C, X, Y) -> (N, X, Y, C); (N, C) -> (N, 1, 1, C)."""
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a[:, None, None, :]


# --------------------------------------------------------------------------- the old and the new form


def test_old_and_new_form_configs_build_identical_networks(tmp_path: Path, mnist_data):
    """`[model] conv0/conv1/fc` and the shipped layer list are one network: same layers, same
    parameters under a seed, same outputs in both forwards."""
    old = tmp_path / "old.toml"
    old.write_text("[model]\nconv0 = 32\nconv1 = 64\nfc = 128\n")
    old_form, new_form = load_config(old).model, load_config(CONFIGS / "baseline.toml").model
    assert old_form.layers == () and len(new_form.layers) == 4
    assert old_form.architecture() == new_form.architecture() == ModelConfig().architecture()
    assert load_config(CONFIGS / "zeroaware.toml").model.architecture() == old_form.architecture()
    nets = []
    for form in (old_form, new_form):
        torch.manual_seed(0)
        nets.append(ZeroAwareNet(form))
    state_old, state_new = (net.state_dict() for net in nets)
    assert list(state_old) == list(state_new)
    assert all(torch.equal(state_old[key], state_new[key]) for key in state_old)
    # the parameter names of the fixed network this generalises, so its checkpoints still load
    assert [name for name, _ in nets[0].named_parameters()] == [
        *("w0", "w1", "w2", "w3", "b0", "b1", "b2", "delta0", "delta1", "delta2")
    ]
    pixels = torch.from_numpy(mnist_data.test_images[:64]).float().unsqueeze(1)
    for quantised in (False, True):
        if quantised:
            for net in nets:
                calibrate_steps(net, pixels, 99.0)
                net.quantised.fill_(True)
        with torch.no_grad():
            a, b = (net(pixels) for net in nets)
        assert torch.equal(a.scores, b.scores)
        assert all(torch.equal(x, y) for x, y in zip(a.acts, b.acts, strict=True))


def test_each_form_survives_a_round_trip_and_overrides():
    old = with_overrides(Config(), [("model.fc", 64)])  # the old form stays the old form
    assert old.model.fc == 64 and old.model.architecture().layers[2].units == 64
    new = load_config(CONFIGS / "dscnn.toml")
    assert with_overrides(new, []) == new and config_from_dict(config_to_dict(new)) == new
    with pytest.raises(ConfigError, match="two forms of the network"):
        with_overrides(new, [("model.fc", 64)])
    moved = with_overrides(new, [("model.input_shape", [10, 10, 1])])
    assert moved.model.architecture().input_shape == (10, 10, 1)


# --------------------------------------------------------------------------- exact QAT for every layer kind


def network(name: str) -> ModelConfig:
    """One of NETWORKS, or a shipped config's network (``iscas.toml`` -> "iscas")."""
    return model_config(NETWORKS[name]) if name in NETWORKS else load_config(CONFIGS / f"{name}.toml").model


@pytest.mark.parametrize("name", [*sorted(NETWORKS), "iscas", "dscnn"])
def test_qat_integer_forward_equals_engine_and_simulator(name: str, mnist_data):
    """Every layer's training-time output is akida's engine's, and the simulator's final outputs too."""
    config = network(name)
    frames = frames_for(mnist_data, list(config.input_shape), 120, bits=config.input_bits)
    model = trained(config, mnist_data)
    with torch.no_grad():
        result = model(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
    layers = export_integer_layers(model)
    engine = engine_per_layer(layers, frames)
    for index, (act, reference) in enumerate(zip(result.acts, engine, strict=False)):
        assert np.array_equal(torch_to_akida(act), reference), f"layer {index}"
        assert 0 < (reference > 0).mean() < 1, f"layer {index} is all silent or all firing: the check is vacuous"
    final = engine[-1].reshape(len(frames), -1)
    assert np.array_equal(result.scores.numpy().astype(final.dtype), final)
    simulated, _ = simulate(layers, frames)
    assert np.array_equal(simulated, final) and simulated.dtype == final.dtype
    assert len(np.unique(final, axis=0)) > 1  # outputs that depend on the frame


def test_saturating_global_pool_is_exercised():
    """The separable-global-pool network really takes the 20-bit running-sum path of the QAT forward."""
    model = ZeroAwareNet(model_config(NETWORKS["separable-global-pool"]))
    assert model._saturating == [False, False, True, False]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_event_sites_are_the_counters_neurons(name: str, mnist_data):
    """The per-layer hook of the event penalties counts each hidden layer's neurons as the simulator
    does, for every layer kind."""
    config = model_config(NETWORKS[name])
    model = trained(config, mnist_data)
    frames = frames_for(mnist_data, list(config.input_shape), 20, bits=config.input_bits)
    _, counters = simulate(export_integer_layers(model), frames)
    assert [site.neurons for site in event_sites(model)] == [c.neurons for c in counters[:-1]]


def test_training_a_separable_net_is_exact_with_every_penalty(mnist_data):
    """A short training run of a separable network with the energy-weighted event and weight penalties
    (weighting = "energy") and pruning: the exported model is still the engine's, bit for bit."""
    shape = [24, 24, 1]
    train_frames, test_frames = frames_for(mnist_data, shape, 256), frames_for(mnist_data, shape, 96, offset=5000)
    data = data_from_arrays(
        train_frames, mnist_data.train_labels[:256], test_frames, mnist_data.train_labels[5000:5096]
    )
    layers = [*NETWORKS["separable"]["layers"][:-1], {"type": "dense", "units": 10, "activation": False}]
    raw = config_to_dict(Config())
    raw["model"] = {"input_shape": shape, "layers": layers}
    raw["train"].update(threads=1, float_epochs=1, qat_epochs=2, batch_size=64)
    raw["penalty"].update(activations=2.0, weights=1.0, weighting="energy", cost_images=64)
    raw["prune"].update(sparsity=0.2, start_epoch=0, end_epoch=2)
    model, report = train(config_from_dict(raw), data=data, progress=False)
    assert report["exact_match_training_forward"] and report["exact_match_akida_engine"]
    assert [layer["kind"] for layer in report["layers"]] == [
        "InputConvolutional",
        *["SeparableConvolutional"] * 3,
        "FullyConnected",
        "FullyConnected",
    ]
    assert float((model.mask1 == 0).float().mean()) > 0.1  # pruning reached the depthwise weights
    assert float((model.maskp1 == 0).float().mean()) > 0.1  # ... and the pointwise ones


# --------------------------------------------------------------------------- config-time checks


def layers_with(index: int, **change: Any) -> dict[str, Any]:
    """The MNIST layer list with one layer's keys changed (None deletes a key)."""
    layers = [dict(t) for t in config_to_dict(load_config(CONFIGS / "baseline.toml"))["model"]["layers"]]
    layers[index].update(change)
    layers[index] = {k: v for k, v in layers[index].items() if v is not None}
    return {"input_shape": [28, 28, 1], "layers": layers}


BAD = [
    (layers_with(1, kernel=4), "model.layers[1] (conv): kernel 4: Akida 1.0 Convolutional kernels are 1, 3, 5, 7"),
    (layers_with(0, kernel=1), "model.layers[0] (input_conv): kernel 1: Akida 1.0 InputConvolutional kernels are"),
    (layers_with(1, stride=3), "model.layers[1] (conv): stride 3: strides are 1 or 2"),
    (layers_with(1, kernel=5), "model.layers[1] (conv): stride 2 with kernel 5: AKD1000 supports stride 2 only"),
    (layers_with(2, weight_bits=3), "model.layers[2] (dense): weight_bits 3: Akida 1.0 FullyConnected weights are"),
    (layers_with(0, weight_bits=4), "model.layers[0] (input_conv): weight_bits 4: Akida 1.0 InputConvolutional"),
    (
        layers_with(1, activation_bits=8),
        "model.layers[1] (conv): activation_bits 8: Akida 1.0 activations are 1, 2 or 4",
    ),
    (layers_with(1, pool="max"), "model.layers[2] (dense): a max-pooled layer must be followed by a conv"),
    (layers_with(1, pool="average"), "model.layers[1] (conv): pool 'average': one of none, max, global_average"),
    (layers_with(1, padding="valid"), "model.layers[1] (conv): padding 'valid': AKD1000 maps only 'same'"),
    (layers_with(0, pool_size=3), "model.layers[0] (input_conv): max pool 3 stride 2: AKD1000 max pools are 1 or 2"),
    (layers_with(0, pool="global_average"), "model.layers[0] (input_conv): global average pooling: AKD1000's input"),
    (layers_with(2, activation=False), "model.layers[2] (dense): only the last layer may have activation = false"),
    (layers_with(1, type="input_conv"), "model.layers[1] (input_conv): the first layer, and only the first"),
    (layers_with(0, type="conv"), "model.layers[0] (conv): the first layer, and only the first, must be an input_conv"),
    (layers_with(3, type="conv", filters=10, units=None), "model.layers[3] (conv): the last layer must be a dense"),
    (layers_with(1, type="pooling"), "model.layers[1] (pooling): type must be one of input_conv, conv, separable"),
    (layers_with(2, units=0), "model.layers[2] (dense): needs units >= 1"),
    (layers_with(1, frobnicate=1), "unknown key model.layers[1].frobnicate (allowed: type, name, filters"),
    (layers_with(1, name="conv0"), "model.layers: names conv0 are used twice"),
    ({**layers_with(0), "input_shape": [28, 28, 2]}, "an InputConvolutional takes 1 or 3 input channels"),
    (
        {**layers_with(0, padding="valid", kernel=5), "input_shape": [4, 4, 1]},
        "model.layers[0] (input_conv): leaves no output positions on its 4x4 input (kernel 5, valid)",
    ),
    (
        layers_with(1, type="separable", weight_bits=1),
        "model.layers[1] (separable): weight_bits 1: Akida 1.0 SeparableConvolutional weights are 2 or 4 bits",
    ),
    ({**layers_with(0), "conv0": 8}, "two forms of the network"),
    (
        {**layers_with(0), "input_bits": 4},
        "model.layers[0] (input_conv): an input_conv takes 8-bit pixels, not model.input_bits 4",
    ),
    (
        {"input_shape": [8, 8, 1], "input_bits": 4, "layers": [{"type": "conv", "filters": 8}, OUT, OUT]},
        "model.layers[1] (dense): only the last layer may have activation = false",
    ),
    ({**layers_with(0), "input_bits": 3}, "model.input_bits 3: 8 (pixels into an input_conv) or 1, 2, 4"),
    ({"layers": []}, "model.layers is empty: a network needs an input_conv layer and a dense output layer"),
    ({"input_shape": [400, 400, 1], "layers": [{"type": "input_conv", "filters": 8}, OUT]}, "takes at most 57334"),
]


@pytest.mark.parametrize(("model", "message"), BAD, ids=[message[:48] for _, message in BAD])
def test_bad_layer_lists_are_refused_in_one_line_naming_the_layer_and_rule(model: dict[str, Any], message: str):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"model": model}, "bad.toml")
    text = str(error.value)
    assert text.startswith("bad.toml: ") and message in text and "\n" not in text


def test_a_network_akd1000_cannot_map_is_refused_before_training(tmp_path: Path, capsys):
    """Rules the config check does not know are still caught before any epoch: the mapper's verdict
    on the freshly initialised integer model, one line from the CLI, exit 2, no run directory."""
    config = tmp_path / "wide.toml"
    config.write_text(
        "[model]\ninput_shape = [28, 28, 1]\n"
        '[[model.layers]]\ntype = "input_conv"\nfilters = 8\nstride = 2\npool = "max"\n'
        '[[model.layers]]\ntype = "conv"\nfilters = 4096\nstride = 2\n'
        '[[model.layers]]\ntype = "conv"\nfilters = 8\nstride = 2\n'
        '[[model.layers]]\ntype = "dense"\nunits = 10\nactivation = false\n'
        "[data]\ntrain_limit = 64\ntest_limit = 64\n"
    )
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-export: error: model: the model does not map fully on AKD1000 (")
    assert "'conv1'. The maximum number of filters is 2048 (got 4096)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_refuses_a_bad_layer_list_in_one_line(tmp_path: Path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(
        '[model]\n[[model.layers]]\ntype = "input_conv"\nfilters = 8\nkernel = 4\n'
        '[[model.layers]]\ntype = "dense"\nunits = 10\nactivation = false\n'
    )
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edge-export: error: {config}: model.layers[0] (input_conv): kernel 4: Akida 1.0 InputConvolutional "
        "kernels are 3, 5, 7\n"
    )


def test_frames_beyond_the_input_bits_are_refused_in_one_line(mnist_data):
    config = config_from_dict({"model": NETWORKS["input-data-separable"]})
    m = mnist_data
    frames = frames_for(m, [12, 12, 1], 64)  # 8-bit pixels for a 2-bit input
    data = data_from_arrays(frames, m.train_labels[:64], frames[:8], m.train_labels[:8])
    with pytest.raises(ConfigError, match=r"training frames hold values up to 255 but model.input_bits is 2"):
        train(config, data=data, progress=False)


def test_frames_of_another_shape_are_refused_in_one_line(mnist_data):
    config = load_config(CONFIGS / "dscnn.toml")
    m = mnist_data
    data = data_from_arrays(m.train_images[:64], m.train_labels[:64], m.test_images[:8], m.test_labels[:8])
    with pytest.raises(ConfigError, match=r"frames are 28x28x1 \(X x Y x C\) but model.input_shape is 8x8x1"):
        train(config, data=data, progress=False)


# --------------------------------------------------------------------------- shipped configs


SHIPPED_NPS = {
    "baseline": {"CNP1": 64, "FNP2": 1, "FNP3": 1, "HRC": 1},
    "zeroaware": {"CNP1": 64, "FNP2": 1, "FNP3": 1, "HRC": 1},
    "iscas": {"CNP1": 64, "FNP2": 1, "FNP3": 1, "HRC": 1},
    "dscnn": {"CNP1": 64, "FNP3": 1, "HRC": 1},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_NPS))
def test_shipped_configs_pass_the_checks_and_map_fully_on_akd1000(name: str):
    config = load_config(CONFIGS / f"{name}.toml")
    mapping = check_on_akd1000(config.model)
    assert mapping.sequences == 1 and mapping.nps == SHIPPED_NPS[name]
    kinds = [layer.kind for layer in config.model.architecture().layers]
    expected = {
        "iscas": ["InputConvolutional", *["Convolutional"] * 2, *["FullyConnected"] * 2],  # 3 conv + 2 FC
        "dscnn": ["InputConvolutional", *["SeparableConvolutional"] * 3, "FullyConnected"],
    }.get(name, ["InputConvolutional", "Convolutional", "FullyConnected", "FullyConnected"])
    assert kinds == expected


def test_a_trained_separable_run_exports_to_a_verified_bundle(tmp_path: Path, mnist_data):
    """The run directory of a separable network with a global average pool goes through the existing
    export path (spec.json -> model_from_spec -> .fbz + ONNX), and the engine, the simulator and
    onnxruntime agree with the run's recorded scores on every frame."""
    from bundle_fixtures import eval_set

    from edge_runtime.akida_model import SepConv
    from exporter.bundle_build import export_run
    from exporter.run_reader import load_run

    raw = config_to_dict(Config())
    raw["model"] = {
        "input_shape": [28, 28, 1],
        "layers": [
            {"type": "input_conv", "filters": 8, "stride": 2},
            {"type": "separable", "filters": 16, "stride": 2},
            {"type": "separable", "filters": 16, "pool": "global_average"},
            {"type": "dense", "units": 10, "activation": False},
        ],
    }
    raw["train"].update(threads=1, float_epochs=1, qat_epochs=1, batch_size=64)
    m, n = mnist_data, 100
    data = data_from_arrays(m.train_images, m.train_labels, m.test_images, m.test_labels, train_limit=256, test_limit=n)
    run = tmp_path / "run"
    _, report = train(config_from_dict(raw), run, data=data, progress=False)
    model = load_run(run).model
    assert [type(layer).__name__ for layer in model.layers] == ["InputConv", "SepConv", "SepConv", "Dense"]
    assert isinstance(model.layers[2], SepConv) and model.layers[2].global_avg_pool
    frames = replace(eval_set(m.test_images[:n, ..., None], m.test_labels[:n].astype(np.int64)), name="mnist-test")
    manifest = export_run(run, tmp_path / "bundle", frames)
    assert manifest.metrics.accuracy == pytest.approx(report["accuracy"])


def test_an_input_data_run_directory_reads_back_with_its_input_bits(tmp_path: Path, mnist_data):
    """spec.json records 1/2/4-bit inputs, and the export path rebuilds the InputData in front."""
    from edge_runtime.simulator import Simulator
    from exporter.run_reader import load_run

    config = config_from_dict({"model": NETWORKS["input-data-separable"]})
    m = mnist_data
    frames = frames_for(m, [12, 12, 1], 256, bits=2)
    data = data_from_arrays(frames, m.train_labels[:256], frames[:32], m.train_labels[:32])
    raw = config_to_dict(config)
    raw["train"].update(threads=1, float_epochs=1, qat_epochs=1, batch_size=64)
    train(config_from_dict(raw), tmp_path / "run", data=data, progress=False)
    model = load_run(tmp_path / "run").model
    assert model.input_data is not None and model.input_data.input_bits == 2 and model.input_max == 3
    outputs = Simulator(model).run(frames[:32]).outputs.reshape(32, -1)
    assert np.array_equal(outputs, np.load(tmp_path / "run" / "eval_scores.npy"))
