"""NumPy simulator of Akida 1.0 inference, bit-exact with akida's software engine.

Each layer integrates its input into integer potentials, max-pools the potentials and fires with
Akida 1.0's activation rule; the integer semantics are pinned by tests against ``akida.Model.forward``
and written up in docs/akida-semantics.md. Alongside, every layer's events and synaptic operations
are counted exactly (:mod:`edge_runtime.counters`), because those counts, not the arithmetic, are
what the chip's energy follows.

Why the integration is an im2col matrix product and not a scatter of events. On the chip a layer
does work per event (non-zero input). We measured event-driven NumPy formulations against a dense
im2col product on the MNIST model's Conv layer (14x14x32 -> 3x3 stride 2 -> 7x7x64) at 10/20/30 %
non-zero inputs:

* scattering only the events into the receptive-field matrix, then one product with the weight
  patches: 58/77/100 us per frame at batch 1, 5.2/10.6/11.1 ms per 100 frames;
* true per-event accumulation (gather each event's weight patch, ``np.add.at`` into the
  potentials): 1.1/1.6/2.5 ms per frame, 95-305 ms per 100 frames;
* dense im2col (gather every receptive field, including zeros, then one float32 BLAS product):
  39 us per frame and 4.5 ms per 100 frames at every density.

NumPy moves an element through fancy indexing 20-50x slower than BLAS does a multiply-add, so at
10-30 % density touching only events does not pay. Zeros add nothing to a sum, so the dense product
gives the same potentials, and the event counts do not come from the product: they come from the
event masks times per-input fan-out tables built once per layer, so they are exact whatever the
arithmetic does. A FullyConnected layer's event matrix is its input vector itself, so it is one
product as well.

Why float arithmetic is exact. Potentials are sums of integer products; a float32 product is exact
while every partial sum stays below 2**24 in magnitude, which each layer checks once from its
weights and its input range (float64, exact to 2**53, otherwise). The firing rule has a fast float
path whose exactness conditions are checked the same way, and an integer path that reproduces the
engine's 32-bit wrap-around for the (absurd) thresholds where that path could differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .akida_model import AkidaModel, Conv, Dense, InputConv, Layer, MaxPool, Padding
from .counters import Counters, LayerCounters, concatenate
from .errors import DataError, ModelError

FLOAT32_EXACT = 2**24  # integers up to this are exact in float32, and so are sums that stay below it
_FAST_MAX_T16 = 2**21  # act_step * 16 below this keeps a float32 quotient from crossing an integer


def window_geometry(size: int, window: int, stride: int, padding: Padding) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of a sliding window along one axis.

    'same' gives ceil(size / stride) outputs and puts the odd extra padding after (bottom/right);
    'valid' gives floor((size - window) / stride) + 1 and no padding.
    """
    if padding == "valid":
        return (size - window) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return out, total // 2, total - total // 2


def fire(potentials: np.ndarray, threshold: np.ndarray, act_step: np.ndarray, act_bits: int) -> np.ndarray:
    """Akida 1.0's activation, as akida's engine computes it (integer reference; see ``_Firing``).

    With ``t16 = floor(float64(act_step) * 16)`` and ``d = int32(pot - threshold)``:
    ``d <= 0 -> 0``, else ``min(uint32(((d << 4) - 1) << act_bits) // uint32(t16 << 4) + 1, 2**act_bits - 1)``,
    every step in wrapping 32-bit arithmetic. Without wrap-around this equals
    ``clip(ceil((pot - threshold) * 2**act_bits / t16), 0, 2**act_bits - 1)``.
    """
    t16 = np.floor(act_step.astype(np.float64) * 16).astype(np.int64)
    d = (potentials.astype(np.int64) - threshold.astype(np.int64)).astype(np.int32)
    numerator = (d.view(np.uint32) << np.uint32(4 + act_bits)) - np.uint32(1 << act_bits)
    quotient = numerator // (t16 << 4).astype(np.uint32) + np.uint32(1)
    top = np.uint32(2**act_bits - 1)
    return np.where(d > 0, np.minimum(quotient, top), np.uint32(0)).astype(np.uint8)


