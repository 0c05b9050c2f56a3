"""The exporter: akida builder, exact ONNX graph, three-way verification, bundle writing and the CLI.

The ONNX graph is checked against akida's engine on random models covering every Akida 1.0 feature
(tests/akida_random.py, arbitrary float32 act_steps included), and its firing rule against the
simulator's reference for arbitrary values. Bundles are exported from small random default-architecture
models and from a real (tiny) training run; tests use a few hundred MNIST frames, not 10,000.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import akida
import numpy as np
import onnx
import pytest
from akida_random import EVERY_KIND, model_frames, random_model, saturating_models
from bundle_fixtures import default_spec, eval_set, random_default_model, with_layer, write_run_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.akida_model import AkidaModel, Dense, from_akida, load_model
from edge_runtime.akida_rules import fire
from edge_runtime.bundle import load_bundle
from edge_runtime.errors import BundleError, DataError, ModelError
from edge_runtime.manifest import FBZ, GOLDEN, MANIFEST, ONNX
from edge_runtime.onnx_session import OnnxSession
from edge_runtime.simulator import Simulator
from exporter import cli
from exporter.akida_build import map_on_akd1000, to_akida
from exporter.bundle_build import export_model, export_run
from exporter.onnx_build import FLOAT32_EXACT, IR_VERSION, OPSET, check_exact, fire_levels, to_onnx
from exporter.run_data import RunData, write_run_data
from exporter.run_reader import load_run
from exporter.verify import three_way, verify_bundle

FRAMES = 300


@pytest.fixture(scope="module")
def frames(mnist_data) -> np.ndarray:
    return mnist_data.test_images[:FRAMES, ..., None]


@pytest.fixture(scope="module")
def labels(mnist_data) -> np.ndarray:
    return mnist_data.test_labels[:FRAMES].astype(np.int64)


@pytest.fixture(scope="module")
def model(frames) -> AkidaModel:
    return random_default_model(np.random.default_rng(3), frames)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, model, frames, labels) -> Path:
    out = tmp_path_factory.mktemp("export") / "mnist-random"
    export_model(model, out, eval_set(frames, labels))
    return out


def save_onnx(model: AkidaModel, path: Path) -> Path:
    onnx.save(to_onnx(model, "test"), path)
    return path


# --------------------------------------------------------------------------- the random fixture itself


def test_fixture_model_fires_on_10_to_40_percent_of_neurons(model, frames):
    counters = Simulator(model).run(frames).counters
    for layer, counts in zip(model.layers[:-1], counters, strict=False):
        density = float(np.mean(counts.output_events)) / counts.neurons
        assert 0.10 <= density <= 0.40, (layer.name, density)


# --------------------------------------------------------------------------- akida builder


def test_to_akida_round_trips_every_feature(tmp_path):
    rng = np.random.default_rng(11)
    for _ in range(40):
        original = random_model(rng, EVERY_KIND)
        ours = from_akida(original)
        built = to_akida(ours)
        built.save(str(tmp_path / "m.fbz"))
        again = load_model(tmp_path / "m.fbz")
        assert ours.input_data == again.input_data  # a frozen dataclass of plain values
        for a, b in zip(ours.layers, again.layers, strict=True):
            for name, value in vars(a).items():
                other = getattr(b, name)
                assert np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other, name
        x = model_frames(rng, original, 4)
        assert np.array_equal(original.forward(x), built.forward(x))


def test_to_akida_refuses_a_model_whose_shapes_akida_disagrees_with(model):
    wrong = with_layer(model, 1, output_shape=(8, 8, 16))
    with pytest.raises(ModelError, match=r"layer 'conv1': akida computes output shape \(7, 7, 16\)"):
        to_akida(wrong)


def test_default_architecture_maps_fully_on_akd1000(model):
    mapping = map_on_akd1000(to_akida(model))
    assert mapping.device == "AKD1000" and mapping.sequences == 1
    assert mapping.per_layer["conv0"] == {"HRC": 1}
    assert set(mapping.per_layer["conv1"]) <= {"CNP1", "CNP2"}
    assert set(mapping.per_layer["fc2"]) | set(mapping.per_layer["fc3"]) <= {"FNP2", "FNP3"}
    # one pass: every NP serves one layer, so the totals are the layers' sums
    assert sum(mapping.nps.values()) == sum(sum(nps.values()) for nps in mapping.per_layer.values())


def test_model_that_does_not_fit_akd1000_is_refused(model):
    conv1 = model.layers[1]
    rng = np.random.default_rng(0)
    kernel = rng.integers(-7, 8, (5, 5, *conv1.weights.shape[2:])).astype(np.int8)
    wide = with_layer(model, 1, kernel=(5, 5), weights=kernel)  # stride 2 needs a 3x3 kernel on AKD1000
    with pytest.raises(ModelError, match=r"does not map fully on AKD1000.*stride 2"):
        map_on_akd1000(to_akida(wide))


# --------------------------------------------------------------------------- exact ONNX graph


def test_onnx_graph_is_valid_portable_and_batched(model, tmp_path):
    proto = to_onnx(model, "mnist")
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == IR_VERSION and proto.opset_import[0].version == OPSET
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == "input" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [28, 28, 1]
    assert graph_output.name == "output" and graph_output.type.tensor_type.elem_type == onnx.TensorProto.INT32
    ops = {node.op_type for node in proto.graph.node}
    assert "Div" not in ops  # the firing rule is comparisons only


def test_onnx_equals_engine_and_simulator_on_random_models(tmp_path):
    """Every feature (InputData, SeparableConvolutional, global and max pools, paddings, strides,
    1/2/4 bits, arbitrary act_steps): exact, or refused."""
    rng = np.random.default_rng(5)
    exact = refused = 0
    kinds: set[str] = set()
    for _ in range(150):
        original = random_model(rng, EVERY_KIND)
        ours = from_akida(original)
        try:
            path = save_onnx(ours, tmp_path / "m.onnx")
        except ModelError as error:
            assert "wrap" in str(error) or "int32" in str(error) or "act_step" in str(error)
            refused += 1
            continue
        x = model_frames(rng, original, 8)
        expected = original.forward(x)
        got = OnnxSession(path).infer(x)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)
        assert np.array_equal(Simulator(ours).run(x).outputs, expected)
        exact += 1
        kinds.update(layer.parameters.layer_type.name for layer in original.layers)
        kinds.update("global_pool" for layer in ours.layers if getattr(layer, "global_avg_pool", False))
    assert exact >= 120, (exact, refused)
    assert kinds == {
        "InputData",
        "InputConvolutional",
        "Convolutional",
        "SeparableConvolutional",
        "FullyConnected",
        "global_pool",
    }


def test_onnx_reproduces_the_engines_twenty_bit_potentials(tmp_path):
    """The clipped FullyConnected and the saturating global average pools of the hand-built models."""
    for kind, original, x in saturating_models():
        ops = {node.op_type for node in to_onnx(from_akida(original), "t").graph.node}
        assert "Clip" in ops, kind
        got = OnnxSession(save_onnx(from_akida(original), tmp_path / "m.onnx")).infer(x)
        np.testing.assert_array_equal(got, original.forward(x), err_msg=kind)


def test_onnx_three_way_on_real_frames(model, frames, tmp_path):
    to_akida(model).save(str(tmp_path / "m.fbz"))
    save_onnx(model, tmp_path / "m.onnx")
    outputs, counters = three_way(tmp_path / "m.fbz", tmp_path / "m.onnx", model, frames)
    assert outputs.shape == (FRAMES, 1, 1, 10) and counters.frames == FRAMES
    assert len(np.unique(outputs.reshape(FRAMES, -1).argmax(axis=1))) > 1  # not a constant answer


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**20), 2**20),
    st.integers(-(2**20), 2**20),
    st.floats(1 / 16, 2**16, allow_nan=False, width=32),
    st.sampled_from([1, 2, 4]),
)
def test_fire_levels_equal_the_engine_rule(potential, threshold, act_step, act_bits):
    """Counting reached levels is the simulator's reference ``fire`` wherever the engine cannot wrap."""
    th, step = np.array([threshold], np.int32), np.array([act_step], np.float32)
    pots = potential + np.arange(-40, 41, dtype=np.int64)
    levels = fire_levels(th, step, act_bits)[0]
    counted = (pots[:, None] >= levels[None, :]).sum(axis=1)
    assert np.array_equal(counted, fire(pots[:, None], th, step, act_bits)[:, 0])


