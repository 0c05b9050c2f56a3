"""The bundle manifest's schema (frozen dataclasses) and its JSON form, sealed with its own SHA-256.

This module owns the schema, reading *and* writing, so the exporter and the runtime cannot drift
(docs/bundle.md). The manifest's claims about the model are checked against it by bundle.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import schema
from .akida_model import AkidaModel, Dense, InputData, Layer
from .energy_inputs import ModelMapping
from .errors import BundleError, DataError

FORMAT = "akida-edge-bundle"
FORMAT_VERSION = 2  # 2: per-device mappings and energy/latency model v2 figures
MANIFEST = "manifest.json"
FBZ, ONNX, GOLDEN = "model.fbz", "model.onnx", "golden.npz"
PAYLOAD_FILES = (FBZ, ONNX, GOLDEN)
DIGEST_KEY = "manifest_sha256"  # SHA-256 of the manifest's canonical JSON without this key


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


# --------------------------------------------------------------------------- from a model


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
    conv = None if isinstance(layer, Dense) else layer
    pool = getattr(layer, "pool", None)
    stored = layer.stored_weights
    return LayerSpec(
        name=layer.name,
        kind=layer_kind(layer),
        input_shape=layer.input_shape,
        output_shape=layer.output_shape,
        kernel=conv.kernel if conv is not None else None,
        stride=conv.stride if conv is not None else None,
        padding=conv.padding if conv is not None else None,
        pool=PoolSpec(pool.size, pool.stride) if pool is not None else None,
        input_bits=layer.input_bits,
        weights_bits=layer.weights_bits,
        act_bits=layer.act_bits,
        activation=layer.activation,
        weights=sum(int(w.size) for w in stored),
        nonzero_weights=sum(int(np.count_nonzero(w)) for w in stored),
        nps=dict(nps),
        global_avg_pool=conv is not None and conv.global_avg_pool,
        input_data_bits=input_data.input_bits if input_data is not None else None,
    )


def layer_specs(model: AkidaModel, nps: Callable[[str], dict[str, int]]) -> tuple[LayerSpec, ...]:
    """The manifest's layers of ``model``; ``nps(name)``: the NPs a layer occupies."""
    return tuple(
        layer_spec(layer, nps(layer.name), model.input_data if index == 0 else None)
        for index, layer in enumerate(model.layers)
    )


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
    body = {key: value for key, value in document.items() if key != DIGEST_KEY}
    errors: list[str] = []
    try:
        manifest = schema.parse(Manifest, body, schema.JSON, errors)
    except DataError as error:  # a mapping that fails its own checks
        errors.append(str(error))
    if errors:
        raise BundleError(f"{origin}: {'; '.join(errors)}: re-export the bundle")
    # Only the known payload files are ever opened: a name such as ../../etc/shadow or an absolute
    # path would make the loader read (and hash) files outside the bundle.
    foreign = sorted(set(manifest.files) - set(PAYLOAD_FILES))
    if foreign:
        raise BundleError(
            f"{origin}: files lists {', '.join(map(repr, foreign))}; a bundle holds only "
            f"{', '.join(PAYLOAD_FILES)}: re-export the bundle"
        )
    return manifest, actual
