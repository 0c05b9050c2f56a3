"""Model bundles: the one artefact an edge host deploys, and the checks that make it trustworthy.

A bundle is a directory (schema in docs/bundle.md)::

    manifest.json   what the model is, what it expects and returns, what it costs, how it was made
    model.fbz       the Akida 1.0 model (akida's own format), for the board and for our simulator
    model.onnx      the same integer network for onnxruntime, bit-exact with the engine
    golden.npz      a few input frames and their exact outputs: the contract every backend must meet

Why the loader is strict: a daemon that runs a damaged or mismatched model keeps answering, just
wrongly, and nobody notices. So :func:`load_bundle` refuses a bundle whose files are missing or
altered (SHA-256 of each file, and of the manifest itself), whose format version or akida version
this host cannot honour, or whose manifest disagrees with the model it describes, and says which
check failed and what to do. :func:`verify` adds the golden vectors through the simulator; the
daemon calls it before swapping bundles on SIGHUP.

The manifest's schema, and its reading and writing, are manifest.py's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .akida_model import AkidaModel, load_model
from .errors import BundleError, EdgeError
from .manifest import (
    FBZ,
    GOLDEN,
    MANIFEST,
    ONNX,
    PAYLOAD_FILES,
    FileEntry,
    Manifest,
    class_names_problem,  # also imported from here by exporter/datasets.py
    layer_specs,
    parse_manifest,
)
from .simulator import Simulator

_GOLDEN_ARRAYS = ("frames", "outputs", "labels")


@dataclass(frozen=True, eq=False)
class Golden:
    """Frames and the exact outputs every backend must give for them (labels -1 when unknown)."""

    frames: np.ndarray
    outputs: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    manifest: Manifest
    model: AkidaModel
    golden: Golden
    sha256: str  # the manifest's digest: names this exact bundle in logs and metrics

    @property
    def fbz_path(self) -> Path:
        return self.path / FBZ

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX


# --------------------------------------------------------------------------- small pieces


def _unreadable(path: Path, error: OSError) -> BundleError:
    return BundleError(
        f"{path}: cannot be read ({error.strerror or error}); check its permissions, or re-copy the bundle"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """The file's SHA-256; BundleError (naming the file) if it cannot be read."""
    try:
        return _sha256(path)
    except OSError as error:
        raise _unreadable(path, error) from None


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256_file(path), path.stat().st_size)


def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------- golden vectors


