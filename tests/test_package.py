"""``edge-export package``: a separable model built with akida's own API becomes a verified bundle that
the daemon serves over replay; what the user brings is checked in one line; the demo and a replay
say at start when frames do not fit the bundle."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import akida
import numpy as np
import pytest
from akida_random import mnist_like, set_random_variables
from daemon_support import http_get, wait_for

from edge_runtime import cli as runtime_cli
from edge_runtime.bundle import load_bundle
from edge_runtime.daemon import Daemon
from edge_runtime.emulator import PtyPort, SensorEmulator
from edge_runtime.errors import ConfigError
from edge_runtime.frame_fit import mismatch
from exporter import cli

FRAMES = 200


def separable_model(rng: np.random.Generator) -> akida.Model:
    """DS-CNN-like, with akida's API: InputConv 3x3/2, two SeparableConvolutional (the last with a
    global average pool), a FullyConnected of 4 potentials. It maps fully on AKD1000."""
    model = akida.Model()
    model.add(
        akida.InputConvolutional(
            input_shape=(16, 16, 1),
            kernel_size=(3, 3),
            filters=8,
            name="conv_0",
            weights_bits=8,
            act_bits=4,
            kernel_stride=(2, 2),
        )
    )
    model.add(
        akida.SeparableConvolutional(kernel_size=(3, 3), filters=16, name="separable_1", weights_bits=4, act_bits=4)
    )
    model.add(
        akida.SeparableConvolutional(
            kernel_size=(3, 3),
            filters=16,
            name="separable_2",
            weights_bits=4,
            act_bits=4,
            pool_type=akida.PoolType.Average,
        )
    )
    model.add(akida.FullyConnected(units=4, name="classifier", weights_bits=4, activation=False))
    for layer in model.layers:
        set_random_variables(rng, layer)
    return model


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(14)
    root = tmp_path_factory.mktemp("user")
    model = separable_model(rng)
    model.save(str(root / "sep.fbz"))
    np.save(root / "frames.npy", mnist_like(rng, FRAMES, (16, 16, 1)))
    np.save(root / "labels.npy", rng.integers(0, 4, FRAMES))
    (root / "names.txt").write_text("up\ndown\nleft\nright\n")
    return {
        "fbz": root / "sep.fbz",
        "frames": root / "frames.npy",
        "labels": root / "labels.npy",
        "names": root / "names.txt",
        "root": root,
    }


@pytest.fixture(scope="module")
def packaged(user_files) -> Path:
    out = user_files["root"] / "bundle"
    f = user_files
    assert (
        cli.main(
            [
                "package",
                str(f["fbz"]),
                "--frames",
                str(f["frames"]),
                "--labels",
                str(f["labels"]),
                "--names",
                str(f["names"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_package_builds_a_verified_bundle_of_the_fbz(packaged, user_files, capsys):
    engine = akida.Model(str(user_files["fbz"]))
    frames, labels = np.load(user_files["frames"]), np.load(user_files["labels"])
    predicted = engine.forward(frames).reshape(FRAMES, -1).argmax(axis=1)
    bundle = load_bundle(packaged)
    manifest = bundle.manifest
    assert [layer.kind for layer in manifest.layers] == [
        "InputConvolutional",
        "SeparableConvolutional",
        "SeparableConvolutional",
        "FullyConnected",
    ]
    assert [layer.global_avg_pool for layer in manifest.layers] == [False, False, True, False]
    assert manifest.layers[1].weights == 3 * 3 * 8 + 8 * 16  # depthwise + pointwise, as stored
    assert manifest.output.labels == ("up", "down", "left", "right")
    assert manifest.metrics.frames == FRAMES and manifest.target.device == "AKD1000"
    assert manifest.metrics.accuracy == pytest.approx(float(np.mean(predicted == labels)))
    assert np.array_equal(bundle.golden.outputs, engine.forward(bundle.golden.frames))
    capsys.readouterr()
    assert cli.main(["inspect", str(packaged)]) == 0
    assert "\nclasses  up, down, left, right\n" in capsys.readouterr().out
    assert cli.main(["verify", str(packaged), "--frames", str(user_files["frames"])]) == 0
    out = capsys.readouterr().out
    assert f"{FRAMES} frames of {user_files['frames']} agree on akida, simulator, onnxruntime" in out


def _serve(bundle: Path, spec: str, log: Path, frames: int, feed=None, scrape: list[str] | None = None) -> list[dict]:
    """Serve ``bundle`` from ``spec`` until the prediction log holds ``frames`` lines (``feed``, if
    given, runs in a thread once the daemon is up); the records, sorted by sequence number. With
    ``scrape``, /metrics as it was then is appended to it."""
    daemon = Daemon(
        None,
        {
            "model.bundle": str(bundle),
            "source.spec": spec,
            "metrics.listen": "127.0.0.1:0",
            "predictions.path": str(log),
            "source.queue_size": 4096,
        },
    )
    daemon.start()
    status: list[int] = []
    loop = threading.Thread(target=lambda: status.append(daemon.wait()), daemon=True)
    loop.start()
    sender = threading.Thread(target=feed, daemon=True) if feed is not None else None
    try:
        if sender is not None:  # once the port is read: a sensor's frames before that are lost
            wait_for(lambda: http_get(f"{daemon.url}/readyz")[0] == 200, 30, "/readyz to return 200")
            sender.start()
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == frames, 90, "every frame in the log")
        if scrape is not None:
            scrape.append(http_get(f"{daemon.url}/metrics")[1])
    finally:
        daemon.post(signal.SIGTERM)
        loop.join(60)
    assert status == [0]
    return sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: r["seq"])


def _engine_classes(user_files) -> list[int]:
    frames = np.load(user_files["frames"])
    return akida.Model(str(user_files["fbz"])).forward(frames).reshape(len(frames), -1).argmax(axis=1).tolist()


def test_serve_over_replay_infers_every_frame_of_the_packaged_model(packaged, user_files, tmp_path):
    scraped: list[str] = []
    records = _serve(packaged, f"replay:{user_files['frames']}", tmp_path / "predictions.jsonl", FRAMES, scrape=scraped)
    assert [r["seq"] for r in records] == list(range(FRAMES))
    classes = _engine_classes(user_files)
    assert [r["class"] for r in records] == classes
    assert set(records[0]["events"]) == {"conv_0", "separable_1", "separable_2", "classifier"}
    # --names up/down/left/right: in the manifest, the prediction log and the class label of /metrics
    names = ("up", "down", "left", "right")
    assert load_bundle(packaged).manifest.class_names == names
    assert [r["class_name"] for r in records] == [names[c] for c in classes]
    (text,) = scraped
    for index, name in enumerate(names):
        assert f'edge_predictions_total{{class="{name}"}} {float(classes.count(index))}' in text
    assert 'edge_predictions_total{class="0"}' not in text


def test_serve_from_the_sensor_emulator_takes_frames_of_any_shape(packaged, user_files, tmp_path):
    """16x16 frames over a pty in the serial protocol, as `emulate-sensor --frames F.npy` sends them."""
    frames = np.load(user_files["frames"])
    with PtyPort() as port:
        emulator = SensorEmulator(port.write, frames)
        records = _serve(packaged, f"serial:{port.path}", tmp_path / "predictions.jsonl", FRAMES, emulator.run)
        emulator.stop()
    assert [r["seq"] for r in records] == list(range(FRAMES))
    assert [r["class"] for r in records] == _engine_classes(user_files)


def _refused(capsys, *args: str) -> str:
    assert cli.main(["package", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-export: error: ") and "\n" not in err, err
    return err


def test_package_refuses_what_does_not_fit_in_one_line(user_files, tmp_path, capsys):
    f = user_files
    out = str(tmp_path / "out")
    common = [str(f["fbz"]), "--out", out]
    np.save(tmp_path / "wide.npy", np.zeros((3, 17, 16), np.uint8))
    assert "frames are 17x16x1, the model takes 16x16x1" in _refused(
        capsys, *common, "--frames", str(tmp_path / "wide.npy")
    )
    np.save(tmp_path / "few.npy", np.zeros(FRAMES - 1, np.int64))
    assert f"labels must be {FRAMES} integers" in _refused(
        capsys, *common, "--frames", str(f["frames"]), "--labels", str(tmp_path / "few.npy")
    )
    np.save(tmp_path / "big.npy", np.full(FRAMES, 4, np.int64))
    assert "class indices 0..3" in _refused(
        capsys, *common, "--frames", str(f["frames"]), "--labels", str(tmp_path / "big.npy")
    )
    (tmp_path / "names.txt").write_text("a\nb\n")
    assert "2 class names for 4 classes (the model has 4 outputs)" in _refused(
        capsys, *common, "--frames", str(f["frames"]), "--names", str(tmp_path / "names.txt")
    )
    v2 = akida.Model()
    v2.add(akida.InputConv2D(input_shape=(16, 16, 1), kernel_size=3, filters=4, name="v2in"))
    v2.save(str(tmp_path / "v2.fbz"))
    assert "layer 'v2in' has type InputConv2D" in _refused(
        capsys, str(tmp_path / "v2.fbz"), "--out", out, "--frames", str(f["frames"])
    )
    assert not (tmp_path / "out").exists()


def test_frames_beyond_an_input_data_models_bits_are_a_mismatch():
    frames = np.zeros((2, 4, 4, 1), np.uint8)
    assert mismatch(frames, (4, 4, 1), 15) is None
    frames[1, 2, 3, 0] = 16
    assert mismatch(frames, (4, 4, 1), 15) == "frames hold values up to 16, the model's InputData takes 0..15"
    assert mismatch(frames, (4, 4, 1)) is None
    assert mismatch(frames, (4, 5, 1)) == "frames are 4x4x1, the model takes 4x5x1"


def test_demo_with_a_bundle_of_another_input_says_so_at_start(packaged):
    result = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "demo", "--model", str(packaged), "--metrics-addr", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert "\n" not in err and "frames are 28x28x1, the model takes 16x16x1" in err
    assert f"--model {packaged} --source replay:FRAMES.npy" in err


def test_serve_a_replay_of_the_wrong_frames_is_refused_at_start(packaged, tmp_path, capsys):
    np.save(tmp_path / "mnist_like.npy", np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="frames are 28x28x1, the model takes 16x16x1"):
        Daemon(
            None,
            {
                "model.bundle": str(packaged),
                "source.spec": f"replay:{tmp_path / 'mnist_like.npy'}",
                "metrics.listen": "127.0.0.1:0",
            },
        ).start()
    assert (
        runtime_cli.main(
            [
                "serve",
                "--model",
                str(packaged),
                "--source",
                f"replay:{tmp_path / 'mnist_like.npy'}",
                "--metrics-addr",
                "127.0.0.1:0",
            ]
        )
        == 2
    )
