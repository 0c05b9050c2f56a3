"""A run directory written by ``edge-export train`` (spec.json + params.npz) back into an AkidaModel."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.akida_model import AkidaModel, Conv, Dense, InputConv, InputData, Layer, MaxPool, SepConv
from edge_runtime.akida_rules import window_geometry
from edge_runtime.errors import ModelError
from edge_runtime.manifest import Training

RUN_FORMAT = "akida-v1-integer-params/1"  # spec.json written by exporter.train


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """What the exporter takes from a run directory written by ``edge-export train``."""

    model: AkidaModel
    training: Training
    eval_scores: np.ndarray | None  # the run's own outputs on the first N test frames (int32 (N, classes))


def _read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    out: np.ndarray = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def _conv_geometry(
    shape: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: Any,
    filters: int,
    pool: MaxPool | None,
    global_pool: bool = False,
) -> tuple[int, int, int]:
    """Output shape of a conv layer (after pooling), with the simulator's window rules."""
    x, y = (window_geometry(shape[a], kernel[a], stride[a], padding)[0] for a in (0, 1))
    if global_pool:
        return (1, 1, filters)
    if pool is not None:
        x, y = (window_geometry((x, y)[a], pool.size[a], pool.stride[a], padding)[0] for a in (0, 1))
    return (x, y, filters)


def model_from_spec(
    layers: Sequence[Mapping[str, Any]],
    input_shape: Sequence[int],
    arrays: Mapping[str, np.ndarray],
    input_bits: int = 8,
) -> AkidaModel:
    """Build the AkidaModel a run describes: layer hyper-parameters from ``spec.json`` and
    ``<name>.weights|weights_pw|threshold|act_step`` arrays in akida's layouts (FC weights
    (1, 1, inputs, units); a SeparableConvolutional's depthwise (KX, KY, C, 1) and pointwise
    ``weights_pw`` (1, 1, C, F)). A pool is ``{"type": "max", "size", "stride"}``,
    ``{"type": "global_average"}`` or null. Layers without activation may omit threshold and act_step
    (akida's defaults, 0 and 1, are used). ``input_bits`` below 8 puts an InputData of that many bits
    in front of the first layer (which is then not an InputConvolutional)."""
    shape: tuple[int, int, int] = tuple(int(v) for v in input_shape)  # type: ignore[assignment]  # (x, y, c)
    input_data = InputData("input", shape, input_bits) if input_bits < 8 else None
    built: list[Layer] = []
    for spec in layers:
        name = spec["name"]
        weights = np.asarray(arrays[f"{name}.weights"])
        pointwise = np.asarray(arrays[f"{name}.weights_pw"]) if spec["kind"] == "SeparableConvolutional" else None
        units = int((weights if pointwise is None else pointwise).shape[-1])
        common: dict[str, Any] = {
            "name": name,
            "input_shape": shape,
            "threshold": _read_only(arrays.get(f"{name}.threshold", np.zeros(units)), np.int32),
            "act_step": _read_only(arrays.get(f"{name}.act_step", np.ones(units)), np.float32),
            "act_bits": int(spec.get("act_bits", 1)),  # 1: akida's default, for a layer that does not fire
            "weights_bits": int(spec["weights_bits"]),
            "input_bits": input_bits,
            "activation": bool(spec["activation"]),
        }
        if spec["kind"] == "FullyConnected":
            layer: Layer = Dense(
                weights=_read_only(weights.reshape(-1, units), np.int8), output_shape=(1, 1, units), **common
            )
        else:
            pool_spec = spec.get("pool") or {}
            pool_type = pool_spec.get("type", "max") if pool_spec else None
            if pool_type not in (None, "max", "global_average"):
                raise ModelError(
                    f"layer '{name}': {pool_type} pooling; Akida 1.0 layers max-pool or global-average-pool"
                )
            global_pool = pool_type == "global_average"
            pool = MaxPool(tuple(pool_spec["size"]), tuple(pool_spec["stride"])) if pool_type == "max" else None
            kernel, stride = tuple(spec["kernel_size"]), tuple(spec.get("kernel_stride", (1, 1)))
            padding = spec.get("padding", "same")
            conv = {
                "weights": _read_only(weights, np.int8),
                "kernel": kernel,
                "stride": stride,
                "padding": padding,
                "pool": pool,
                "global_avg_pool": global_pool,
                "output_shape": _conv_geometry(shape, kernel, stride, padding, units, pool, global_pool),
            }
            if spec["kind"] == "InputConvolutional":
                layer = InputConv(padding_value=int(spec.get("padding_value", 0)), **common, **conv)
            elif spec["kind"] == "Convolutional":
                layer = Conv(**common, **conv)
            elif spec["kind"] == "SeparableConvolutional" and pointwise is not None:
                layer = SepConv(weights_pw=_read_only(pointwise, np.int8), **common, **conv)
            else:
                raise ModelError(f"layer '{name}': unknown kind {spec['kind']!r}")
        built.append(layer)
        shape, input_bits = layer.output_shape, layer.act_bits
    return AkidaModel(tuple(built), input_data)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; is {path.parent} a run directory written by `edge-export train`?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable ({error})") from None


def load_run(run_dir: Path) -> TrainedRun:
    """Read ``spec.json`` + ``params.npz`` (hash-checked), ``config.json`` and the recorded test scores."""
    spec = _read_json(run_dir / "spec.json")
    if not isinstance(spec, dict) or spec.get("format") != RUN_FORMAT:
        raise ModelError(f"{run_dir / 'spec.json'}: not a run spec of format {RUN_FORMAT}")
    try:
        params, digest = run_dir / spec["params"]["file"], spec["params"]["sha256"]
        layers, input_shape = spec["layers"], spec["input"]["shape"]
    except (KeyError, TypeError):
        raise ModelError(
            f"{run_dir / 'spec.json'}: incomplete (needs params.file, params.sha256, layers, input.shape)"
        ) from None
    if not params.is_file():
        raise ModelError(f"{params}: missing; the run directory is incomplete")
    if hashlib.sha256(params.read_bytes()).hexdigest() != digest:
        raise ModelError(f"{params}: does not match the SHA-256 in spec.json; the run directory was altered")
    try:
        with np.load(params, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
            model = model_from_spec(layers, input_shape, arrays, int(spec["input"].get("bits", 8)))
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{run_dir}: spec.json and params.npz do not describe a model ({error!r})") from None
    scores_file = run_dir / spec.get("eval_scores", {}).get("file", "eval_scores.npy")
    scores = np.load(scores_file, allow_pickle=False) if scores_file.is_file() else None
    config = _read_json(run_dir / "config.json")
    return TrainedRun(model, Training(run_dir.name, spec.get("seed"), config), scores)
