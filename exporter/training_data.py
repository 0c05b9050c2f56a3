"""The trainer's view of a data set: uint8 frames as channels-first tensors, cut to the config's limits,
checked against the configured network before any training starts (``exporter.datasets`` loads them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edge_runtime.errors import ConfigError

from . import datasets, run_data
from .config import Config, ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Data:
    """Frames as uint8 tensors (N, C, X, Y) (akida's (X, Y, C) frames, channels first); labels int64 (N,);
    what the data set says about itself."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int = 10
    class_names: tuple[str, ...] | None = None  # None: none given (shown as 0..classes-1)
    source: str = "mnist"
    preprocessing: str = datasets.MNIST_PREPROCESSING

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One frame in akida's layout (X, Y, C) = (H, W, C): what the network's input must take."""
        _, c, h, w = self.train_x.shape
        return (h, w, c)

    def run_data(self) -> run_data.RunData:
        """What the run directory records about the data (MNIST's test frames are in its cache)."""
        frames = None if self.source == "mnist" else self.test_x.numpy().transpose(0, 2, 3, 1)
        labels = None if frames is None else self.test_y.numpy()
        return run_data.RunData(
            self.source, self.input_shape, self.classes, self.class_names, self.preprocessing, frames, labels
        )


def load_data(config: Config) -> Data:
    """``[data] source`` (exporter/datasets.py, checked), cut to the configured limits (tests train on small slices)."""
    d = config.data
    dataset = datasets.load_dataset(d.source, Path(d.cache_dir) if d.cache_dir else None, d.class_names)
    data = data_from_arrays(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, d.train_limit, d.test_limit
    )
    log.info(
        "data %s: %d training and %d test frames of %s, %d classes",
        dataset.source,
        len(data.train_y),
        len(data.test_y),
        "x".join(map(str, dataset.input_shape)),
        dataset.classes,
    )
    return replace(
        data,
        classes=dataset.classes,
        class_names=dataset.class_names,
        source=dataset.source,
        preprocessing=dataset.preprocessing,
    )


def data_from_arrays(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    train_limit: int = 0,
    test_limit: int = 0,
) -> Data:
    """Frames (N, H, W) or (N, H, W, C) to the trainer's (N, C, H, W) tensors, cut to the limits."""

    def images(a: np.ndarray, limit: int) -> Tensor:
        a = a[: limit or None]
        a = a[..., np.newaxis] if a.ndim == 3 else a
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def labels(a: np.ndarray, limit: int) -> Tensor:
        return torch.from_numpy(a[: limit or None].astype(np.int64))

    return Data(
        images(train_x, train_limit),
        labels(train_y, train_limit),
        images(test_x, test_limit),
        labels(test_y, test_limit),
    )


def check_frames(data: Data, model_config: ModelConfig) -> None:
    """ConfigError (one line) unless the data's frames have the network's input shape."""
    _, c, x, y = data.train_x.shape
    if (x, y, c) != tuple(model_config.input_shape):
        raise ConfigError(
            f"the data's frames are {x}x{y}x{c} (X x Y x C) but model.input_shape is "
            f"{'x'.join(map(str, model_config.input_shape))}: choose data of that shape or change the network"
        )
    outputs = model_config.architecture().layers[-1].width
    if data.classes != outputs:
        raise ConfigError(
            f"data.source {data.source}: {data.classes} classes, but the network's last layer has {outputs} "
            "outputs: set its units to the number of classes"
        )
    top = 2**model_config.input_bits - 1
    for name, frames in (("training", data.train_x), ("test", data.test_x)):
        if model_config.input_bits < 8 and len(frames) and int(frames.max()) > top:
            raise ConfigError(
                f"the {name} frames hold values up to {int(frames.max())} but model.input_bits is "
                f"{model_config.input_bits} (values 0..{top}): quantise the frames or raise input_bits"
            )
