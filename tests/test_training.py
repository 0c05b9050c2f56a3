"""Training, integer exactness against akida's own engine, run directories and config validation.

Everything here trains tiny models on small MNIST slices (seconds, one thread), never a full run.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.errors import ConfigError
from exporter import cli
from exporter.config import Config, ModelConfig, config_from_dict, load_config, with_overrides
from exporter.evaluate import simulate, torch_eval
from exporter.qat import (
    IntegerLayer,
    ZeroAwareNet,
    calibrate_steps,
    export_integer_layers,
    to_akida,
)
from exporter.run_files import layers_from_arrays
from exporter.train import distillation_loss, load_teacher, seed_everything, train
from exporter.training_data import data_from_arrays

akida = pytest.importorskip("akida")

CONFIGS = Path(__file__).resolve().parents[1] / "exporter" / "configs"
TINY = ModelConfig(conv0=6, conv1=8, fc=16)


def tiny_config(**penalty: float) -> Config:
    overrides = [("train.threads", 1), ("train.float_epochs", 1), ("train.qat_epochs", 1), ("train.batch_size", 64)]
    overrides += [(f"penalty.{k}", v) for k, v in penalty.items()]
    return replace(with_overrides(Config(), overrides), model=TINY)


@pytest.fixture(scope="module")
def small_data(mnist_data):
    return data_from_arrays(
        mnist_data.train_images,
        mnist_data.train_labels,
        mnist_data.test_images,
        mnist_data.test_labels,
        train_limit=512,
        test_limit=256,
    )


def quantised_model(images: np.ndarray, widths: ModelConfig = TINY, seed: int = 0) -> ZeroAwareNet:
    """A model switched to the integer forward with calibrated (random-weight) parameters."""
    seed_everything(seed, 1)
    model = ZeroAwareNet(widths)
    with torch.no_grad():  # asymmetric biases so thresholds differ per filter
        for b in (model.b0, model.b1, model.b2):
            b.uniform_(-0.3, 0.1)
    calibrate_steps(model, torch.from_numpy(images).float().unsqueeze(1), 99.0)
    model.quantised.fill_(True)
    return model


def akida_outputs(layers: list[IntegerLayer], images: np.ndarray) -> list[np.ndarray]:
    """akida's engine outputs after each layer (full model, then with trailing layers popped)."""
    model = to_akida(layers)
    frames = images.reshape(-1, 28, 28, 1)
    outputs = [model.forward(frames)]
    for _ in range(3):
        model.pop_layer()
        outputs.append(model.forward(frames))
    return outputs[::-1]  # conv0 activations, conv1 activations, fc2 activations, fc3 potentials


def test_integer_forward_matches_akida_engine_layer_by_layer(mnist_data):
    images = mnist_data.test_images[:200]
    model = quantised_model(mnist_data.train_images[:256])
    with torch.no_grad():
        result = model(torch.from_numpy(images).float().unsqueeze(1))
    layers = export_integer_layers(model)
    a0, a1, a2, potentials = akida_outputs(layers, images)
    # every layer's training-time output is the engine's: torch (N, C, H, W) vs akida (N, X, Y, C)
    assert np.array_equal(result.acts[0].numpy().transpose(0, 2, 3, 1), a0)
    assert np.array_equal(result.acts[1].numpy().transpose(0, 2, 3, 1), a1)
    assert np.array_equal(result.acts[2].numpy(), a2.reshape(len(images), -1))
    assert np.array_equal(result.scores.numpy().astype(np.int32), potentials.reshape(len(images), -1))
    assert 0 < (a0 > 0).mean() < 1 and 0 < (a1 > 0).mean() < 1  # the check is not vacuous
    # and the project's simulator, fed the same integer parameters, agrees with both
    scores, counters = simulate(layers, images)
    assert np.array_equal(scores, potentials.reshape(len(images), -1))
    for counter, act in zip(counters[:3], (a0, a1, a2), strict=True):
        assert np.array_equal(counter.output_events, (act > 0).reshape(len(images), -1).sum(axis=1))


def test_trained_model_matches_akida_engine(small_data):
    """After real training, torch's integer forward gives akida's engine's scores exactly.

    The report's two flags are the code under test; the test recomputes the comparison itself, from
    the trained model's exported layers through akida's engine (the independent reference).
    """
    model, report = train(tiny_config(activations=2.0, weights=2.0), data=small_data, progress=False)
    assert report["exact_match_training_forward"] and report["exact_match_akida_engine"]
    images = small_data.test_x.numpy().reshape(-1, 28, 28)
    engine = akida_outputs(export_integer_layers(model), images)[3].reshape(len(images), -1)
    trained = torch_eval(model, small_data.test_x).numpy()
    assert np.array_equal(trained.astype(np.int32), engine)
    assert len(np.unique(engine.argmax(axis=1))) > 1  # a trained model, not a constant: the check is not vacuous


