"""An edge host's install: the package without extras, in a fresh virtualenv, serves frames.

The bare install must bring neither onnx nor torch (nor onnxruntime, an extra of the onnx
backend), serve replayed frames on the simulator with the committed bundle, and answer a command
that needs an extra with one line naming it. In the development environment, where onnxruntime is
installed, serving on the simulator must not import it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.mnist import Mnist

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models" / "mnist-zeroaware"
OPTIONAL = ("onnx", "onnxruntime", "torch", "tqdm", "matplotlib")


def _env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("JOURNAL_STREAM", "PYTHONPATH")}


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False, env=_env(), **kwargs)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with ``pip install SRC`` only (pip's cache makes repeated runs quick)."""
    work = tmp_path_factory.mktemp("bare")
    source = work / "src"  # a copy, so pip's in-tree build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("edge_runtime", "exporter"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)])
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_the_bare_install_has_no_exporter_dependencies(bare_venv: Path) -> None:
    code = (
        "import importlib.util, json; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {OPTIONAL!r}}}))"
    )
    result = _run([str(bare_venv / "bin" / "python"), "-c", code])
    assert json.loads(result.stdout) == dict.fromkeys(OPTIONAL, False), result.stderr


@pytest.mark.slow
def test_the_bare_install_serves_replayed_frames_on_the_simulator(
    bare_venv: Path, tmp_path: Path, mnist_data: Mnist
) -> None:
    frames = mnist_data.test_images[:30]
    np.save(tmp_path / "frames.npy", frames)
    result = _run(
        [
            str(bare_venv / "bin" / "edge-runtime"),
            "serve",
            "--model",
            str(BUNDLE),
            "--source",
            f"replay:{tmp_path / 'frames.npy'}",
            "--backend",
            "simulator",
            "--metrics-addr",
            "127.0.0.1:0",
            "--predictions-stdout",
            "--exit-when-done",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    predictions = [json.loads(line) for line in result.stdout.splitlines()]
    # The committed model is 99% accurate: on these 30 test images it misses at most one.
    correct = sum(p["class"] == int(label) for p, label in zip(predictions, mnist_data.test_labels[:30], strict=True))
    assert len(predictions) == 30 and correct >= 29


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["edge-export", "train", "--config", "c.toml", "--out", "run"],
            "edge-export: error: `edge-export train` needs the train extra (no module 'torch'): "
            "pip install 'akida-edge[train]'",
        ),
        (
            ["edge-export", "verify", str(BUNDLE)],
            # verify runs the ONNX graph, so onnxruntime is the first module of the extra it misses
            "edge-export: error: `edge-export verify` needs the export extra (no module 'onnxruntime'): "
            "pip install 'akida-edge[export]'",
        ),
        (
            [
                "edge-runtime",
                "serve",
                "--model",
                str(BUNDLE),
                "--source",
                "replay:mnist-test",
                "--backend",
                "onnx",
                "--metrics-addr",
                "127.0.0.1:0",
            ],
            "edge-runtime: error: the onnx backend needs onnxruntime (no module 'onnxruntime'): "
            "pip install 'akida-edge[onnx]', or choose another inference.backend",
        ),
    ],
    ids=["train", "verify", "onnx-backend"],
)
def test_a_command_that_needs_an_extra_names_it(bare_venv: Path, tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "c.toml").write_text("")
    result = _run([str(bare_venv / "bin" / argv[0]), *argv[1:]], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == message + "\n", result.stderr


def test_serving_on_the_simulator_never_imports_onnxruntime(tmp_path: Path, mnist_data: Mnist) -> None:
    """Here onnxruntime is installed: it must still stay out of a simulator daemon (and of --help)."""
    np.save(tmp_path / "frames.npy", mnist_data.test_images[:5])
    code = f"""
import sys
from edge_runtime import cli
assert cli.main(["serve", "--model", {str(BUNDLE)!r}, "--source", "replay:{tmp_path / "frames.npy"}",
                 "--backend", "simulator", "--metrics-addr", "127.0.0.1:0", "--exit-when-done"]) == 0
print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))
"""
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0 and result.stdout == "[]\n", result.stderr
    control = _run([sys.executable, "-c", "import onnxruntime, sys; print('onnxruntime' in sys.modules)"])
    assert control.stdout == "True\n"  # it is installed here, so its absence above means something


@pytest.mark.slow
def test_the_data_commands_need_no_extra(bare_venv: Path, mnist_data: Mnist) -> None:
    """`edge-export data` fills and checks the cache the runtime reads: an edge host can run it."""
    result = _run([str(bare_venv / "bin" / "edge-export"), "data", "info"])
    assert result.returncode == 0 and "labels begin [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]" in result.stdout, result.stderr