def test_check_exact_refuses_potentials_beyond_float32(model):
    huge = Dense(
        name="wide",
        input_shape=(1, 1, 200_000),
        output_shape=(1, 1, 1),
        weights=np.full((200_000, 1), 7, np.int8),
        threshold=np.zeros(1, np.int32),
        act_step=np.ones(1, np.float32),
        act_bits=4,
        weights_bits=4,
        input_bits=4,
        activation=False,
    )
    with pytest.raises(ModelError, match=r"layer 'wide': potentials can reach 21000000 >= 2\*\*24"):
        check_exact(AkidaModel((model.layers[0], huge)))
    assert max(bound.max_abs_value for bound in check_exact(model)) < FLOAT32_EXACT


def test_check_exact_refuses_thresholds_that_make_the_engine_wrap(model):
    fc2 = model.layers[2]
    wrapping = with_layer(model, 2, threshold=np.full_like(fc2.threshold, -(2**30)))
    with pytest.raises(ModelError, match=r"layer 'fc2'.*wrap"):
        to_onnx(wrapping, "x")


# --------------------------------------------------------------------------- export


def test_export_writes_a_complete_verified_bundle(bundle_dir, model, frames, labels):
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted([MANIFEST, FBZ, ONNX, GOLDEN])
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in bundle_dir.iterdir())  # readable by the daemon user
    assert bundle_dir.stat().st_mode & 0o055 == 0o055
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    outputs = akida.Model(str(bundle.fbz_path)).forward(frames)
    m = manifest.metrics
    assert m.frames == FRAMES and m.eval_set == "test-frames"
    assert m.accuracy == pytest.approx(float(np.mean(outputs.reshape(FRAMES, -1).argmax(1) == labels)))
    # Reference: akida's engine, layer by layer (trailing layers popped), not the simulator the exporter used.
    engine, per_layer = akida.Model(str(bundle.fbz_path)), []
    for _ in m.layers:
        per_layer.insert(0, float(np.mean(np.count_nonzero(engine.forward(frames).reshape(FRAMES, -1), axis=1))))
        if len(engine.layers) > 1:
            engine.pop_layer()
    assert [lm.nonzero_activations_per_frame for lm in m.layers] == per_layer
    assert m.nonzero_weights == sum(int(np.count_nonzero(layer.weights)) for layer in model.layers)
    activated = sum(lm.nonzero_activations_per_frame for lm in m.layers[:3])
    assert m.nonzero_activations_per_frame == pytest.approx(activated)
    assert manifest.target.device == "AKD1000" and manifest.target.ip_version == "v1"
    assert manifest.verification.backends == ("akida", "simulator", "onnxruntime")
    assert manifest.golden_frames == 16 and np.array_equal(bundle.golden.frames, frames[:16])
    assert np.array_equal(bundle.golden.labels, labels[:16])