def test_layout_conversions_matter(mnist_data):
    """Without the kernel flip or with C-order flattening the engine disagrees: the test has teeth."""
    images = mnist_data.test_images[:64]
    layers = export_integer_layers(quantised_model(mnist_data.train_images[:256]))
    reference = akida_outputs(layers, images)[3]
    unflipped = [
        layers[0],
        replace(layers[1], weights=np.ascontiguousarray(layers[1].weights[::-1, ::-1])),
        *layers[2:],
    ]
    assert not np.array_equal(to_akida(unflipped).forward(images.reshape(-1, 28, 28, 1)), reference)
    w2 = layers[2].weights[0, 0]  # rows in Fortran order (x, y, c); permute them to C order (x, y, c)
    n_c = layers[1].weights.shape[3]
    c_order = w2.reshape(n_c, 7, 7, -1).transpose(2, 1, 0, 3).reshape(w2.shape)
    permuted = [*layers[:2], replace(layers[2], weights=c_order[None, None]), layers[3]]
    assert not np.array_equal(to_akida(permuted).forward(images.reshape(-1, 28, 28, 1)), reference)


def test_training_is_deterministic_under_a_seed(small_data):
    config = tiny_config(activations=1.0, weights=1.0)
    model_a, report_a = train(config, data=small_data, progress=False)
    model_b, report_b = train(config, data=small_data, progress=False)
    for key, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, model_b.state_dict()[key]), key
    assert report_a["scores_sha256"] == report_b["scores_sha256"]
    other = replace(config, train=replace(config.train, seed=1))
    model_c, _ = train(other, data=small_data, progress=False)
    assert not torch.equal(model_a.w1, model_c.w1)


