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

This module owns the schema (reading *and* writing), so the exporter and the runtime cannot drift.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from .akida_model import AkidaModel, Dense, InputData, Layer, load_model
from .energy import ModelMapping
from .errors import BundleError, DataError, EdgeError
from .simulator import Simulator

FORMAT = "akida-edge-bundle"
FORMAT_VERSION = 2  # 2: per-device mappings and energy/latency model v2 figures
MANIFEST = "manifest.json"
FBZ, ONNX, GOLDEN = "model.fbz", "model.onnx", "golden.npz"
PAYLOAD_FILES = (FBZ, ONNX, GOLDEN)
DIGEST_KEY = "manifest_sha256"  # SHA-256 of the manifest's canonical JSON without this key
_GOLDEN_ARRAYS = ("frames", "outputs", "labels")


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class InputSpec:
    name: str  # the ONNX graph's input name
    shape: tuple[int, int, int]  # one frame in akida's order (X, Y, C); batches add a leading N
    dtype: str
    value_range: tuple[int, int]
    preprocessing: str  # how a raw sensor frame becomes this input


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int, int, int]
    dtype: str  # "int32" for potentials, "uint8" for activations
    kind: str  # "potentials" | "activations"
    labels: tuple[str, ...]  # one per output channel
    decision: str  # how to turn the output into a class


@dataclass(frozen=True)
class PoolSpec:
    size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class LayerSpec:
    name: str
    kind: str  # InputConvolutional | Convolutional | SeparableConvolutional | FullyConnected
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel: tuple[int, int] | None  # None for FullyConnected
    stride: tuple[int, int] | None
    padding: str | None
    pool: PoolSpec | None
    input_bits: int
    weights_bits: int
    act_bits: int
    activation: bool
    weights: int
    nonzero_weights: int
    nps: dict[str, int]  # neural processors this layer occupies on the target, by type
    # Optional fields (a default): written only when they differ from it, so the manifests of models
    # without them keep their bytes and every older bundle still parses.
    global_avg_pool: bool = False
    input_data_bits: int | None = None  # the first layer's InputData in front of it, if any


@dataclass(frozen=True)
class Target:
    device: str  # the device the model was mapped on at export, e.g. "AKD1000"
    ip_version: str  # "v1" = Akida 1.0
    nps: dict[str, int]  # distinct NPs by type over the whole model
    sequences: int
    passes: int


@dataclass(frozen=True)
class LayerMetrics:
    name: str
    input_events_per_frame: float
    nonzero_activations_per_frame: float  # output events: firing neurons (non-zero potentials if no activation)
    activation_density: float  # nonzero_activations_per_frame / neurons
    synaptic_ops_per_frame: float


@dataclass(frozen=True)
class EnergyMetrics:
    """Modelled per frame on one device (edge_runtime.energy, model v2), means over the metrics frames.

    ``total_j`` as akida's ``model.statistics`` prints it (floor power x host-inclusive frame time +
    dynamic, a long ``forward`` call); ``dynamic_j`` floor subtracted (the devhub's convention);
    ``chip_s`` on-chip latency of one frame; ``frame_s`` host-inclusive time per frame in a long call.
    ``*_one_per_call``: the same when every frame is its own ``forward`` call (no overlap, the whole
    per-call host overhead on each frame): what a daemon serving one frame at a time pays.
    """

    profile: str  # the device profile's version, e.g. "akd1000-v2"
    chip_s: float
    frame_s: float
    dynamic_j: float
    total_j: float
    frame_s_one_per_call: float
    total_j_one_per_call: float


@dataclass(frozen=True)
class Metrics:
    """Measured at export on ``frames`` frames of ``eval_set`` (the simulator's counters)."""

    eval_set: str
    frames: int
    accuracy: float | None  # None when the frames have no labels
    nonzero_activations_per_frame: float  # events between layers: outputs of every activated layer
    nonzero_weights: int
    weights: int
    layers: tuple[LayerMetrics, ...]
    energy: dict[str, EnergyMetrics]  # by device (edge_runtime.energy.DEVICES); empty if not modelled


@dataclass(frozen=True)
class Verification:
    """The checks the export passed."""

    backends: tuple[str, ...]  # every one gave identical outputs on every metrics frame
    outputs_sha256: str  # of the agreed outputs, little-endian bytes in frame order
    float32_max_abs: int  # the largest integer the ONNX graph computes with (< 2**24: exact)
    mapped_hw_only: bool  # the model mapped entirely on target.device's hardware