def test_export_is_reproducible(bundle_dir, model, frames, labels, tmp_path):
    export_model(model, tmp_path / "mnist-random", eval_set(frames, labels))
    for name in (FBZ, ONNX, GOLDEN, MANIFEST):
        assert (tmp_path / "mnist-random" / name).read_bytes() == (bundle_dir / name).read_bytes(), name


def test_export_records_both_devices_mappings_and_v2_figures(model, frames, tmp_path):
    """Each device's mapping is akida's own (mapped again here on the saved .fbz), and its figures are
    the packaged profile's on the simulator's counters of the evaluation frames."""
    import akida

    from edge_runtime.energy import DEVICES, DeviceProfile
    from edge_runtime.mapping import map_model
    from edge_runtime.simulator import Simulator

    manifest = export_model(model, tmp_path / "b", eval_set(frames, None))
    assert manifest.metrics.accuracy is None
    counters = Simulator(model).run(frames).counters.layers
    for device in DEVICES:
        mapping = map_model(akida.Model(str(tmp_path / "b" / "model.fbz")), device)
        assert manifest.mappings[device] == mapping
        profile = DeviceProfile.packaged(device)
        figures = manifest.metrics.energy[device]
        estimate = profile.bind(mapping).evaluate_counters(counters)
        assert figures.profile == profile.version
        assert figures.total_j == pytest.approx(float(np.mean(estimate.total_j)), rel=1e-12)
        assert 0 < figures.dynamic_j < figures.total_j and 0 < figures.frame_s < figures.chip_s + 1
    # a NP count per layer on the target device, as akida counts them
    per_layer = [p.nps for p in manifest.mappings["akd1000"].layers]
    assert [sum(layer.nps.values()) for layer in manifest.layers] == per_layer


