"""The runtime's bundle loader: a good bundle loads and verifies; every damaged or lying one is refused.

One bundle is exported per module (a random default-architecture model calibrated on real MNIST
frames); each test edits a private copy of it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import akida
import numpy as np
import pytest
from bundle_fixtures import make_bundle

from edge_runtime import manifest as manifest_mod
from edge_runtime.bundle import check_golden, file_entry, load_bundle, read_golden, sha256_file, verify, write_golden
from edge_runtime.errors import BackendError, BundleError
from edge_runtime.manifest import FBZ, GOLDEN, MANIFEST, ONNX, manifest_document, parse_manifest, seal
from edge_runtime.onnx_session import OnnxSession

FRAMES = 200


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_data) -> Path:
    frames = mnist_data.test_images[:FRAMES, ..., None]
    out = tmp_path_factory.mktemp("bundles") / "good"
    make_bundle(out, np.random.default_rng(1), frames, mnist_data.test_labels[:FRAMES])
    return out


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(exported, target)
    return target


def edit_manifest(path: Path, change: Callable[[dict[str, Any]], None], reseal: bool = True) -> None:
    """Change the manifest document; resealed, so only the change itself can be detected."""
    document = json.loads((path / MANIFEST).read_text())
    change(document)
    (path / MANIFEST).write_text(json.dumps(seal(document) if reseal else document, indent=2))


def flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(BundleError) as caught:
        verify(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------- good bundles


def test_good_bundle_loads_and_verifies(exported):
    bundle = verify(exported)
    manifest = bundle.manifest
    assert manifest.format_version == manifest_mod.FORMAT_VERSION
    assert manifest.input.shape == bundle.model.input_shape == (28, 28, 1)
    assert manifest.output.shape == (1, 1, 10) and manifest.output.dtype == "int32"
    assert [layer.name for layer in manifest.layers] == ["conv0", "conv1", "fc2", "fc3"]
    assert manifest.toolchain["akida"] == akida.__version__
    assert bundle.golden.frames.shape == (manifest.golden_frames, 28, 28, 1)
    assert bundle.fbz_path.is_file() and bundle.onnx_path.is_file()
    assert len(bundle.sha256) == 64


def test_class_names_are_optional_and_checked(copy):
    """A bundle without class names (every bundle before them) names its classes by index and writes
    no key; one with them loads them, and the key is written only then."""
    plain = load_bundle(copy).manifest
    assert plain.class_names is None and plain.classes == tuple(map(str, range(10)))
    assert "class_names" not in json.loads((copy / MANIFEST).read_text())
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    edit_manifest(copy, lambda d: d.update(class_names=names))
    named = load_bundle(copy).manifest
    assert named.class_names == named.classes == tuple(names)
    assert manifest_document(named)["class_names"] == named.class_names
    assert "class_names" not in manifest_document(plain)


def test_manifest_round_trips_through_json(exported):
    bundle = load_bundle(exported)
    document = json.loads(json.dumps(manifest_document(bundle.manifest)))
    assert parse_manifest(document, "test") == (bundle.manifest, bundle.sha256)


def test_manifest_digest_ignores_formatting_but_not_content(copy):
    document = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps(document, separators=(",", ":"), sort_keys=True))
    load_bundle(copy)  # whitespace and key order are not content
    edit_manifest(copy, lambda d: d["metrics"].update(accuracy=0.999), reseal=False)
    refused(copy, MANIFEST, "altered after export")


def test_golden_file_is_byte_for_byte_reproducible(tmp_path, exported):
    golden = read_golden(exported / GOLDEN)
    write_golden(tmp_path / "again.npz", golden)
    assert (tmp_path / "again.npz").read_bytes() == (exported / GOLDEN).read_bytes()


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("name", [MANIFEST, FBZ, ONNX, GOLDEN])
def test_edited_byte_in_any_file_is_refused(copy, name):
    flip_byte(copy / name)
    message = refused(copy, str(copy))
    assert name in message


@pytest.mark.parametrize("name", [FBZ, ONNX, GOLDEN])
def test_missing_payload_file_is_refused(copy, name):
    (copy / name).unlink()
    refused(copy, f"{name} is missing", "re-copy")


def test_missing_manifest_or_directory_is_refused(copy, tmp_path):
    (copy / MANIFEST).unlink()
    refused(copy, "manifest.json is missing")
    refused(tmp_path / "nowhere", "no such bundle directory")


@pytest.mark.parametrize(("version", "advice"), [(3, "upgrade akida-edge"), (1, "re-export")])
def test_other_schema_version_is_refused(copy, version, advice):
    edit_manifest(copy, lambda d: d.update(format_version=version))
    refused(copy, f"format version {version}", advice)


def test_not_a_bundle_manifest_is_refused(copy):
    edit_manifest(copy, lambda d: d.update(format="something-else"))
    refused(copy, "not an akida-edge-bundle manifest")


def test_incompatible_akida_version_is_refused(copy):
    edit_manifest(copy, lambda d: d["toolchain"].update(akida="2.18.0"))
    refused(copy, "akida 2.18.0", f"this host has akida {akida.__version__}", "re-export")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["input"].update(shape=[28, 28, 3]), "input is uint8 (28, 28, 1)"),
        (lambda d: d["output"].update(shape=[1, 1, 12]), "output is int32 (1, 1, 10)"),
        (lambda d: d["output"].update(dtype="uint8"), "output is int32"),
        (lambda d: d["output"].update(labels=["a", "b"]), "2 labels for 10 outputs"),
        (lambda d: d["layers"][1].update(output_shape=[14, 14, 16]), "layer 'conv1': output_shape"),
        (lambda d: d["layers"][2].update(weights_bits=2), "layer 'fc2': weights_bits"),
        (lambda d: d["layers"].pop(), "3 layers in the manifest, 4 in model.fbz"),
        (lambda d: d.update(golden_frames=3), "golden frames are uint8"),
        (lambda d: d.update(class_names=["a", "b"]), "2 class names for 10 classes"),
        (lambda d: d.update(class_names=[*"abcdefghi", "a"]), "class name 'a' appears twice"),
        (lambda d: d.update(class_names=[*"abcdefghi", " "]), "class name ' ' is empty or spans lines"),
    ],
)
def test_manifest_that_lies_about_the_model_is_refused(copy, change, fragment):
    edit_manifest(copy, change)
    refused(copy, "does not match the model", fragment)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["metrics"].pop("accuracy"), "missing key metrics.accuracy"),
        (lambda d: d["target"].update(colour="blue"), "unknown key target.colour (allowed: device, ip_version,"),
        (lambda d: d["input"].update(shape=[28, 28]), "input.shape must have 3 items"),
        (lambda d: d["metrics"].update(frames="many"), 'metrics.frames must be int, got "many"'),
        (lambda d: d["layers"][0].update(activation=1), "layers[0].activation must be bool"),
        (lambda d: d.update(class_names="abc"), "class_names must be a list"),
        (lambda d: d.update(class_names=[1] * 10), "class_names[0] must be str"),
    ],
)
def test_malformed_manifest_is_refused(copy, change, fragment):
    edit_manifest(copy, change)
    refused(copy, MANIFEST, fragment)


# Tests run as root, which chmod does not stop: a symlink to /proc/self/mem is a regular file of
# size 0 whose first read fails (EIO) for anyone, like a file on a failing disk.
UNREADABLE = Path("/proc/self/mem")
needs_unreadable = pytest.mark.skipif(not UNREADABLE.is_file(), reason="needs Linux /proc/self/mem")


def make_unreadable(file: Path) -> None:
    file.unlink()
    file.symlink_to(UNREADABLE)


@needs_unreadable
def test_unreadable_manifest_is_refused_in_one_line(copy):
    make_unreadable(copy / MANIFEST)
    refused(copy, f"{copy / MANIFEST}: cannot be read (Input/output error)", "re-copy")


@needs_unreadable
def test_unreadable_payload_file_is_refused_in_one_line(copy):
    edit_manifest(copy, lambda d: d["files"][ONNX].update(bytes=0))  # the size matches: it must be read
    make_unreadable(copy / ONNX)
    refused(copy, f"{ONNX} is unreadable (Input/output error)", "re-copy")
    with pytest.raises(BundleError, match=r"model\.onnx: cannot be read \(Input/output error\)"):
        sha256_file(copy / ONNX)


@pytest.mark.parametrize("name", ["../outside.bin", "/OUTSIDE", "notes.txt"])
def test_files_outside_the_payload_are_refused_unread(copy, tmp_path, name):
    """A manifest naming other files (even with their true hashes) must not make the loader read them."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    name = name.replace("/OUTSIDE", str(outside))
    if name == "notes.txt":
        shutil.copy(outside, copy / name)
    entry = dataclasses.asdict(file_entry(outside))
    edit_manifest(copy, lambda d: d["files"].update({name: entry}))
    refused(copy, MANIFEST, f"files lists {name!r}", "a bundle holds only model.fbz, model.onnx, golden.npz")