class _Firing:
    """The activation of one layer: a float32 fast path when provably equal to :func:`fire`.

    The fast path computes ``ceil((pot - threshold) / (t16 / 2**act_bits))`` in float32. It equals the
    engine's integer rule when potentials are exact float32 integers, ``|threshold| < 2**24`` (so
    ``pot - threshold`` is exact wherever the result is not saturated), ``t16 < 2**21`` (a non-integer
    quotient below 16 is at least ``1 / t16`` from an integer, more than float32's rounding error there)
    and no potential can make the engine's 32-bit numerator wrap. It is 10x faster than the integer
    rule (0.5 ms vs 5 ms for 100 MNIST frames of the first layer).
    """

    def __init__(self, layer: Layer, max_potential: np.ndarray, exact_float32: bool) -> None:
        self.threshold = layer.threshold
        self.act_step = layer.act_step
        self.act_bits = layer.act_bits
        self.top = 2**layer.act_bits - 1
        t16 = np.floor(layer.act_step.astype(np.float64) * 16)
        margin = max_potential.astype(np.int64) - layer.threshold.astype(np.int64)
        self.fast = bool(
            exact_float32
            and np.all(np.abs(layer.threshold.astype(np.int64)) < FLOAT32_EXACT)
            and np.all(t16 < _FAST_MAX_T16)
            and np.all((16 * margin - 1) << layer.act_bits < 2**32)
        )
        self.float_threshold = layer.threshold.astype(np.float32)
        self.float_step = (t16 / 2**layer.act_bits).astype(np.float32)  # exact: t16 < 2**24, power-of-two scale

    def __call__(self, potentials: np.ndarray) -> np.ndarray:
        if not self.fast:
            return fire(potentials, self.threshold, self.act_step, self.act_bits)
        q = potentials - self.float_threshold
        q /= self.float_step
        np.ceil(q, out=q)
        np.clip(q, 0, self.top, out=q)
        return q.astype(np.uint8)


class _ConvIntegrator:
    """Potentials of an InputConv or Conv layer, pre-pooling: im2col gather + one matrix product.

    A Conv is a true convolution, so its kernel is flipped once here and both kinds then
    cross-correlate. ``fanout`` holds, per input (C-order over X, Y, C), how many non-zero weights
    its event is multiplied by (kernel offsets that reach an output times non-zero filters).
    """

    def __init__(self, layer: InputConv | Conv) -> None:
        (x, y, c), (kx, ky), (sx, sy) = layer.input_shape, layer.kernel, layer.stride
        ox, px0, px1 = window_geometry(x, kx, sx, layer.padding)
        oy, py0, py1 = window_geometry(y, ky, sy, layer.padding)
        kernel = layer.weights if isinstance(layer, InputConv) else layer.weights[::-1, ::-1]
        filters = kernel.shape[-1]
        self.out_shape = (ox, oy, filters)
        self.in_shape = (x, y, c)
        self.pad_before = (px0, py0)
        self.padded_shape = (x + px0 + px1, y + py0 + py1, c)
        self.pad_value = layer.padding_value if isinstance(layer, InputConv) else 0
        matrix = kernel.reshape(kx * ky * c, filters).astype(np.int64)
        self.bound = _abs_bound(matrix, 2**layer.input_bits - 1)
        self.max_potential = _max_potential(matrix, 2**layer.input_bits - 1)
        self.dtype = np.float32 if self.bound < FLOAT32_EXACT else np.float64
        self.matrix = matrix.astype(self.dtype)
        self.gather = _im2col_index(self.padded_shape, (kx, ky), (sx, sy), (ox, oy))
        reach_x = _reach(x, kx, sx, ox, px0)
        reach_y = _reach(y, ky, sy, oy, py0)
        nonzero = np.count_nonzero(kernel, axis=-1)  # (kx, ky, c)
        self.fanout = np.einsum("ia,jb,ijc->abc", reach_x, reach_y, nonzero).astype(np.float64).ravel()
        self.dense_ops = int(reach_x.sum() * reach_y.sum()) * c * filters

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        n = frames.shape[0]
        (x, y, _), (px0, py0) = self.in_shape, self.pad_before
        padded = np.full((n, *self.padded_shape), self.pad_value, dtype=self.dtype)
        padded[:, px0 : px0 + x, py0 : py0 + y] = frames
        columns = padded.reshape(n, -1)[:, self.gather]
        potentials = columns.reshape(-1, self.matrix.shape[0]) @ self.matrix
        return potentials.reshape(n, *self.out_shape)