def test_failed_export_writes_nothing(model, frames, tmp_path):
    conv1 = model.layers[1]
    kernel = np.ones((5, 5, *conv1.weights.shape[2:]), np.int8)
    unmappable = with_layer(model, 1, kernel=(5, 5), weights=kernel)
    with pytest.raises(ModelError, match="does not map fully"):
        export_model(unmappable, tmp_path / "out", eval_set(frames, None))
    assert list(tmp_path.iterdir()) == []


def test_backend_disagreement_is_reported_with_its_frame(model, frames, tmp_path):
    to_akida(model).save(str(tmp_path / "m.fbz"))
    fc3 = model.layers[3]
    weights = fc3.weights.copy()
    weights[0, 0] = 7 if weights[0, 0] != 7 else 6
    save_onnx(with_layer(model, 3, weights=weights), tmp_path / "other.onnx")
    with pytest.raises(BundleError, match=r"onnxruntime disagrees with the Akida engine on \d+ of 300 frames"):
        three_way(tmp_path / "m.fbz", tmp_path / "other.onnx", model, frames)


def test_export_refuses_to_overwrite_without_force(bundle_dir, model, frames, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)
    with pytest.raises(BundleError, match="already exists; pass --force"):
        export_model(model, out, eval_set(frames[:50], None))
    export_model(model, out, eval_set(frames[:50], None), force=True)
    assert load_bundle(out).manifest.metrics.frames == 50
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(BundleError, match="is not a bundle; refusing to replace it"):
        export_model(model, tmp_path / "precious", eval_set(frames, None), force=True)
    assert (tmp_path / "precious" / "thesis.tex").is_file()


def test_export_refuses_frames_of_the_wrong_shape(model, frames, tmp_path):
    with pytest.raises(DataError, match=r"the model takes uint8 \(28, 28, 1\)"):
        export_model(model, tmp_path / "b", eval_set(frames[:, :14], None))


# --------------------------------------------------------------------------- run directories


def test_export_run_from_a_run_directory(tmp_path, frames, labels):
    run = write_run_dir(tmp_path / "run-7", np.random.default_rng(2), frames)
    manifest = export_run(run, tmp_path / "bundle", eval_set(frames, labels))
    assert manifest.training.run == "run-7" and manifest.training.seed == 7
    assert manifest.training.config["model"] == {"conv0": 8, "conv1": 16, "fc": 32}
    assert [layer.name for layer in manifest.layers] == [spec["name"] for spec in default_spec()]


def test_altered_run_directory_is_refused(tmp_path, frames):
    run = write_run_dir(tmp_path / "run", np.random.default_rng(2), frames)
    with open(run / "params.npz", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match=r"does not match the SHA-256 in spec\.json"):
        load_run(run)
    (run / "spec.json").unlink()
    with pytest.raises(ModelError, match=r"spec\.json: missing; is .* a run directory"):
        load_run(run)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_data) -> Path:
    """A real (tiny) training run: the contract test for the training helper's run-directory format."""
    pytest.importorskip("torch")
    from exporter.config import Config, ModelConfig, with_overrides
    from exporter.train import train
    from exporter.training_data import data_from_arrays

    overrides = [("train.threads", 1), ("train.float_epochs", 0), ("train.qat_epochs", 1), ("train.batch_size", 64)]
    config = replace(with_overrides(Config(), overrides), model=ModelConfig(conv0=6, conv1=8, fc=16))
    data = data_from_arrays(
        mnist_data.train_images,
        mnist_data.train_labels,
        mnist_data.test_images,
        mnist_data.test_labels,
        train_limit=512,
        test_limit=FRAMES,
    )
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(config, out, data=data, progress=False)
    return out


@pytest.mark.slow
def test_export_of_a_real_training_run_matches_its_report(trained_run, tmp_path, mnist_data):
    frames, test_labels = mnist_data.test_images[:FRAMES, ..., None], mnist_data.test_labels[:FRAMES]
    mnist_frames = replace(eval_set(frames, test_labels.astype(np.int64)), name="mnist-test")
    manifest = export_run(trained_run, tmp_path / "bundle", mnist_frames)
    report = json.loads((trained_run / "report.json").read_text())
    assert manifest.metrics.accuracy == pytest.approx(report["accuracy"])
    assert manifest.metrics.nonzero_activations_per_frame == pytest.approx(report["activations_nonzero_per_image"])
    assert manifest.metrics.nonzero_weights == report["weights_nonzero"]
    assert manifest.training.seed == report["seed"]


