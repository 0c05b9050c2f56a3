"""Random Akida 1.0 models and frames, built with akida's own API, for tests against its engine.

Reusable by any test that needs engine-valid Akida 1.0 models (simulator, exporter, bundles).
Only configurations akida 2.19.3's software engine accepts are generated; the limits it enforces,
found by probing, are:

* weights: 8-bit in [-128, 127] (input layer), 4-bit in [-7, 7], 2-bit in [-1, 1], 1-bit in [0, 1];
* act_bits 1, 2 or 4; act_step >= 1/16 (the engine refuses less); kernels odd;
  pool stride <= pool size; a layer without activation can only be the last one;
* the first layer is an InputConvolutional (8-bit pixels) or an InputData (1, 2 or 4-bit values,
  frames in that range), which needs a layer after it;
* pooling is max pooling (size, stride) or global average pooling (``PoolType.Average`` with no size);
* a SeparableConvolutional has depthwise ``weights`` (KX, KY, C, 1) and pointwise ``weights_pw``
  (1, 1, C, F), both in its ``weights_bits`` range.

act_step values are arbitrary float32 (not round numbers): that is what exposes the engine's
fixed-point activation rule. A share of models get extreme thresholds and steps, which make the
engine's 32-bit arithmetic wrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import akida
import numpy as np

WEIGHT_RANGE = {1: (0, 1), 2: (-1, 1), 4: (-7, 7), 8: (-128, 127)}
MAX_ACT_STEP = 1048575.0  # the largest act_step akida documents ("between 0 and 1048575")


@dataclass(frozen=True)
class Draw:
    """What a random model may use, at test-friendly sizes.

    The defaults draw the models this generator always drew (InputConvolutional first, Convolutional
    kernels 1/3/5, max pooling), from the same random stream, so existing seeded tests keep their
    models; :data:`EVERY_KIND` adds InputData, SeparableConvolutional, global average pooling and
    7x7 Convolutional kernels (a share of 0 draws nothing from the stream)."""

    max_extra_layers: int = 3
    max_side: int = 14
    max_filters: int = 8
    extreme_share: float = 0.1  # models with int32-range thresholds and huge act_steps
    input_data_share: float = 0.0  # models that start with InputData instead of InputConvolutional
    separable_share: float = 0.0  # convolutional layers after the first that are SeparableConvolutional
    global_pool_share: float = 0.0  # convolutional layers with global average pooling
    conv_kernels: tuple[int, ...] = (1, 3, 5)  # Convolutional kernel sides (SeparableConvolutional: 3, 5, 7)
    weights_bits: tuple[int, ...] = (1, 2, 4)  # of the layers after the first (the software engine also takes 8)


EVERY_KIND = Draw(
    input_data_share=0.3,
    separable_share=0.4,
    global_pool_share=0.15,
    conv_kernels=(1, 3, 5, 7),
    weights_bits=(1, 2, 4, 8),
)


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


def _pair(rng: np.random.Generator, options: list[int], square_share: float = 0.8) -> tuple[int, int]:
    first = int(_pick(rng, options))
    return (first, first) if rng.random() < square_share else (first, int(_pick(rng, options)))


def _strides(rng: np.random.Generator, kernel: tuple[int, int]) -> tuple[int, int]:
    """1 or 2 per axis, never above the kernel (the engine refuses strides > kernel size)."""
    stride = _pair(rng, [1, 2])
    return (min(stride[0], kernel[0]), min(stride[1], kernel[1]))


def _pool_args(rng: np.random.Generator, global_share: float = 0.0) -> dict:
    if global_share and rng.random() < global_share:
        return {"pool_type": akida.PoolType.Average}
    if rng.random() < 0.5:
        return {}
    size = _pair(rng, [1, 2, 3])
    stride = tuple(int(rng.integers(1, s + 1)) for s in size)
    return {"pool_type": akida.PoolType.Max, "pool_size": size, "pool_stride": stride}


def _valid_fits(side: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], pool: dict) -> bool:
    """Whether 'valid' windows (conv, then pool) leave at least one output; akida refuses the layer otherwise."""
    for axis in (0, 1):
        out = (side[axis] - kernel[axis]) // stride[axis] + 1
        if out < 1 or out < pool.get("pool_size", (1, 1))[axis]:
            return False
    return True


def _input_layer(rng: np.random.Generator, draw: Draw) -> tuple[akida.Layer, int]:
    """(first layer, how many layers follow it): an InputConvolutional (kernels 3/5/7, strides,
    same/valid, padding value, pools, 1 or 3 channels) or, with ``draw.input_data_share``, an
    InputData of 1/2/4 bits, which needs a layer after it."""
    side_x, side_y = (int(v) for v in rng.integers(4, draw.max_side + 1, 2))
    if draw.input_data_share and rng.random() < draw.input_data_share:
        extra = max(int(rng.integers(0, draw.max_extra_layers + 1)), 1)
        layer = akida.InputData(
            input_shape=(side_x, side_y, int(rng.integers(1, 5))),
            input_bits=int(_pick(rng, [1, 2, 4])),
            name="input_data",
        )
        return layer, extra
    padding = _pick(rng, [akida.Padding.Same, akida.Padding.Valid])
    kernel = _pair(rng, [3, 5, 7])
    if padding == akida.Padding.Valid:
        side_x, side_y = side_x + kernel[0], side_y + kernel[1]
    extra = int(rng.integers(0, draw.max_extra_layers + 1))
    layer = akida.InputConvolutional(
        input_shape=(side_x, side_y, int(_pick(rng, [1, 3]))),
        kernel_size=kernel,
        filters=int(rng.integers(1, draw.max_filters + 1)),
        name="input_conv",
        padding=padding,
        kernel_stride=_strides(rng, kernel),
        weights_bits=8,
        act_bits=int(_pick(rng, [1, 2, 4])),
        padding_value=int(rng.integers(0, 256)),
        activation=extra > 0 or rng.random() < 0.7,
        **_pool_args(rng, draw.global_pool_share),
    )
    return layer, extra


def _conv_layer(
    rng: np.random.Generator, draw: Draw, index: int, side: tuple[int, int], activation: bool
) -> akida.Layer:
    """A Convolutional or SeparableConvolutional, stride 1/2, same/valid, max or global average pooling."""
    separable = bool(draw.separable_share) and rng.random() < draw.separable_share
    kernel = _pair(rng, [3, 5, 7] if separable else list(draw.conv_kernels))
    stride = _strides(rng, kernel)
    pool = _pool_args(rng, draw.global_pool_share)
    padding = akida.Padding.Valid if rng.random() < 0.3 else akida.Padding.Same
    if padding == akida.Padding.Valid and not _valid_fits(side, kernel, stride, pool):
        padding = akida.Padding.Same
    kind = akida.SeparableConvolutional if separable else akida.Convolutional
    return kind(
        kernel_size=kernel,
        filters=int(rng.integers(1, draw.max_filters + 1)),
        name=f"{'separable' if separable else 'conv'}_{index}",
        padding=padding,
        kernel_stride=stride,
        weights_bits=int(_pick(rng, list(draw.weights_bits))),
        act_bits=int(_pick(rng, [1, 2, 4])),
        activation=activation,
        **pool,
    )


def random_model(rng: np.random.Generator, draw: Draw = Draw()) -> akida.Model:
    """A random sequential Akida 1.0 model with random variables; the engine accepts all of it."""
    model = akida.Model()
    first, extra = _input_layer(rng, draw)
    model.add(first)
    dense_started = False
    for index in range(extra):
        last = index == extra - 1
        activation = not last or rng.random() < 0.5
        x, y, _ = model.layers[-1].output_dims
        if not dense_started and x * y > 1 and rng.random() < 0.6:
            layer = _conv_layer(rng, draw, index, (x, y), activation)
        else:
            dense_started = True
            layer = akida.FullyConnected(
                units=int(rng.integers(1, 2 * draw.max_filters + 1)),
                name=f"dense_{index}",
                weights_bits=int(_pick(rng, list(draw.weights_bits))),
                act_bits=int(_pick(rng, [1, 2, 4])),
                activation=activation,
            )
        model.add(layer)
    extreme = rng.random() < draw.extreme_share
    for layer in model.layers:
        if layer.parameters.layer_type != akida.LayerType.InputData:
            set_random_variables(rng, layer, extreme)
    return model


def set_random_variables(rng: np.random.Generator, layer: akida.Layer, extreme: bool = False) -> None:
    """Random weights (with random sparsity), thresholds and arbitrary float32 act_steps.

    Thresholds and steps are scaled to the layer's typical potential so that outputs spread over
    every activation level instead of saturating at 0 or at the top.
    """
    params = layer.parameters
    low, high = WEIGHT_RANGE[params.weights_bits]
    names = ("weights", "weights_pw") if params.layer_type == akida.LayerType.SeparableConvolutional else ("weights",)
    for name in names:
        shape = layer.variables[name].shape
        weights = rng.integers(low, high + 1, size=shape)
        weights[rng.random(shape) < rng.uniform(0, 0.7)] = 0
        layer.variables[name] = weights.astype(np.int8)
    filters = layer.variables["threshold"].size
    fan_in = int(np.prod(layer.variables["weights"].shape[:-1]))  # a separable layer's: taps x channels
    if params.layer_type != akida.LayerType.FullyConnected and params.pool_type == 2:  # PoolType.Average
        x, y, _ = layer.input_dims  # its potential sums about this many positions
        fan_in *= max(x // params.stride_x * (y // params.stride_y), 1)
    input_mean = (2**layer.input_bits - 1) / 4
    scale = max(np.sqrt(fan_in) * max(abs(low), high) * input_mean / 2, 1.0)
    if extreme:
        threshold = rng.integers(-(2**31), 2**31 - 1, filters, dtype=np.int64)
        act_step = np.exp(rng.uniform(np.log(1 / 16), np.log(MAX_ACT_STEP), filters))
    else:
        threshold = np.round(rng.uniform(-scale, 2 * scale, filters))
        act_step = np.maximum(scale / 8 * np.exp(rng.uniform(-1, 2.5, filters)), 1 / 16)
    layer.variables["threshold"] = threshold.astype(np.int32)
    layer.variables["act_step"] = act_step.astype(np.float32)


def model_frames(rng: np.random.Generator, model: akida.Model, n: int) -> np.ndarray:
    """n noise frames then n digit-like ones, in the value range of the model's input layer
    (0..255 for an InputConvolutional, 0..2**bits - 1 for an InputData: the top bits of the pixels)."""
    shape = tuple(model.input_shape)
    frames = np.concatenate([random_frames(rng, n, shape), mnist_like(rng, n, shape)])
    first = model.layers[0].parameters
    if first.layer_type == akida.LayerType.InputData:
        frames >>= 8 - int(first.input_bits)
    return frames


def random_frames(rng: np.random.Generator, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Uniform noise, with a random share of pixels zeroed (so input events vary too)."""
    frames = rng.integers(0, 256, size=(n, *shape))
    frames[rng.random(frames.shape) < rng.uniform(0, 0.9)] = 0
    return frames.astype(np.uint8)


