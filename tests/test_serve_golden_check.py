"""The serving backend must reproduce the golden outputs before it serves, at start and at SIGHUP.

``verify`` runs the golden frames through the simulator only (on model.fbz); onnxruntime and the
board are checked by the daemon itself. The bundle under test here passes every load-time check
(hashes, schema, the simulator's golden run) but ships another model's ONNX graph, sealed into its
manifest: only the serve-time check on the onnx backend can catch it. For the board, akida's own
engine plays the mapped model (the board is the one part we do not have), running another bundle's
.fbz: a board that computes something else than the bundle's golden outputs.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_support import BundleUnderTest, FakeDevice, build_bundle, scrape_when, total, value
from test_daemon import EngineModel, running

from edge_runtime import cli
from edge_runtime.backends import Board
from edge_runtime.bundle import file_entry, verify
from edge_runtime.daemon import Daemon
from edge_runtime.errors import BundleError
from edge_runtime.manifest import MANIFEST, ONNX, seal


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, mnist_data) -> tuple[BundleUnderTest, BundleUnderTest]:
    images, labels = mnist_data.test_images[:200, :, :, None], mnist_data.test_labels[:200]
    root = tmp_path_factory.mktemp("golden")
    return build_bundle(root / "a", 1, images, labels), build_bundle(root / "b", 2, images, labels)


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory, bundles) -> Path:
    """Bundle a with bundle b's ONNX graph, its manifest resealed over the new file: hashes all agree."""
    a, b = bundles
    path = tmp_path_factory.mktemp("liar") / "a"
    shutil.copytree(a.path, path)
    shutil.copyfile(b.path / ONNX, path / ONNX)
    document = json.loads((path / MANIFEST).read_text())
    entry = file_entry(path / ONNX)
    document["files"][ONNX] = {"sha256": entry.sha256, "bytes": entry.bytes}
    (path / MANIFEST).write_text(json.dumps(seal(document), indent=2))
    verify(path)  # every load-time check passes: the simulator runs model.fbz, which is a's
    return path


def engine_board(fbz: Path) -> Board:
    """A fake device whose 'mapped model' is akida's engine running ``fbz``, whatever it is asked to map."""
    device = FakeDevice(lambda: 0.0)
    device.forwarded, device.fail_after = 0, 10**9
    return Board(devices=lambda: [device], load_model=lambda path: EngineModel(fbz))


def start(bundle: Path, backend: str, **kwargs: Any) -> Daemon:
    return Daemon(
        None,
        {
            "model.bundle": str(bundle),
            "source.spec": "replay:mnist-test",
            "inference.backend": backend,
            "metrics.listen": "127.0.0.1:0",
        },
        **kwargs,
    )


def test_the_onnx_backend_is_refused_at_start_when_it_disagrees_with_the_golden_outputs(liar: Path, capsys) -> None:
    with pytest.raises(BundleError, match=r"the onnx backend disagrees with the golden outputs on \d+ of \d+ frames"):
        start(liar, "onnx").start()
    assert (
        cli.main(
            [
                "serve",
                "--model",
                str(liar),
                "--source",
                "replay:mnist-test",
                "--backend",
                "onnx",
                "--metrics-addr",
                "127.0.0.1:0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-runtime: error: ") and "\n" not in err and "do not deploy it on this host" in err


def test_a_board_that_computes_another_model_is_refused_and_the_right_one_serves(bundles) -> None:
    a, b = bundles
    with pytest.raises(BundleError, match=r"the akida backend disagrees with the golden outputs"):
        start(a.path, "akida", board=engine_board(b.path / "model.fbz")).start()
    # The same check passes when the board runs the bundle's own model: it refuses a mismatch, not the board.
    with running(
        {"model.bundle": str(a.path), "source.spec": "replay:mnist-test", "inference.backend": "akida"},
        board=engine_board(a.path / "model.fbz"),
    ) as daemon:
        scrape_when(
            daemon.url,
            lambda s: value(s, "edge_inferences_total", backend="akida") > 0,
            "inferences on the (engine-played) board",
        )


def test_sighup_to_a_bundle_the_onnx_backend_disagrees_with_is_rejected(
    tmp_path: Path, bundles, liar: Path, mnist_data
) -> None:
    a, _ = bundles
    frames = tmp_path / "frames.npy"
    np.save(frames, mnist_data.test_images[:200, :, :, None])
    config = tmp_path / "edge-runtime.toml"
    text = (
        f'[model]\nbundle = "{a.path}"\n[source]\nspec = "replay:{frames}?rate=500&loop=1"\n'
        '[inference]\nbackend = "onnx"\n'
    )
    config.write_text(text)
    with running({}, config) as daemon:
        scrape_when(daemon.url, lambda s: value(s, "edge_inferences_total", backend="onnx") > 0, "onnx inferences")
        config.write_text(text.replace(str(a.path), str(liar)))
        daemon.post(signal.SIGHUP)
        samples = scrape_when(
            daemon.url, lambda s: value(s, "edge_reloads_total", result="rejected") == 1, "the rejected reload"
        )
        assert value(samples, "edge_reloads_total", result="ok") == 0
        assert daemon.bundle is not None and daemon.bundle.path == a.path
        before = total(samples, "edge_inferences_total")
        scrape_when(daemon.url, lambda s: total(s, "edge_inferences_total") > before, "inference to go on")