@pytest.mark.slow
def test_run_whose_recorded_scores_differ_from_the_engine_is_refused(trained_run, tmp_path, mnist_data):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    scores = np.load(run / "eval_scores.npy")
    scores[5, 0] += 1
    np.save(run / "eval_scores.npy", scores)
    frames = mnist_data.test_images[:FRAMES, ..., None]
    with pytest.raises(BundleError, match=r"recorded scores differ from the Akida engine's on 1 of 300 .*frame 5"):
        export_run(run, tmp_path / "bundle", replace(eval_set(frames, None), name="mnist-test"))
    assert not (tmp_path / "bundle").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_inspect_prints_the_summary(bundle_dir, capsys):
    assert cli.main(["inspect", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    for fragment in (
        "name     mnist-random",
        "AKD1000 (Akida IP v1)",
        "1 HRC",
        "uint8 (N, 28x28x1) in [0, 255]",
        "int32 (N, 1x1x10) potentials; labels 0 1 2 3 4 5 6 7 8 9",
        "conv0      InputConvolutional       28x28x1 -> 14x14x8",
        "2x2/2",
        "8/8/4",
        "4/4/pot",
        "expected on test-frames (300 frames): accuracy",
        "verified akida = simulator = onnxruntime",
        "model.fbz",
        "ok",
    ):
        assert fragment in out, fragment


def test_cli_inspect_flags_altered_files(bundle_dir, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / ONNX).write_bytes(b"changed")
    (copy / GOLDEN).unlink()
    assert cli.main(["inspect", str(copy)]) == 2
    captured = capsys.readouterr()
    assert "model.onnx" in captured.out and "altered" in captured.out and "missing" in captured.out
    assert "2 file(s) missing or altered" in captured.err and "Traceback" not in captured.err


def test_cli_verify(bundle_dir, frames, tmp_path, capsys):
    np.save(tmp_path / "frames.npy", frames[:40, ..., 0])  # (N, 28, 28): one channel implied
    assert cli.main(["verify", str(bundle_dir), "--frames", str(tmp_path / "frames.npy")]) == 0
    assert "16 golden vectors and 40 frames" in capsys.readouterr().out
    np.save(tmp_path / "bad.npy", frames[:4].astype(np.float32))
    assert cli.main(["verify", str(bundle_dir), "--frames", str(tmp_path / "bad.npy")]) == 2
    assert "frames must be uint8, got float32" in capsys.readouterr().err
    np.save(tmp_path / "rgb.npy", np.zeros((4, 28, 28, 3), np.uint8))
    assert cli.main(["verify", str(bundle_dir), "--frames", str(tmp_path / "rgb.npy")]) == 2
    assert "the bundle takes uint8 (N, 28, 28, 1)" in capsys.readouterr().err


def test_verify_bundle_checks_all_three_backends(bundle_dir, frames):
    report = verify_bundle(bundle_dir, frames[:64])
    assert report.golden_frames == 16 and report.extra_frames == 64
    assert report.backends == ("akida", "simulator", "onnxruntime")


def test_cli_export(tmp_path, frames, capsys, monkeypatch):
    import exporter.bundle_build as bundle_build

    run = write_run_dir(tmp_path / "run", np.random.default_rng(4), frames)
    monkeypatch.setattr(bundle_build, "mnist_eval_set", lambda cache_dir: eval_set(frames[:100], None))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'b'}" in out and "modelled on AKD1000 (akd1000-v2, AllNps mapping): total" in out
    assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err


NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_cli_export_takes_the_runs_own_test_split_and_class_names(tmp_path, frames, labels, capsys):
    """A run trained on the user's data records its test frames and class names; export uses both,
    checks the run's recorded scores on them, and the manifest carries the names."""
    run = write_run_dir(tmp_path / "run", np.random.default_rng(4), frames)
    test_frames, test_labels = frames[:120], labels[:120].astype(np.int64)
    record = RunData("npz:/data/mine.npz", (28, 28, 1), 10, NAMES, "as stored in mine.npz", test_frames, test_labels)
    write_run_data(run, record)
    outputs = Simulator(load_run(run).model).run(test_frames).outputs.reshape(120, -1)
    np.save(run / "eval_scores.npy", outputs[:50])
    assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    manifest = load_bundle(tmp_path / "b").manifest
    assert manifest.class_names == NAMES and manifest.output.labels == NAMES
    assert manifest.metrics.eval_set == "npz:mine.npz test split" and manifest.metrics.frames == 120
    assert manifest.input.preprocessing == "as stored in mine.npz"
    np.save(run / "eval_scores.npy", outputs[:50] + 1)  # scores the engine does not reproduce
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "c")]) == 2
    assert "recorded scores differ from the Akida engine's on 50 of 50" in capsys.readouterr().err