def mnist_like(rng: np.random.Generator, n: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Digit-like frames: a few thick bright strokes with soft edges on a black background."""
    x_size, y_size, channels = shape
    grid_x, grid_y = np.meshgrid(np.arange(x_size), np.arange(y_size), indexing="ij")
    frames = np.zeros((n, x_size, y_size), dtype=np.float64)
    for frame in frames:
        for _ in range(int(rng.integers(1, 4))):
            (ax, bx), (ay, by) = rng.uniform(0, x_size, 2), rng.uniform(0, y_size, 2)
            along = (grid_x - ax) * (bx - ax) + (grid_y - ay) * (by - ay)
            t = np.clip(along / max((bx - ax) ** 2 + (by - ay) ** 2, 1e-9), 0, 1)
            distance = np.hypot(grid_x - (ax + t * (bx - ax)), grid_y - (ay + t * (by - ay)))
            width = rng.uniform(0.6, 1.6) * max(x_size, y_size) / 14
            np.maximum(frame, np.clip(1.5 - distance / width, 0, 1), out=frame)
    pixels = np.round(frames * 255).astype(np.uint8)
    return np.repeat(pixels[..., None], channels, axis=-1)


def saturating_models() -> list[tuple[str, akida.Model, np.ndarray]]:
    """Hand-built models whose potentials leave the engine's 20 bits, with frames that make them."""
    built = []
    for kind in (akida.Convolutional, akida.SeparableConvolutional):
        model = akida.Model()
        model.add(akida.InputData(input_shape=(16, 16, 64), input_bits=4, name="data"))
        model.add(
            kind(
                kernel_size=(1, 1),
                filters=2,
                weights_bits=4,
                act_bits=4,
                name="gap",
                activation=False,
                pool_type=akida.PoolType.Average,
            )
        )
        weights = np.full((1, 1, 64, 2), 7, np.int8)
        weights[0, 0, 32:, 0] = -7  # filter 0: + on channels < 32, - above
        layer = model.layers[1]
        if kind is akida.SeparableConvolutional:
            layer.variables["weights"] = np.ones((1, 1, 64, 1), np.int8)
            layer.variables["weights_pw"] = weights
        else:
            layer.variables["weights"] = weights
        frames = np.zeros((2, 16, 16, 64), np.uint8)
        frames[0, :12, :, :32], frames[0, 12:, :, 32:] = 15, 15  # positives first (x slowest), then negatives
        frames[1, :, :12, :32], frames[1, :, 12:, 32:] = 15, 15  # the same split along y
        built.append((kind.__name__, model, frames))
    model = akida.Model()
    model.add(akida.InputData(input_shape=(100, 60, 1), input_bits=4, name="data"))
    model.add(akida.FullyConnected(units=2, weights_bits=4, act_bits=4, name="dense"))
    weights = np.full((1, 1, 6000, 2), 7, np.int8)
    weights[0, 0, 5000:, 1] = -7
    model.layers[1].variables["weights"] = weights
    model.layers[1].variables["threshold"] = np.array([600_000, 300_000], np.int32)
    model.layers[1].variables["act_step"] = np.array([1000, 1000], np.float32)
    built.append(("FullyConnected", model, np.full((1, 100, 60, 1), 15, np.uint8)))
    return built