class _DenseIntegrator:
    """Potentials of a FullyConnected layer: one product of the (flattened) events with the weights.

    akida flattens (X, Y, C) with x fastest; the weight rows are permuted once so that a plain C-order
    reshape of the input lines up with them.
    """

    def __init__(self, layer: Dense) -> None:
        x, y, c = layer.input_shape
        akida_row = np.arange(x * y * c).reshape(c, y, x).transpose(2, 1, 0).ravel()
        matrix = layer.weights[akida_row].astype(np.int64)
        self.bound = _abs_bound(matrix, 2**layer.input_bits - 1)
        self.max_potential = _max_potential(matrix, 2**layer.input_bits - 1)
        self.dtype = np.float32 if self.bound < FLOAT32_EXACT else np.float64
        self.matrix = matrix.astype(self.dtype)
        self.out_shape = (1, 1, matrix.shape[1])
        self.fanout = np.count_nonzero(matrix, axis=1).astype(np.float64)
        self.dense_ops = matrix.size

    def __call__(self, events: np.ndarray) -> np.ndarray:
        n = events.shape[0]
        return (events.reshape(n, -1).astype(self.dtype) @ self.matrix).reshape(n, *self.out_shape)


class _MaxPooler:
    """Max over pooling windows of the potentials; 'same' windows are padded with -inf (ignored)."""

    def __init__(self, pool: MaxPool, padding: Padding, in_shape: tuple[int, int, int]) -> None:
        (x, y, f), (wx, wy), (sx, sy) = in_shape, pool.size, pool.stride
        ox, px0, px1 = window_geometry(x, wx, sx, padding)
        oy, py0, py1 = window_geometry(y, wy, sy, padding)
        self.out_shape = (ox, oy, f)
        self.in_shape = in_shape
        self.pads = (px0, px1, py0, py1)
        self.window = (wx, wy)
        self.stride = (sx, sy)

    def __call__(self, potentials: np.ndarray) -> np.ndarray:
        (x, y, f), (px0, px1, py0, py1) = self.in_shape, self.pads
        if any(self.pads):
            padded = np.full((potentials.shape[0], x + px0 + px1, y + py0 + py1, f), -np.inf, potentials.dtype)
            padded[:, px0 : px0 + x, py0 : py0 + y] = potentials
            potentials = padded
        (ox, oy, _), (sx, sy) = self.out_shape, self.stride
        pooled = None
        for i in range(self.window[0]):
            for j in range(self.window[1]):
                window = potentials[:, i : i + (ox - 1) * sx + 1 : sx, j : j + (oy - 1) * sy + 1 : sy]
                pooled = window.copy() if pooled is None else np.maximum(pooled, window, out=pooled)
        return pooled


def _abs_bound(matrix: np.ndarray, input_max: int) -> int:
    """Largest |partial sum| any filter can reach: inputs are in [0, input_max]."""
    return int(np.abs(matrix).sum(axis=0).max(initial=0)) * input_max


def _max_potential(matrix: np.ndarray, input_max: int) -> np.ndarray:
    return np.clip(matrix, 0, None).sum(axis=0) * input_max


def _im2col_index(
    padded_shape: tuple[int, int, int], kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]
) -> np.ndarray:
    """Flat indices into one padded frame: row = output position, column = (kx, ky, c) of its window."""
    (_, py, c), (kx, ky), (sx, sy), (ox, oy) = padded_shape, kernel, stride, out
    rows = (np.arange(ox) * sx)[:, None, None, None, None] + np.arange(kx)[None, None, :, None, None]
    cols = (np.arange(oy) * sy)[None, :, None, None, None] + np.arange(ky)[None, None, None, :, None]
    index = (rows * py + cols) * c + np.arange(c)
    return index.reshape(ox * oy, kx * ky * c)


