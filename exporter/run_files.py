"""A run directory's files: the integer parameters (``params.npz`` + ``spec.json``, what ``edge-export export``
reads), checkpoints, the config and report, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_to_dict
from .qat import (
    IntegerLayer,
    ZeroAwareNet,
    integer_arrays,
)

PARAMS_FORMAT = "akida-v1-integer-params/1"


def layer_spec(layers: list[IntegerLayer]) -> list[dict[str, Any]]:
    """Hyper-parameters of each layer, enough to rebuild it with akida's Python API."""
    return [dict(layer.spec) for layer in layers]


def layers_from_arrays(arrays: dict[str, np.ndarray] | Any, specs: list[dict[str, Any]]) -> list[IntegerLayer]:
    """Inverse of :func:`exporter.qat.integer_arrays`, the ``params.npz`` layout (``<layer>.weights`` /
    ``.weights_pw`` / ``.threshold`` / ``.act_step`` in akida dtypes), with the run's ``spec.json`` layer
    list; ``arrays`` may be an open ``np.load`` result."""

    def get(key: str) -> np.ndarray | None:
        return np.asarray(arrays[key]) if key in arrays else None

    return [
        IntegerLayer(
            spec["kind"],
            np.asarray(arrays[f"{spec['name']}.weights"]),
            get(f"{spec['name']}.threshold"),
            get(f"{spec['name']}.act_step"),
            dict(spec),
            get(f"{spec['name']}.weights_pw"),
        )
        for spec in specs
    ]


def write_json(path: Path, payload: Any) -> None:
    """Atomic JSON write (temp file + os.replace), so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)


def save_checkpoint(
    path: Path, model: ZeroAwareNet, optimizer: torch.optim.Optimizer, config: Config, epoch: int
) -> None:
    """State dicts and the config only (loadable with ``torch.load(..., weights_only=True)``)."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": config_to_dict(config),
            "epoch": epoch,
        },
        tmp,
    )
    os.replace(tmp, path)


def write_run(
    out: Path,
    model: ZeroAwareNet,
    config: Config,
    layers: list[IntegerLayer],
    report: dict[str, Any],
    eval_scores: np.ndarray,
) -> None:
    """Everything the exporter needs: integer params + spec, golden scores, config, model, report."""
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = integer_arrays(layers)
    tmp = out / "params.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out / "params.npz")
    digest = hashlib.sha256((out / "params.npz").read_bytes()).hexdigest()
    np.save(out / "eval_scores.npy", eval_scores.astype(np.int32))
    write_json(
        out / "spec.json",
        {
            "format": PARAMS_FORMAT,
            "target": "AKD1000 (Akida 1.0)",
            "input": {
                "shape": list(config.model.input_shape),
                "dtype": "uint8",
                **({"bits": config.model.input_bits} if config.model.input_bits != 8 else {}),
            },
            "layers": layer_spec(layers),
            "params": {
                "file": "params.npz",
                "sha256": digest,
                "keys": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
            },
            "eval_scores": {"file": "eval_scores.npy", "images": "test split, first N in order", "n": len(eval_scores)},
            "seed": config.train.seed,
        },
    )
    write_json(out / "config.json", config_to_dict(config))
    torch.save({"model": model.state_dict(), "config": config_to_dict(config)}, out / "model.pt")
    write_json(out / "report.json", report)


# ---------------------------------------------------------------- the whole run