def write_golden(path: Path, golden: Golden) -> None:
    """An ``.npz`` with fixed timestamps, so the same model and frames always give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in _GOLDEN_ARRAYS:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(getattr(golden, name)), allow_pickle=False)


def read_golden(path: Path) -> Golden:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return Golden(**{name: npz[name] for name in _GOLDEN_ARRAYS})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise BundleError(f"{path}: unreadable golden vectors ({error}): re-export the bundle") from None


# --------------------------------------------------------------------------- loading and checking


def read_manifest(path: Path) -> tuple[Manifest, str]:
    """Read and check ``path/manifest.json`` alone (no payload files touched)."""
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: {MANIFEST} is missing: not a bundle, or an incomplete copy; re-copy it")
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise _unreadable(manifest_path, error) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: damaged, not valid JSON ({error}): re-copy the bundle") from None
    return parse_manifest(document, str(manifest_path))


def file_problems(path: Path, manifest: Manifest) -> dict[str, str]:
    """Payload files that are unlisted, missing or altered (size or SHA-256), with what is wrong."""
    problems = {name: "not listed in the manifest" for name in PAYLOAD_FILES if name not in manifest.files}
    for name in PAYLOAD_FILES:  # never a name from the manifest itself (see parse_manifest)
        entry, file = manifest.files.get(name), path / name
        if entry is None:
            continue
        if not file.is_file():
            problems[name] = "missing"
            continue
        try:
            altered = file.stat().st_size != entry.bytes or _sha256(file) != entry.sha256
        except OSError as error:
            problems[name] = f"unreadable ({error.strerror or error})"
            continue
        if altered:
            problems[name] = "altered (its SHA-256 differs from the manifest's)"
    return problems


def check_files(path: Path, manifest: Manifest) -> None:
    """Every payload file is listed, present, and has the recorded size and SHA-256."""
    problems = file_problems(path, manifest)
    if problems:
        listed = "; ".join(f"{name} is {problem}" for name, problem in problems.items())
        raise BundleError(f"{path}: {listed}: re-copy the bundle or re-export it")


def check_toolchain(path: Path, manifest: Manifest) -> None:
    """The .fbz is read and run by akida; a bundle is only trusted with the akida it was verified with."""
    built, here = manifest.toolchain.get("akida", "unknown"), installed_version("akida")
    if built != here:
        raise BundleError(
            f"{path}: built and verified with akida {built}, this host has akida {here}: "
            f"re-export the bundle with akida {here} (edge-export export), or install akida=={built}"
        )


def _first_difference(a: Any, b: Any) -> str:
    for field in fields(a):
        if getattr(a, field.name) != getattr(b, field.name):
            return f"{field.name} {getattr(a, field.name)!r} in the manifest, {getattr(b, field.name)!r} in {FBZ}"
    return "no difference"


def check_against_model(path: Path, manifest: Manifest, model: AkidaModel, golden: Golden) -> None:
    """The manifest must describe the model it ships with: shapes, bits, layers, output type, golden arrays."""
    problems = []
    if manifest.input.shape != model.input_shape or manifest.input.dtype != "uint8":
        problems.append(
            f"input is uint8 {model.input_shape} in {FBZ}, the manifest says "
            f"{manifest.input.dtype} {manifest.input.shape}"
        )
    if manifest.output.shape != model.output_shape or manifest.output.dtype != model.output_dtype.name:
        problems.append(
            f"output is {model.output_dtype.name} {model.output_shape} in {FBZ}, the manifest says "
            f"{manifest.output.dtype} {manifest.output.shape}"
        )
    if len(manifest.output.labels) != model.output_shape[-1]:
        problems.append(f"{len(manifest.output.labels)} labels for {model.output_shape[-1]} outputs")
    if manifest.class_names is not None:
        problem = class_names_problem(manifest.class_names, int(np.prod(model.output_shape)))
        if problem is not None:
            problems.append(problem)
    if len(manifest.layers) != len(model.layers):
        problems.append(f"{len(manifest.layers)} layers in the manifest, {len(model.layers)} in {FBZ}")
    nps = {claimed.name: claimed.nps for claimed in manifest.layers}
    for claimed, actual, layer in zip(
        manifest.layers, layer_specs(model, lambda name: nps.get(name, {})), model.layers, strict=False
    ):
        if claimed != actual:
            problems.append(f"layer '{layer.name}': {_first_difference(claimed, actual)}")
    n = manifest.golden_frames
    expected = {
        "frames": ((n, *model.input_shape), np.dtype(np.uint8)),
        "outputs": ((n, *model.output_shape), model.output_dtype),
        "labels": ((n,), np.dtype(np.int64)),
    }
    for name, (shape, dtype) in expected.items():
        array = getattr(golden, name)
        if array.shape != shape or array.dtype != dtype:
            problems.append(f"golden {name} are {array.dtype} {array.shape}, expected {dtype} {shape}")
    if problems:
        raise BundleError(f"{path}: the manifest does not match the model: {'; '.join(problems)}: re-export the bundle")


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle after checking schema, akida version, every file's hash and the manifest's claims."""
    path = Path(path)
    manifest, digest = read_manifest(path)
    check_toolchain(path, manifest)
    check_files(path, manifest)
    try:
        model = load_model(path / FBZ)
    except EdgeError as error:
        raise BundleError(f"{path}: {error}") from None
    golden = read_golden(path / GOLDEN)
    check_against_model(path, manifest, model, golden)
    return Bundle(path, manifest, model, golden, digest)


def check_golden(bundle: Bundle, infer: Callable[[np.ndarray], np.ndarray], backend: str) -> None:
    """Run the golden frames through ``infer``; BundleError unless every output matches exactly."""
    outputs = np.asarray(infer(bundle.golden.frames))
    expected = bundle.golden.outputs
    if outputs.shape != expected.shape or outputs.dtype != expected.dtype:
        raise BundleError(
            f"{bundle.path}: {backend} returns {outputs.dtype} {outputs.shape} for the golden "
            f"frames, the bundle expects {expected.dtype} {expected.shape}: do not deploy it here"
        )
    wrong = np.flatnonzero((outputs != expected).reshape(len(expected), -1).any(axis=1))
    if wrong.size:
        raise BundleError(
            f"{bundle.path}: {backend} disagrees with the golden outputs on {wrong.size} of "
            f"{len(expected)} frames (first: frame {wrong[0]}): do not deploy it on this host"
        )


def verify(path: str | Path) -> Bundle:
    """:func:`load_bundle` plus the golden vectors through the simulator: the daemon's pre-swap check."""
    bundle = load_bundle(path)
    check_golden(bundle, lambda frames: Simulator(bundle.model).run(frames).outputs, "the simulator")
    return bundle