def test_consistent_but_wrong_golden_outputs_fail_verification(copy):
    """Files and manifest rehashed consistently: only running the golden vectors can catch it."""
    golden = read_golden(copy / GOLDEN)
    outputs = golden.outputs.copy()
    outputs[3, 0, 0, 0] += 1
    write_golden(copy / GOLDEN, dataclasses.replace(golden, outputs=outputs))
    entry = dataclasses.asdict(file_entry(copy / GOLDEN))
    edit_manifest(copy, lambda d: d["files"].update({GOLDEN: entry}))
    load_bundle(copy)  # every hash and claim is consistent...
    refused(copy, "the simulator disagrees with the golden outputs on 1 of", "frame 3", "do not deploy")


# --------------------------------------------------------------------------- backends against the golden vectors


def test_onnx_session_returns_what_akida_returns(exported):
    bundle = load_bundle(exported)
    session = OnnxSession(bundle.onnx_path)
    frames = bundle.golden.frames
    expected = akida.Model(str(bundle.fbz_path)).forward(frames)
    outputs = session.infer(frames)
    assert outputs.dtype == expected.dtype and outputs.shape == expected.shape
    assert np.array_equal(outputs, expected)
    assert session.infer(frames[:1]).shape == (1, 1, 1, 10)  # dynamic batch axis
    check_golden(bundle, session.infer, "onnxruntime")
    session.close()


@pytest.mark.parametrize(
    "frames",
    [np.zeros((2, 28, 28, 1), np.float32), np.zeros((2, 28, 28), np.uint8), np.zeros((2, 14, 28, 1), np.uint8)],
)
def test_onnx_session_refuses_wrong_frames(exported, frames):
    with pytest.raises(BackendError, match=r"frames must be uint8 \(N, 28, 28, 1\)"):
        OnnxSession(exported / ONNX).infer(frames)


def test_onnx_session_refuses_unreadable_model(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(BackendError, match="onnxruntime cannot load"):
        OnnxSession(tmp_path / "bad.onnx")


def test_check_golden_names_the_failing_backend(exported):
    bundle = load_bundle(exported)
    with pytest.raises(BundleError, match="broken returns int64"):
        check_golden(bundle, lambda frames: np.zeros((len(frames), 1, 1, 10), np.int64), "broken")