def _reach(size: int, window: int, stride: int, out: int, pad_before: int) -> np.ndarray:
    """reach[i, a] = 1 if input a is seen by kernel offset i of some output (padding excluded)."""
    reach = np.zeros((window, size), dtype=np.int64)
    for offset in range(window):
        inputs = np.arange(out) * stride + offset - pad_before
        reach[offset, inputs[(inputs >= 0) & (inputs < size)]] = 1
    return reach


@dataclass(frozen=True, eq=False)
class _Stage:
    layer: Layer
    integrate: _ConvIntegrator | _DenseIntegrator
    pool: _MaxPooler | None
    fire: _Firing | None


def _stage(layer: Layer) -> _Stage:
    integrate = _DenseIntegrator(layer) if isinstance(layer, Dense) else _ConvIntegrator(layer)
    pool = None
    if not isinstance(layer, Dense) and layer.pool is not None:
        pool = _MaxPooler(layer.pool, layer.padding, integrate.out_shape)
    out_shape = pool.out_shape if pool else integrate.out_shape
    if out_shape != layer.output_shape:
        raise ModelError(f"layer '{layer.name}': computed output shape {out_shape}, akida says {layer.output_shape}")
    firing = _Firing(layer, integrate.max_potential, integrate.dtype == np.float32) if layer.activation else None
    return _Stage(layer, integrate, pool, firing)


@dataclass(frozen=True)
class SimResult:
    """``outputs`` as ``akida.Model.forward`` returns them, and every layer's counters."""

    outputs: np.ndarray
    counters: Counters


class Simulator:
    """Runs an :class:`AkidaModel` on uint8 frames ``(N, X, Y, C)``, ``max_batch`` frames at a time.

    Batches are capped because the im2col matrix grows with N (about 0.3 MB per MNIST frame).
    """

    def __init__(self, model: AkidaModel, max_batch: int = 256) -> None:
        self.model = model
        self.max_batch = max_batch
        self._stages = tuple(_stage(layer) for layer in model.layers)

    def run(self, frames: np.ndarray) -> SimResult:
        self._check(frames)
        parts = [self._run_batch(frames[i : i + self.max_batch]) for i in range(0, len(frames), self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return SimResult(
            outputs=np.concatenate([part.outputs for part in parts]),
            counters=concatenate([part.counters for part in parts]),
        )

    def _check(self, frames: np.ndarray) -> None:
        expected = self.model.input_shape
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise DataError(f"frames must be a uint8 array, got {getattr(frames, 'dtype', type(frames).__name__)}")
        if frames.ndim != 4 or frames.shape[1:] != expected or frames.shape[0] == 0:
            raise DataError(f"frames must have shape (N>0, {', '.join(map(str, expected))}), got {frames.shape}")

    def _run_batch(self, frames: np.ndarray) -> SimResult:
        n = frames.shape[0]
        values, events = frames, (frames != 0).reshape(n, -1)
        counts = []
        for stage in self._stages:
            potentials = stage.integrate(values)
            if stage.pool is not None:
                potentials = stage.pool(potentials)
            outputs = stage.fire(potentials) if stage.fire else potentials.astype(np.int32)
            fired = (outputs != 0).reshape(n, -1)
            counts.append(_layer_counters(stage, events, outputs, fired))
            values, events = outputs, fired
        return SimResult(outputs=values, counters=Counters(tuple(counts)))


def _layer_counters(stage: _Stage, events: np.ndarray, outputs: np.ndarray, fired: np.ndarray) -> LayerCounters:
    layer, n = stage.layer, events.shape[0]
    spikes = outputs.reshape(n, -1).sum(axis=1, dtype=np.int64) if stage.fire else np.zeros(n, np.int64)
    return LayerCounters(
        name=layer.name,
        neurons=layer.neurons,
        inputs=events.shape[1],
        weights=int(layer.weights.size),
        nonzero_weights=int(np.count_nonzero(layer.weights)),
        input_events=np.count_nonzero(events, axis=1).astype(np.int64),
        output_events=np.count_nonzero(fired, axis=1).astype(np.int64),
        output_spikes=spikes,
        synaptic_ops=np.rint(events @ stage.integrate.fanout).astype(np.int64),
        dense_synaptic_ops=np.full(n, stage.integrate.dense_ops, dtype=np.int64),
    )