@dataclass(frozen=True)
class Training:
    run: str  # name of the run directory the parameters came from
    seed: int | None
    config: dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    format: str
    format_version: int
    name: str
    target: Target
    mappings: dict[str, ModelMapping]  # by device: where akida's mapper puts each layer (energy model input)
    input: InputSpec
    output: OutputSpec
    layers: tuple[LayerSpec, ...]
    files: dict[str, FileEntry]
    golden_frames: int
    training: Training
    toolchain: dict[str, str]  # package -> version used to build and verify the bundle
    metrics: Metrics
    verification: Verification
    # Optional (written only when given, so bundles without names keep their bytes and older ones
    # parse): one name per class, the classes being the decision's argmax over the flattened output.
    class_names: tuple[str, ...] | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """What to call each class: its name, or its index as text when the bundle names none."""
        if self.class_names is not None:
            return self.class_names
        return tuple(str(k) for k in range(int(np.prod(self.output.shape))))


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


def layer_kind(layer: Layer) -> str:
    """akida's name for the layer type, as the manifest records it."""
    return {
        "InputConv": "InputConvolutional",
        "Conv": "Convolutional",
        "SepConv": "SeparableConvolutional",
        "Dense": "FullyConnected",
    }[type(layer).__name__]


def layer_spec(layer: Layer, nps: dict[str, int], input_data: InputData | None = None) -> LayerSpec:
    """What the manifest says about one layer, derived from the model itself (``input_data``: the
    model's InputData, given with its first layer)."""
    conv = not isinstance(layer, Dense)
    pool = getattr(layer, "pool", None)
    stored = layer.stored_weights
    return LayerSpec(
        name=layer.name,
        kind=layer_kind(layer),
        input_shape=layer.input_shape,
        output_shape=layer.output_shape,
        kernel=layer.kernel if conv else None,
        stride=layer.stride if conv else None,
        padding=layer.padding if conv else None,
        pool=PoolSpec(pool.size, pool.stride) if pool is not None else None,
        input_bits=layer.input_bits,
        weights_bits=layer.weights_bits,
        act_bits=layer.act_bits,
        activation=layer.activation,
        weights=sum(int(w.size) for w in stored),
        nonzero_weights=sum(int(np.count_nonzero(w)) for w in stored),
        nps=dict(nps),
        global_avg_pool=conv and layer.global_avg_pool,
        input_data_bits=input_data.input_bits if input_data is not None else None,
    )


def layer_specs(model: AkidaModel, nps: Callable[[str], dict[str, int]]) -> tuple[LayerSpec, ...]:
    """The manifest's layers of ``model``; ``nps(name)``: the NPs a layer occupies."""
    return tuple(
        layer_spec(layer, nps(layer.name), model.input_data if index == 0 else None)
        for index, layer in enumerate(model.layers)
    )


def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------- JSON <-> dataclasses


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a manifest document with its digest (re)computed over everything else."""
    body = {key: value for key, value in document.items() if key != DIGEST_KEY}
    return {**body, DIGEST_KEY: hashlib.sha256(_canonical(body)).hexdigest()}


def manifest_document(manifest: Manifest) -> dict[str, Any]:
    """The manifest as JSON-ready data, sealed with its own digest; optional fields at their default left out."""
    document = dataclasses.asdict(manifest)
    defaults = {f.name: f.default for f in fields(LayerSpec) if f.default is not dataclasses.MISSING}
    document["layers"] = [
        {key: value for key, value in layer.items() if key not in defaults or value != defaults[key]}
        for layer in document["layers"]
    ]
    if manifest.class_names is None:
        del document["class_names"]
    return seal(document)


def class_names_problem(names: tuple[str, ...], classes: int) -> str | None:
    """Why ``names`` cannot name ``classes`` classes (count, empty, repeated, multi-line), or None."""
    if len(names) != classes:
        return f"{len(names)} class names for {classes} classes"
    bad = next((name for name in names if not name.strip() or "\n" in name), None)
    if bad is not None:
        return f"class name {bad!r} is empty or spans lines"
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        return f"class name {repeated!r} appears twice"
    return None


def _readable(value: Any, depth: int = 0) -> str:
    """JSON for people: one key per line, but shapes and other lists of scalars on one line."""
    pad, end = "  " * (depth + 1), "\n" + "  " * depth
    if isinstance(value, dict) and value:
        items = (f"{pad}{json.dumps(key)}: {_readable(item, depth + 1)}" for key, item in value.items())
        return "{\n" + ",\n".join(items) + end + "}"
    if isinstance(value, list | tuple) and any(isinstance(item, dict | list | tuple) for item in value):
        return "[\n" + ",\n".join(pad + _readable(item, depth + 1) for item in value) + end + "]"
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


def write_manifest(directory: Path, manifest: Manifest) -> str:
    """Write ``manifest.json`` in the schema's field order; return its digest."""
    document = manifest_document(manifest)
    (directory / MANIFEST).write_text(_readable(document) + "\n", encoding="utf-8")
    return document[DIGEST_KEY]


