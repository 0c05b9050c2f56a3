"""``edge-runtime serve`` as a real process: SIGHUP reloads (bad and good bundles), SIGTERM under load,
the systemd notify sequence, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from daemon_support import (
    BundleUnderTest,
    PtyWriter,
    build_bundle,
    daemon_process,
    scrape,
    scrape_when,
    total,
    value,
    wait_for,
)

from edge_runtime import cli
from edge_runtime.emulator import PtyPort, SensorEmulator

REPLAY_FRAMES = 300


@pytest.fixture(scope="module")
def replay(mnist_data) -> tuple[np.ndarray, np.ndarray]:
    return mnist_data.test_images[:REPLAY_FRAMES, :, :, None], mnist_data.test_labels[:REPLAY_FRAMES]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, replay) -> tuple[BundleUnderTest, BundleUnderTest]:
    images, labels = replay
    root = tmp_path_factory.mktemp("bundles")
    return (
        build_bundle(root / "a", 1, images[:200], labels[:200]),
        build_bundle(root / "b", 2, images[:200], labels[:200]),
    )


def point(link: Path, target: Path) -> None:
    """Flip a symlink atomically, as a deployment does."""
    temporary = link.with_name(link.name + ".new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, link)


def inferences(url: str) -> float:
    return total(scrape(url), "edge_inferences_total")


def test_sighup_rejects_a_tampered_bundle_then_takes_a_good_one(tmp_path: Path, replay, bundles) -> None:
    images, _ = replay
    a, b = bundles
    np.save(tmp_path / "frames.npy", images)
    tampered = tmp_path / "tampered"
    shutil.copytree(a.path, tampered)
    onnx = bytearray((tampered / "model.onnx").read_bytes())
    onnx[len(onnx) // 2] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(onnx))
    current = tmp_path / "current"
    point(current, a.path)
    config = tmp_path / "edge-runtime.toml"
    config.write_text(
        f'[model]\nbundle = "{current}"\n'
        f'[source]\nspec = "replay:{tmp_path / "frames.npy"}?rate=300&loop=1"\n'
        f'[predictions]\npath = "{tmp_path / "predictions.jsonl"}"\n'
    )

    with daemon_process(tmp_path, ["--config", str(config)], watchdog_usec=2_000_000) as daemon:
        url = daemon.url
        wait_for(lambda: daemon.notify.find("READY", "1"), 30, "READY=1")
        wait_for(lambda: inferences(url) >= 50, 30, "inferences on bundle a")
        info_a = ("edge_model_info", (("input_shape", "28x28x1"), ("name", "a"), ("sha256", a.bundle.sha256)))

        point(current, tampered)
        daemon.process.send_signal(signal.SIGHUP)
        samples = scrape_when(url, lambda s: value(s, "edge_reloads_total", result="rejected"), "the rejected reload")
        assert value(samples, "edge_reloads_total", result="ok") == 0
        assert samples[info_a] == 1  # still serving a
        before = total(samples, "edge_inferences_total")
        wait_for(lambda: inferences(url) > before + 30, 30, "inference to go on after the rejection")
        rejected = [line for line in daemon.stderr_lines if "reload rejected" in line]
        assert len(rejected) == 1
        assert "still serving a (" in rejected[0] and "model.onnx is altered" in rejected[0]
        wait_for(lambda: len(daemon.notify.find("READY", "1")) >= 2, 10, "READY=1 after the rejected reload")

        point(current, b.path)
        daemon.process.send_signal(signal.SIGHUP)
        samples = scrape_when(url, lambda s: value(s, "edge_reloads_total", result="ok"), "the good reload")
        info_b = ("edge_model_info", (("input_shape", "28x28x1"), ("name", "b"), ("sha256", b.bundle.sha256)))
        assert samples[info_b] == 1 and info_a not in samples
        after = total(samples, "edge_inferences_total")
        wait_for(lambda: inferences(url) > after + 30, 30, "inferences on bundle b")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0

    notify = daemon.notify
    reloading = notify.find("RELOADING", "1")
    assert len(reloading) == 2 and all(int(m["MONOTONIC_USEC"]) > 0 for m in reloading)
    assert len(notify.find("READY", "1")) == 3  # start, and after each reload (rejected or not)
    assert notify.find("WATCHDOG", "1") and notify.find("STOPPING", "1")
    sequence = [key for m in notify.messages for key in ("READY", "RELOADING", "STOPPING") if key in m]
    assert sequence == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]

    # Every prediction is bundle a's until some point, then bundle b's: no frame was served by the tampered one.
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    frames = images[[r["seq"] % REPLAY_FRAMES for r in records]]
    got = np.array([r["class"] for r in records])
    from_a, from_b = got == a.predict(frames), got == b.predict(frames)
    assert (from_a | from_b).all()
    switch = int(np.argmax(~from_a)) if (~from_a).any() else len(records)
    assert from_b[switch:].all() and switch < len(records) - 30


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_under_load_drains_and_accounts_for_every_frame(tmp_path: Path, replay, stop) -> None:
    images, labels = replay
    bundle = build_bundle(tmp_path / "bundle", 3, images[:200], labels[:200])
    with (
        PtyPort() as port,
        daemon_process(
            tmp_path,
            [
                "--model",
                str(bundle.path),
                "--source",
                f"serial:{port.path}",
                "--backend",
                "simulator",
                "--predictions-stdout",
            ],
        ) as daemon,
    ):
        url = daemon.url
        wait_for(lambda: daemon.notify.find("READY", "1"), 30, "READY=1")
        writer = PtyWriter(port)
        writer.run(SensorEmulator(writer.write, images, loop=True).run)
        try:
            wait_for(lambda: inferences(url) >= 500, 60, "500 inferences under load")
            daemon.process.send_signal(stop)
            assert daemon.wait_exit(30) == 0
        finally:
            writer.stop()
    summary = next(line for line in daemon.stderr_lines if "stopped:" in line)
    match = re.search(r"stopped: (\d+) frames received, (\d+) inferred, dropped: (.*)$", summary)
    assert match, summary
    received, inferred = int(match[1]), int(match[2])
    dropped = {} if match[3] == "none" else {k: int(v) for k, v in (p.split() for p in match[3].split(", "))}
    assert inferred == len(daemon.stdout_lines) >= 500  # every inference was printed, none after exit
    records = [json.loads(line) for line in daemon.stdout_lines]
    assert all(r["backend"] == "simulator" for r in records)
    pipeline_drops = sum(dropped.get(r, 0) for r in ("queue_full", "bad_shape", "inference_error"))
    assert received == inferred + pipeline_drops
    assert any(f"{stop.name} received: draining the queue" in line for line in daemon.stderr_lines)
    assert not [line for line in daemon.stderr_lines if "Traceback" in line]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "replay:mnist-test"], "model.bundle is required (set it or pass --model)"),
        (["--model", "/nonexistent", "--source", "replay:mnist-test"], "/nonexistent: no such bundle directory"),
        (["--model", "/b", "--source", "usb:x"], "bad source 'usb:x'"),
        (["--config", "/nonexistent.toml"], "/nonexistent.toml: cannot be read"),
        (["--model", "BUNDLE", "--source", "replay:mnist-test", "--backend", "akida"], "no Akida device found"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args: list[str], message: str, bundles, capsys) -> None:
    args = [str(bundles[0].path) if arg == "BUNDLE" else arg for arg in args]
    assert cli.main(["serve", "--metrics-addr", "127.0.0.1:0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-runtime: error: ") and message in err and "\n" not in err


def test_a_busy_metrics_port_is_a_user_error(tmp_path: Path, bundles, capsys) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code = cli.main(
            [
                "serve",
                "--model",
                str(bundles[0].path),
                "--source",
                "replay:mnist-test",
                "--metrics-addr",
                f"127.0.0.1:{port}",
            ]
        )
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