def test_cli_writes_a_complete_run_directory(tmp_path: Path, mnist_data):
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nconv0 = 6\nconv1 = 8\nfc = 16\n"
        "[data]\ntrain_limit = 256\ntest_limit = 128\n"
        "[train]\nthreads = 1\nfloat_epochs = 1\nqat_epochs = 1\nbatch_size = 64\n"
        "[penalty]\nactivations = 1.0\n"
    )
    out = tmp_path / "run"
    out.mkdir()  # e.g. made beforehand for the logs: --force writes into it
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-progress",
                "--force",
                "--set",
                "penalty.weights=1.0",
            ]
        )
        == 0
    )
    for name in (
        "params.npz",
        "spec.json",
        "config.json",
        "report.json",
        "eval_scores.npy",
        "model.pt",
        "checkpoint.pt",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    spec = json.loads((out / "spec.json").read_text())
    assert report["exact_match_training_forward"] and report["images"] == 128
    assert json.loads((out / "config.json").read_text())["penalty"]["weights"] == 1.0
    assert [layer["kind"] for layer in spec["layers"]] == [
        "InputConvolutional",
        "Convolutional",
        "FullyConnected",
        "FullyConnected",
    ]
    with np.load(out / "params.npz") as npz:
        layers = layers_from_arrays(npz, spec["layers"])
        assert set(npz.files) == set(spec["params"]["keys"])
    images = mnist_data.test_images[:128]
    golden = np.load(out / "eval_scores.npy")
    assert np.array_equal(to_akida(layers).forward(images.reshape(-1, 28, 28, 1)).reshape(128, -1), golden)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    restored = ZeroAwareNet(TINY)
    restored.load_state_dict(checkpoint["model"])
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["penalty"]["activations"] == 1.0
    assert all(layer.weights.dtype == np.int8 for layer in layers)
    assert layers[0].threshold.dtype == np.int32 and layers[0].act_step.dtype == np.float32


def test_distillation_loss_is_hintons_soft_target_term():
    """T^2 x KL(teacher || student) at temperature T, against a plain NumPy evaluation."""
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(0, 3, (5, 10)), rng.normal(0, 3, (5, 10))

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for temperature in (1.0, 4.0):
        p, q = softmax(teacher / temperature), softmax(student / temperature)
        expected = temperature**2 * np.mean(np.sum(p * np.log(p / q), axis=1))
        got = distillation_loss(torch.from_numpy(student), torch.from_numpy(teacher), temperature)
        assert float(got) == pytest.approx(expected, rel=1e-9)
    assert float(distillation_loss(torch.from_numpy(teacher), torch.from_numpy(teacher), 4.0)) == pytest.approx(0)


def test_distillation_pulls_the_student_towards_the_teacher(tmp_path: Path, small_data):
    """A student trained with a (tiny) teacher's soft targets ends closer to the teacher's outputs."""
    teacher_dir = tmp_path / "teacher"
    teacher_config = with_overrides(tiny_config(), [("train.qat_epochs", 2)])
    train(teacher_config, out=teacher_dir, data=small_data, progress=False)
    teacher = load_teacher(teacher_dir)
    images = small_data.test_x.float()
    with torch.no_grad():
        target = torch.softmax(teacher(images).logits, dim=1)

    def distance(weight: float) -> float:
        config = with_overrides(
            tiny_config(), [("train.seed", 1), ("distill.teacher", str(teacher_dir)), ("distill.weight", weight)]
        )
        student, _ = train(config, data=small_data, progress=False)
        student.eval()
        with torch.no_grad():
            return float((torch.softmax(student(images).logits, dim=1) - target).abs().sum(dim=1).mean())

    assert distance(4.0) < distance(0.0)


def test_missing_or_bad_teacher_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist; train the teacher first"):
        load_teacher(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"is not a model\.pt written by edge-export train"):
        load_teacher(tmp_path / "bad")


def test_sweep_writes_pareto_table_and_plot(tmp_path: Path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nconv0 = 4\nconv1 = 4\nfc = 8\n[data]\ntrain_limit = 128\ntest_limit = 64\n"
        "[train]\nthreads = 1\nfloat_epochs = 0\nqat_epochs = 1\nbatch_size = 64\n"
    )
    sweep = ["sweep", "--config", str(config), "--grid", "penalty.activations=4.0", "--grid", "penalty.form=sigmoid,l1"]
    out = tmp_path / "sweep"
    assert cli.main([*sweep, "--out", str(out), "--no-progress"]) == 0
    lines = (out / "pareto.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[1].startswith("baseline,")
    assert (out / "pareto.png").stat().st_size > 1000 and "| name |" in (out / "pareto.md").read_text()
    assert (out / "runs" / "activations=4.0-form=l1" / "params.npz").is_file()
    # Two worker processes train the same points to the same results (every run is deterministic).
    parallel = tmp_path / "sweep-parallel"
    assert cli.main([*sweep, "--out", str(parallel), "--no-progress", "--jobs", "2"]) == 0
    assert (parallel / "pareto.csv").read_text() == (out / "pareto.csv").read_text()


@pytest.mark.parametrize("name", ["baseline.toml", "zeroaware.toml"])
def test_shipped_configs_load(name: str):
    config = load_config(CONFIGS / name)
    base = load_config(CONFIGS / "baseline.toml")
    # same network, schedule and seed (each expects its own accuracy)
    assert config.model == base.model and replace(config.train, expected_accuracy=0) == replace(
        base.train, expected_accuracy=0
    )
    assert config.train.expected_accuracy > 0.98


def test_unknown_key_is_one_line_naming_allowed_keys(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[penalty]\nactivation = 1.0\n[trian]\nseed = 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert "unknown key penalty.activation (allowed: activations, weights, form" in message
    assert "unknown section [trian] (allowed: model, data, train, penalty, prune, distill)" in message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"train": {"seed": "zero"}}, "train.seed must be int, got str"),
        ({"penalty": {"form": "l2"}}, "penalty.form must be one of sigmoid, linear, hoyer, l1"),
        ({"train": {"qat_epochs": 0}}, "qat_epochs >= 1"),
        ({"penalty": {"weighting": 1}}, "penalty.weighting must be str, got int"),
        ({"model": []}, "[model] must be a table"),
        ({"distill": {"temperature": 0.0}}, "distill.temperature > 0"),
    ],
)
def test_invalid_values_are_rejected(raw: dict, fragment: str):
    with pytest.raises(ConfigError, match=None) as error:
        config_from_dict(raw, "x.toml")
    assert fragment in str(error.value)


def test_cli_reports_config_errors_as_one_line(tmp_path: Path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[prune]\nsparsity = 2.0\n")
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-export: error:") and "prune.sparsity must be in [0, 1)" in err and "\n" not in err


def test_cli_reports_a_binary_config_as_one_line(tmp_path: Path, capsys):
    path = tmp_path / "ls"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe binary, not TOML\n")
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-export: error:") and "\n" not in err
    assert f"{path}: not a TOML file (not UTF-8 text" in err


def test_default_network_maps_fully_on_akd1000(mnist_data):
    layers = export_integer_layers(quantised_model(mnist_data.train_images[:64], widths=ModelConfig()))
    model = to_akida(layers)
    model.map(akida.AKD1000(), hw_only=True)  # raises if any layer would fall back to software
    assert len(model.sequences) == 1


def test_cli_refuses_an_existing_run_directory_unless_forced(tmp_path: Path, capsys):
    """A run directory holds hours of work: `train --out` onto one is refused before anything runs."""
    config = tmp_path / "tiny.toml"
    config.write_text("[data]\ntrain_limit = 64\ntest_limit = 64\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert cli.main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"edge-export: error: {out} already exists; pass --force to overwrite it, or choose another --out\n"
    assert (out / "report.json").read_text() == "{}"