class _SchemaError(Exception):
    """A manifest field of the wrong shape; turned into one BundleError naming the file."""


def _parse(kind: Any, value: Any, where: str) -> Any:
    """Build ``kind`` (a dataclass or typing form used by the schema) from JSON, strictly."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return _parse(inner, value, where)
    if dataclasses.is_dataclass(kind):
        return _parse_dataclass(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _SchemaError(f"{where} must be a list, got {type(value).__name__}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise _SchemaError(f"{where} must have {len(items)} items, got {len(value)}")
        return tuple(_parse(item, v, f"{where}[{i}]") for i, (item, v) in enumerate(zip(items, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} must be an object, got {type(value).__name__}")
        return {key: _parse(args[1], v, f"{where}.{key}") for key, v in value.items()}
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise _SchemaError(f"{where} must be {getattr(kind, '__name__', kind)}, got {json.dumps(value)[:40]}")


def _parse_dataclass(kind: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _SchemaError(f"{where} must be an object, got {type(value).__name__}")
    hints = get_type_hints(kind)
    names = [f.name for f in fields(kind)]
    unknown = sorted(set(value) - set(names))
    missing = [f.name for f in fields(kind) if f.name not in value and f.default is dataclasses.MISSING]
    if unknown or missing:
        parts = ([f"unknown {', '.join(unknown)}"] if unknown else []) + (
            [f"missing {', '.join(missing)}"] if missing else []
        )
        raise _SchemaError(f"{where or 'manifest'}: {'; '.join(parts)}")
    prefix = f"{where}." if where else ""
    return kind(**{name: _parse(hints[name], value[name], f"{prefix}{name}") for name in names if name in value})


def parse_manifest(document: Any, origin: str) -> tuple[Manifest, str]:
    """Check format, version and digest, then build the Manifest; return it with its digest."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"{origin}: not an {FORMAT} manifest (format {found!r})")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        advice = (
            "upgrade akida-edge on this host"
            if isinstance(version, int) and version > FORMAT_VERSION
            else "re-export the bundle with `edge-export export`"
        )
        raise BundleError(f"{origin}: bundle format version {version!r}, this runtime reads {FORMAT_VERSION}: {advice}")
    try:
        actual = seal(document)[DIGEST_KEY]
    except ValueError:  # NaN or infinity: never written by the exporter
        actual = ""
    if document.get(DIGEST_KEY) != actual:
        raise BundleError(
            f"{origin}: altered after export (its content does not match its {DIGEST_KEY}): "
            "re-copy the bundle or re-export it"
        )
    try:
        body = {key: value for key, value in document.items() if key != DIGEST_KEY}
        manifest = _parse_dataclass(Manifest, body, "")
    except (_SchemaError, DataError) as error:  # DataError: a mapping that fails its own checks
        raise BundleError(f"{origin}: {error}: re-export the bundle") from None
    # Only the known payload files are ever opened: a name such as ../../etc/shadow or an absolute
    # path would make the loader read (and hash) files outside the bundle.
    foreign = sorted(set(manifest.files) - set(PAYLOAD_FILES))
    if foreign:
        raise BundleError(
            f"{origin}: files lists {', '.join(map(repr, foreign))}; a bundle holds only "
            f"{', '.join(PAYLOAD_FILES)}: re-export the bundle"
        )
    return manifest, actual


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