def test_cli_export_of_an_mnist_run_with_class_names(tmp_path, frames, monkeypatch):
    import exporter.bundle_build as bundle_build

    run = write_run_dir(tmp_path / "run", np.random.default_rng(4), frames)
    write_run_data(run, RunData("mnist", (28, 28, 1), 10, NAMES, "mnist", None, None))
    monkeypatch.setattr(bundle_build, "mnist_eval_set", lambda cache_dir: eval_set(frames[:100], None))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
    assert load_bundle(tmp_path / "b").manifest.class_names == NAMES


def test_export_refuses_class_names_that_do_not_fit_the_model(tmp_path, model, frames):
    with pytest.raises(DataError, match=r"test-frames: 3 class names for 10 classes \(the model has 10 outputs\)"):
        export_model(model, tmp_path / "b", eval_set(frames[:40], None, class_names=("a", "b", "c")))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("kind", "message"), [("empty", "empty or truncated file"), ("archive", "an .npz archive")])
def test_cli_verify_refuses_unreadable_frames_in_one_line(bundle_dir, tmp_path, capsys, kind, message):
    path = tmp_path / f"{kind}.npy"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        with path.open("wb") as handle:
            np.savez(handle, frames=np.zeros((2, 28, 28, 1), np.uint8))
    assert cli.main(["verify", str(bundle_dir), "--frames", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cli_export_refuses_a_symlink_out_and_leaves_it_alone(tmp_path, frames, capsys, monkeypatch):
    import exporter.bundle_build as bundle_build

    run = write_run_dir(tmp_path / "run", np.random.default_rng(4), frames)
    monkeypatch.setattr(bundle_build, "mnist_eval_set", lambda cache_dir: eval_set(frames[:100], None))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "v1")]) == 0
    (tmp_path / "current").symlink_to("v1")
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "current"), "--force"]) == 2
    err = capsys.readouterr().err
    assert "is a symlink" in err and "ln -sfn NEW" in err and err.count("\n") == 1 and "Traceback" not in err
    assert os.readlink(tmp_path / "current") == "v1" and load_bundle(tmp_path / "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "run", "v1"]  # no temporaries left


def test_replace_dir_rolls_back_when_the_new_bundle_cannot_be_moved_in(tmp_path, monkeypatch):
    import exporter.bundle_build as bundle_build

    old, new = tmp_path / "bundle", tmp_path / ".bundle.tmp"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    real_replace, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(bundle_build.os, "replace", second_fails)
    with pytest.raises(BundleError, match=r"No space left on device.*the old bundle is kept"):
        bundle_build._replace_dir(new, old)
    assert (old / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.tmp", "bundle"]  # the caller removes new


def test_export_of_a_run_far_below_its_expected_accuracy_warns_in_one_line(tmp_path, frames, labels, caplog):
    run = write_run_dir(tmp_path / "run", np.random.default_rng(2), frames)
    config = json.loads((run / "config.json").read_text())
    manifest = export_run(run, tmp_path / "quiet", eval_set(frames, labels))  # nothing expected: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    accuracy = manifest.metrics.accuracy
    assert accuracy is not None and accuracy < 0.5  # random weights
    config["train"]["expected_accuracy"] = accuracy + 0.0099  # within a point: fine
    (run / "config.json").write_text(json.dumps(config))
    export_run(run, tmp_path / "close", eval_set(frames, labels))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    config["train"]["expected_accuracy"] = 0.99
    (run / "config.json").write_text(json.dumps(config))
    export_run(run, tmp_path / "far", eval_set(frames, labels))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "\n" not in warning and f"run {run} on test-frames ({len(frames)} frames): accuracy" in warning
    assert "points below the 99.00% its config expects (train.expected_accuracy)" in warning
