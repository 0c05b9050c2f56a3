"""NumPy simulator of Akida 1.0 inference, bit-exact with akida's software engine.

Each layer integrates its input into integer potentials, max-pools the potentials and fires with
Akida 1.0's activation rule; the integer semantics are pinned by tests against ``akida.Model.forward``
and written up in docs/akida-semantics.md. Alongside, every layer's events and synaptic operations
are counted exactly (:mod:`edge_runtime.counters`), because those counts, not the arithmetic, are
what the chip's energy follows. akida itself is never imported here.

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
10-30 % density touching only events does not pay (gathering only the event rows of a
FullyConnected layer's weights was no faster either: 23-30 us vs 23 us). Zeros add nothing to a
sum, so the dense product gives the same potentials; the event counts do not come from the product
but from the event indicators times per-input fan-out tables built once per layer, so they are
exact whatever the arithmetic does.

Why float arithmetic is exact. Potentials are sums of integer products; a float32 product is exact
while every partial sum stays below 2**24 in magnitude, which each layer checks once from its
weights and its input range (float64, exact to 2**53, otherwise). The firing rule has a fast float
path whose exactness conditions are checked the same way, and an integer path that reproduces the
engine's 32-bit wrap-around for the (absurd) thresholds where that path could differ.

Why buffers are reused. At batch 1 a run is ~80 small NumPy calls, so allocation counts; at
larger batches fresh multi-megabyte temporaries cost page faults. Each layer therefore keeps its
work arrays (grown to the largest batch seen), which makes a :class:`Simulator` unsafe to share
between threads (use one per thread).

Where the time goes (MNIST model of bench/simulator.py, one frame, one BLAS thread, ~130 us):
the three big products (~25 us each for the Conv and the first FullyConnected, whose 1.6 MB of
float32 weights also evict the other layers' data from the 1 MB L2 cache), ~55 small NumPy calls
(firing, counting, buffers) and building the result. At batch 32 the same model takes ~70 us a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .akida_model import AkidaModel, Conv, Dense, InputConv, Layer, MaxPool, Padding
from .counters import PER_FRAME, Counters, LayerCounters, concatenate
from .errors import DataError, ModelError

FLOAT32_EXACT = 2**24  # integers below this are exact in float32, and so are sums that stay below it
_FAST_MAX_T16 = 2**21  # act_step * 16 below this keeps a float32 quotient from crossing an integer
# rows of the per-layer count table, in counters.PER_FRAME order
_INPUT_EVENTS, _SYNAPTIC_OPS, _OUTPUT_EVENTS, _OUTPUT_SPIKES, _DENSE_SYNAPTIC_OPS = range(len(PER_FRAME))


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
    """Akida 1.0's activation exactly as akida's engine computes it; the last axis is the filter.

    With ``t16 = floor(float64(act_step) * 16)`` and ``d = int32(pot - threshold)``: ``d <= 0 -> 0``,
    else ``min(uint32(((d << 4) - 1) << act_bits) // uint32(t16 << 4) + 1, 2**act_bits - 1)``, every
    step in wrapping 32-bit arithmetic. Without wrap-around this equals
    ``clip(ceil((pot - threshold) * 2**act_bits / t16), 0, 2**act_bits - 1)``.
    """
    t16 = np.floor(act_step.astype(np.float64) * 16).astype(np.int64)
    d = (potentials.astype(np.int64) - threshold.astype(np.int64)).astype(np.int32)
    numerator = (d.view(np.uint32) << np.uint32(4 + act_bits)) - np.uint32(1 << act_bits)
    quotient = numerator // (t16 << 4).astype(np.uint32) + np.uint32(1)
    top = np.uint32(2**act_bits - 1)
    return np.where(d > 0, np.minimum(quotient, top), np.uint32(0)).astype(np.uint8)


def _exact_dtype(largest_sum: int) -> type:
    """float32 when every integer sum stays below 2**24 (exact), else float64 (exact to 2**53)."""
    return np.float32 if largest_sum < FLOAT32_EXACT else np.float64


class _Firing:
    """One layer's activation: a float32 fast path wherever it provably equals :func:`fire`.

    The fast path computes ``clip(ceil((pot - threshold) / (t16 / 2**act_bits)), 0, top)`` in float32.
    It equals the engine's integer rule when potentials are exact float32 integers,
    ``|threshold| < 2**24`` (so ``pot - threshold`` is exact wherever the result is not saturated),
    ``t16 < 2**21`` (a non-integer quotient below 16 is at least ``1 / t16`` from an integer, more
    than float32's rounding error there) and no potential can make the engine's 32-bit numerator
    wrap. It is 10x faster than the integer rule (0.5 ms vs 5 ms for 100 MNIST frames of the first
    layer). Outputs stay float32 (exact small integers) so the next layer's product needs no cast.
    """

    def __init__(self, layer: Layer, max_potential: np.ndarray, exact_float32: bool) -> None:
        self.threshold, self.act_step, self.act_bits = layer.threshold, layer.act_step, layer.act_bits
        self.filters = layer.threshold.size
        t16 = np.floor(layer.act_step.astype(np.float64) * 16)
        margin = max_potential.astype(np.int64) - layer.threshold.astype(np.int64)
        self.fast = bool(
            exact_float32
            and np.all(np.abs(layer.threshold.astype(np.int64)) < FLOAT32_EXACT)
            and np.all(t16 < _FAST_MAX_T16)
            and np.all((16 * margin - 1) << layer.act_bits < 2**32)
        )
        # Operands tiled to the flat (n, neurons) layout: NumPy's SIMD loops run 1.5-3x faster on
        # same-shape arrays than when broadcasting a per-filter vector or a scalar.
        positions = layer.neurons // self.filters
        self.float_threshold = np.tile(layer.threshold.astype(np.float32), positions)
        self.float_step = np.tile((t16 / 2**layer.act_bits).astype(np.float32), positions)  # exact: t16 < 2**21
        self.float_zero = np.zeros(layer.neurons, dtype=np.float32)
        self.float_top = np.full(layer.neurons, 2**layer.act_bits - 1, dtype=np.float32)

    def __call__(self, potentials: np.ndarray, out: np.ndarray) -> np.ndarray:
        """(n, neurons) potentials -> float32 activations written to ``out``."""
        if not self.fast:
            per_filter = potentials.reshape(potentials.shape[0], -1, self.filters)
            out[:] = fire(per_filter, self.threshold, self.act_step, self.act_bits).reshape(out.shape)
            return out
        np.subtract(potentials, self.float_threshold, out=out)
        out /= self.float_step
        np.ceil(out, out=out)
        np.maximum(out, self.float_zero, out=out)
        return np.minimum(out, self.float_top, out=out)


class _Stage:
    """What the simulator needs of every layer: potentials, firing, counting tables, static counts.

    ``counting`` has two rows over the inputs (C-order over X, Y, C): 1, and the number of non-zero
    weights an event there is multiplied by; times the input-event indicator it gives the layer's
    input_events and synaptic_ops in one product. ``ones`` sums the outputs (output_spikes). Both use
    float32 where every sum stays below 2**24, so the counts are exact. (Summing all layers at once
    with ``np.add.reduceat`` over one shared array was measured slower: reduceat does not vectorise.)
    """

    name: str
    inputs: int
    out_shape: tuple[int, int, int]
    dtype: type
    matrix: np.ndarray
    firing: _Firing | None
    counting: np.ndarray
    ones: np.ndarray
    dense_ops: int
    static_values: tuple[int, int, int, int]

    def _finish(self, layer: Layer, matrix: np.ndarray, fanout: np.ndarray, dense_ops: int) -> None:
        """Set what both kinds share, from the integer weights matrix (fan-in x filters)."""
        if self.out_shape != layer.output_shape:
            raise ModelError(
                f"layer '{layer.name}': computed output shape {self.out_shape}, akida says {layer.output_shape}"
            )
        input_max = 2**layer.input_bits - 1
        self.name = layer.name
        self.inputs = int(np.prod(layer.input_shape))
        self.dtype = _exact_dtype(int(np.abs(matrix).sum(axis=0).max(initial=0)) * input_max)
        self.matrix = matrix.astype(self.dtype)
        max_potential = np.clip(matrix, 0, None).sum(axis=0) * input_max
        self.firing = _Firing(layer, max_potential, self.dtype == np.float32) if layer.activation else None
        self.counting = np.stack([np.ones_like(fanout), fanout]).astype(_exact_dtype(dense_ops + fanout.size))
        self.ones = np.ones(layer.neurons, dtype=_exact_dtype(layer.neurons * (2**layer.act_bits - 1)))
        self.dense_ops = dense_ops
        # in counters.STATIC order: neurons, inputs, weights, nonzero_weights
        self.static_values = (layer.neurons, self.inputs, int(layer.weights.size), int(np.count_nonzero(layer.weights)))
        self._capacity = 0
        self._buffers: tuple[np.ndarray, ...] = ()
        self._views: dict[int, tuple[np.ndarray, ...]] = {}

    def _work(self, n: int) -> tuple[np.ndarray, ...]:
        """Views of this stage's work arrays for n frames; the arrays grow to the largest n seen."""
        views = self._views.get(n)
        if views is None:
            if n > self._capacity:
                self._buffers, self._capacity, self._views = self._allocate(n), n, {}
            views = tuple(buffer[: n * len(buffer) // self._capacity] for buffer in self._buffers)
            self._views[n] = views
        return views

    def _allocate(self, n: int) -> tuple[np.ndarray, ...]:
        """Work arrays for n frames, each with n (or a multiple of n) rows; the first holds activations."""
        raise NotImplementedError

    def potentials(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, values: np.ndarray) -> np.ndarray:
        """(n, inputs) values -> (n, neurons) outputs: float32 activations, or potentials if no activation."""
        potentials = self.potentials(values)
        if self.firing is None:
            return potentials
        return self.firing(potentials, self._work(values.shape[0])[0])


class _ConvStage(_Stage):
    """InputConv or Conv: im2col gather + one matrix product, with max pooling folded into the gather.

    A Conv is a true convolution, so its kernel is flipped once here and both kinds then
    cross-correlate. The gather lists, for each pooling-window member and each pooled position,
    the receptive field of the pre-pooling neuron there, so pooling is one ``max`` over members.
    'same' pooling windows that stick out of the map repeat one of their own neurons instead
    (max ignores duplicates), and inputs in the padding point at a slot holding the padding value.
    """

    def __init__(self, layer: InputConv | Conv) -> None:
        (x, y, c), (kx, ky), (sx, sy) = layer.input_shape, layer.kernel, layer.stride
        ox, px0, _ = window_geometry(x, kx, sx, layer.padding)
        oy, py0, _ = window_geometry(y, ky, sy, layer.padding)
        kernel = layer.weights if isinstance(layer, InputConv) else layer.weights[::-1, ::-1]
        filters = kernel.shape[-1]
        members_x = _pool_members(ox, layer.pool, 0, layer.padding)
        members_y = _pool_members(oy, layer.pool, 1, layer.padding)
        self.out_shape = (members_x.shape[1], members_y.shape[1], filters)
        self.members = members_x.shape[0] * members_y.shape[0]
        self.pad_value = layer.padding_value if isinstance(layer, InputConv) else 0
        self.gather = _im2col_index((x, y, c), (kx, ky), (sx, sy), (px0, py0), members_x, members_y)
        reach_x, reach_y = _reach(x, kx, sx, ox, px0), _reach(y, ky, sy, oy, py0)
        nonzero = np.count_nonzero(kernel, axis=-1)  # (kx, ky, c)
        fanout = np.einsum("ia,jb,ijc->abc", reach_x, reach_y, nonzero).ravel()
        dense_ops = int(reach_x.sum() * reach_y.sum()) * c * filters
        self._finish(layer, kernel.reshape(kx * ky * c, filters).astype(np.int64), fanout, dense_ops)

    def _allocate(self, n: int) -> tuple[np.ndarray, ...]:
        rows, fan_in = self.gather.shape
        neurons = int(np.prod(self.out_shape))
        extended = np.empty((n, self.inputs + 1), dtype=self.dtype)
        extended[:, self.inputs] = self.pad_value
        return (
            np.empty((n, neurons), dtype=np.float32),  # activations
            extended,  # inputs + the padding slot
            np.empty((n, rows, fan_in), dtype=self.dtype),  # receptive fields
            np.empty((n * rows, self.matrix.shape[1]), dtype=self.dtype),  # pre-pooling potentials
            np.empty((n, neurons), dtype=self.dtype),  # pooled potentials
        )

    def potentials(self, values: np.ndarray) -> np.ndarray:
        """(n, inputs) values -> (n, neurons) pooled potentials (C-order over X, Y, filters)."""
        n = values.shape[0]
        _, extended, fields, products, pooled = self._work(n)
        extended[:, : self.inputs] = values
        # indices are in range by construction; mode="wrap" skips the bounds-error path (1.6x faster)
        extended.take(self.gather, axis=1, out=fields, mode="wrap")
        np.matmul(fields.reshape(products.shape[0], -1), self.matrix, out=products)
        if self.members == 1:
            return products.reshape(n, -1)
        return np.maximum.reduce(products.reshape(n, self.members, -1), axis=1, out=pooled)


class _DenseStage(_Stage):
    """FullyConnected: one product of the flattened events with the weights.

    akida flattens (X, Y, C) with x fastest; the weight rows are permuted once so that a plain C-order
    reshape of the input lines up with them. A dense layer's event matrix is its input itself.
    """

    def __init__(self, layer: Dense) -> None:
        x, y, c = layer.input_shape
        akida_row = np.arange(x * y * c).reshape(c, y, x).transpose(2, 1, 0).ravel()
        matrix = layer.weights[akida_row].astype(np.int64)
        self.out_shape = (1, 1, matrix.shape[1])
        self._finish(layer, matrix, np.count_nonzero(matrix, axis=1), int(matrix.size))
        self.matrix = np.asfortranarray(self.matrix)  # BLAS reads it as rows of the transpose: 10 % faster at batch 1

    def _allocate(self, n: int) -> tuple[np.ndarray, ...]:
        units = self.matrix.shape[1]
        return np.empty((n, units), dtype=np.float32), np.empty((n, units), dtype=self.dtype)

    def potentials(self, values: np.ndarray) -> np.ndarray:
        return np.matmul(values.astype(self.dtype, copy=False), self.matrix, out=self._work(values.shape[0])[1])


def _pool_members(size: int, pool: MaxPool | None, axis: int, padding: Padding) -> np.ndarray:
    """members[w, q]: the pre-pooling coordinate of window member w of pooled output q (clamped)."""
    if pool is None:
        return np.arange(size)[None, :]
    window, stride = pool.size[axis], pool.stride[axis]
    out, before, _ = window_geometry(size, window, stride, padding)
    coordinate = np.arange(window)[:, None] + np.arange(out)[None, :] * stride - before
    return np.clip(coordinate, 0, size - 1)


def _im2col_index(
    in_shape: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad_before: tuple[int, int],
    members_x: np.ndarray,
    members_y: np.ndarray,
) -> np.ndarray:
    """Flat input indices (``x*y*c`` = the padding slot): row = (member, pooled position), column = (kx, ky, c)."""
    (x, y, c), (kx, ky), (sx, sy), (px0, py0) = in_shape, kernel, stride, pad_before
    # axes: member_x, member_y, pooled_x, pooled_y, kernel_x, kernel_y
    at_x = members_x[:, None, :, None, None, None] * sx + np.arange(kx)[:, None] - px0
    at_y = members_y[None, :, None, :, None, None] * sy + np.arange(ky) - py0
    inside = (at_x >= 0) & (at_x < x) & (at_y >= 0) & (at_y < y)
    index = np.where(inside[..., None], (at_x * y + at_y)[..., None] * c + np.arange(c), x * y * c)
    rows = members_x.shape[0] * members_y.shape[0] * members_x.shape[1] * members_y.shape[1]
    return index.reshape(rows, kx * ky * c)


def _reach(size: int, window: int, stride: int, out: int, pad_before: int) -> np.ndarray:
    """reach[i, a] = 1 if input a is seen by kernel offset i of some output (padding excluded)."""
    reach = np.zeros((window, size), dtype=np.int64)
    for offset in range(window):
        inputs = np.arange(out) * stride + offset - pad_before
        reach[offset, inputs[(inputs >= 0) & (inputs < size)]] = 1
    return reach


@dataclass(frozen=True)
class SimResult:
    """``outputs`` as ``akida.Model.forward`` returns them, and every layer's counters."""

    outputs: np.ndarray
    counters: Counters


class Simulator:
    """Runs an :class:`AkidaModel` on uint8 frames ``(N, X, Y, C)``, ``max_batch`` frames at a time.

    Larger inputs are cut into batches of ``max_batch``: 32 keeps an MNIST model's work arrays
    (about 0.1 MB per frame) in cache; measured 68 us per frame vs 83 us in batches of 100.
    Not thread-safe (work arrays are reused): use one Simulator per thread.
    """

    def __init__(self, model: AkidaModel, max_batch: int = 32) -> None:
        self.model = model
        self.max_batch = max_batch
        self._stages = tuple(
            _DenseStage(layer) if isinstance(layer, Dense) else _ConvStage(layer) for layer in model.layers
        )
        self._dense_ops = np.array([[stage.dense_ops] for stage in self._stages], dtype=np.float64)

    def run(self, frames: np.ndarray) -> SimResult:
        self._check(frames)
        if len(frames) <= self.max_batch:
            return self._run_batch(frames)
        parts = [self._run_batch(frames[i : i + self.max_batch]) for i in range(0, len(frames), self.max_batch)]
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
        values = frames.reshape(n, -1)
        counts = np.empty((len(self._stages), len(PER_FRAME), n))  # float: filled from exact float products
        for k, stage in enumerate(self._stages):
            indicator = (values != 0).astype(stage.counting.dtype)
            counts[k, _INPUT_EVENTS : _SYNAPTIC_OPS + 1] = stage.counting @ indicator.T
            values = stage.forward(values)
            counts[k, _OUTPUT_SPIKES] = values.astype(stage.ones.dtype, copy=False) @ stage.ones if stage.firing else 0
        counts[:-1, _OUTPUT_EVENTS] = counts[1:, _INPUT_EVENTS]  # a layer's output events feed the next one
        counts[-1, _OUTPUT_EVENTS] = np.count_nonzero(values, axis=1)
        counts[:, _DENSE_SYNAPTIC_OPS] = self._dense_ops
        outputs = values.reshape(n, *self.model.output_shape).astype(self.model.output_dtype)
        return SimResult(outputs, self._counters(counts.astype(np.int64)))

    def _counters(self, counts: np.ndarray) -> Counters:
        return Counters(
            tuple(
                LayerCounters(stage.name, *stage.static_values, *rows)  # fields in STATIC, PER_FRAME order
                for stage, rows in zip(self._stages, counts, strict=True)
            )
        )
