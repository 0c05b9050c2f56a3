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
10-30 % density touching only events does not pay for a convolution. Zeros add nothing to a sum,
so the dense product gives the same potentials. The exception is a large FullyConnected layer at
batch 1, where whole weight rows move per event: copying the event rows into a preallocated buffer
(``take(out=...)``) and multiplying those is faster than reading the whole matrix (see
:class:`_DenseStage`). The event counts do not come from the potentials' product but from event
indicators times per-input fan-out tables built once per layer, so they are exact whatever the
arithmetic does.

Why float arithmetic is exact. Potentials are sums of integer products; a float32 product is exact
while every partial sum stays below 2**24 in magnitude, which each layer checks once from its
weights and its input range (float64, exact to 2**53, otherwise). The firing rule has a fast float
path whose exactness conditions are checked the same way, and an integer path that reproduces the
engine's 32-bit wrap-around for the (absurd) thresholds where that path could differ.

Why buffers are reused and the layers chained through them. At batch 1 a run is ~35 NumPy calls
of 0.5-1 us overhead each (the MNIST model's real work is ~60 us), so calls and allocations count.
Each layer keeps its work arrays (grown to the largest batch seen) and an input buffer, padded
for its kernel, into whose interior the previous layer fires directly; every count is written,
through ``out=``, into one buffer from which one ``take`` gathers all counters. This makes a
:class:`Simulator` unsafe to share between threads (use one per thread).

Where the time goes (MNIST model of bench/simulator.py, one BLAS thread, batch 1, ~97 us CPU a
frame on a shared 2-core AMD EPYC VM where akida's engine takes ~315 us; it was ~135 us before the
changes above): the input layer 22 us (a 6 us product, pooling, firing), the Conv layer 28 us (a
17 us product, at the BLAS kernel's peak for its 0.9 M multiply-adds), the first FullyConnected
22 us (8.5 us to copy its event rows, 5 us product), the last layer 2 us and building the result
(counts and counters) 8 us; the rest is cache misses between layers. Measured in a full run,
gathering the FullyConnected's event rows saves 7.6 us a frame and the strided im2col 4.5 us. At
batch 32 the same model takes ~70-80 us a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .akida_model import AkidaModel, ConvLayer, Dense, InputConv, Layer, MaxPool, Padding
from .counters import PER_FRAME, STATIC, Counters, LayerCounters, concatenate
from .errors import DataError, ModelError

FLOAT32_EXACT = 2**24  # integers below this are exact in float32, and so are sums that stay below it
# The engine's 20-bit potentials (probed): a FullyConnected clips its potential to this range, and a
# global average pool adds the positions' potentials one by one (x slowest), saturating at it.
POTENTIAL_MIN, POTENTIAL_MAX = -(2**19), 2**19 - 1
_FAST_MAX_T16 = 2**21  # act_step * 16 below this keeps a float32 quotient from crossing an integer
_STRIDED_MIN_RUN = 16  # im2col by a strided copy when each (kernel row, channels) run has this many values
_GATHER_MIN_WEIGHTS = 2**16  # at batch 1 a FullyConnected with this many weights multiplies only its events
_GATHER_MAX_DENSITY = 0.3  # ... unless more of its inputs than this are events (then the dense product is faster)
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


def summed_positions(layer: Layer) -> int:
    """How many positions' products one potential sums: a global average pool's output positions
    (before pooling), else 1."""
    if isinstance(layer, Dense) or not layer.global_avg_pool:
        return 1
    (x, y, _), (kx, ky), (sx, sy) = layer.input_shape, layer.kernel, layer.stride
    return window_geometry(x, kx, sx, layer.padding)[0] * window_geometry(y, ky, sy, layer.padding)[0]


def potential_extremes(layer: Layer, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per filter, the smallest and largest sums the layer's (fan-in x filters) ``matrix`` can give
    over its input range, before any 20-bit clipping or saturation."""
    scale = (2**layer.input_bits - 1) * summed_positions(layer)
    return np.clip(matrix, None, 0).sum(axis=0) * scale, np.clip(matrix, 0, None).sum(axis=0) * scale


def saturates(layer: Layer, matrix: np.ndarray) -> bool:
    """Whether the engine's 20-bit potentials can change the layer's result: a FullyConnected clips
    its potential, a global average pool saturates its running sum; other layers' are wider."""
    if not (isinstance(layer, Dense) or summed_positions(layer) > 1):
        return False
    low, high = potential_extremes(layer, matrix)
    return bool(np.any(high > POTENTIAL_MAX) or np.any(low < POTENTIAL_MIN))


def engine_t16(act_step: np.ndarray) -> np.ndarray:
    """The engine's activation step in 1/16 units, int64: ``floor(float64(act_step) * 16)``.

    The one copy of this rounding: the simulator's firing rule and the exporter's ONNX thresholds
    (exporter/onnx_build.py) must round the step exactly alike to stay bit-exact with akida.
    """
    return np.floor(act_step.astype(np.float64) * 16).astype(np.int64)


def fire(potentials: np.ndarray, threshold: np.ndarray, act_step: np.ndarray, act_bits: int) -> np.ndarray:
    """Akida 1.0's activation exactly as akida's engine computes it; the last axis is the filter.

    With ``t16 = floor(float64(act_step) * 16)`` and ``d = int32(pot - threshold)``: ``d <= 0 -> 0``,
    else ``min(uint32(((d << 4) - 1) << act_bits) // uint32(t16 << 4) + 1, 2**act_bits - 1)``, every
    step in wrapping 32-bit arithmetic. Without wrap-around this equals
    ``clip(ceil((pot - threshold) * 2**act_bits / t16), 0, 2**act_bits - 1)``.
    """
    t16 = engine_t16(act_step)
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

    When ``folded``, the layer's product already subtracted the threshold (a bias row, exact
    because every partial sum stays below 2**24 with it), so the potentials are ``pot - threshold``.
    """

    def __init__(self, layer: Layer, max_potential: np.ndarray, exact_float32: bool, shape: tuple[int, ...]) -> None:
        """``shape``: the layer's potentials per frame."""
        self.threshold, self.act_step, self.act_bits = layer.threshold, layer.act_step, layer.act_bits
        self.filters = layer.threshold.size
        t16 = engine_t16(layer.act_step)
        margin = max_potential.astype(np.int64) - layer.threshold.astype(np.int64)
        self.fast = bool(
            exact_float32
            and np.all(np.abs(layer.threshold.astype(np.int64)) < FLOAT32_EXACT)
            and np.all(t16 < _FAST_MAX_T16)
            and np.all((16 * margin - 1) << layer.act_bits < 2**32)
        )
        self.folded = False
        # Operands tiled to the potentials' shape: NumPy's SIMD loops run 1.5-3x faster on
        # same-shape arrays than when broadcasting a per-filter vector or a scalar.
        positions = layer.neurons // self.filters
        self.float_threshold = np.tile(layer.threshold.astype(np.float32), positions).reshape(shape)
        step = (t16 / 2**layer.act_bits).astype(np.float32)  # exact: t16 < 2**21
        self.float_step = np.tile(step, positions).reshape(shape)
        self.float_zero = np.zeros(shape, dtype=np.float32)
        self.float_top = np.full(shape, 2**layer.act_bits - 1, dtype=np.float32)

    def __call__(self, potentials: np.ndarray, out: np.ndarray) -> None:
        """(n, *shape) potentials -> activations written to ``out`` (same shape, any strides).

        The fast path overwrites ``potentials`` (a work array): it works in place there, where the
        values are contiguous, and writes ``out`` (the next layer's padded input) only in its last
        step; ufuncs into the strided interior of a padded map were 2x slower (14 us vs 7 us).
        (Potentials held in float64 are exact integers below 2**24 too: float64 steps only round less.)
        """
        if not self.fast:
            out[...] = fire(potentials, self.threshold, self.act_step, self.act_bits)
            return
        if not self.folded:
            np.subtract(potentials, self.float_threshold, potentials)
        np.divide(potentials, self.float_step, potentials)
        np.ceil(potentials, potentials)
        np.maximum(potentials, self.float_zero, out=potentials)
        np.minimum(potentials, self.float_top, out=out)


class _Views:
    """Attribute bag: one stage's views of its work arrays for one batch size."""


class _Inputs:
    """A layer's input buffer, and the counting of its input events in one small product.

    Per frame the buffer holds the padded input map (``P`` values, C-order over the padded X, Y, C)
    and a constant 1 (the bias input, see :class:`_Stage`), then a same-sized indicator map and a 0.
    The previous layer fires straight into the interior of the input map (the padding around it
    is set once); ``indicator = minimum(input, 1)`` (inputs are non-negative integers) goes to the
    second. One product of the ``(2n, P + 1)`` rows with ``counting``, the columns (1, non-zero
    fan-out) of every real input (0 on the padding and the bias), then gives every frame's input sum
    (the previous layer's output_spikes), input_events and synaptic_ops together (for the last
    layer's outputs ``counting`` is one column of ones: their sum and their non-zeros). The sums are
    exact (float32 where they stay below 2**24). Two NumPy calls per layer instead of seven.
    """

    shape: tuple[int, int, int]  # (X, Y, C) without padding
    padded: tuple[int, int, int]
    size: int  # P, the padded map's size; the bias input is at P
    before: tuple[int, int]  # padding before X and Y
    pad_value: int
    dtype: type
    counting: np.ndarray

    def _set_inputs(
        self,
        shape: tuple[int, int, int],
        before: tuple[int, int],
        after: tuple[int, int],
        columns: list[np.ndarray],
        pad_value: int,
        dtype: type,
    ) -> None:
        """``columns``: per-input (X, Y, C) tables of the counting product."""
        (x, y, c), (bx, by), (ax, ay) = shape, before, after
        self.shape, self.before, self.pad_value, self.dtype = shape, before, pad_value, dtype
        self.padded = (bx + x + ax, by + y + ay, c)
        self.size = int(np.prod(self.padded))
        counting = np.zeros((self.size + 1, len(columns)), dtype=dtype)
        interior = counting[: self.size].reshape(*self.padded, len(columns))[bx : bx + x, by : by + y]
        for index, column in enumerate(columns):
            interior[..., index] = column.reshape(shape)
        # Fortran order: BLAS reads each column contiguously (2x faster than C order at batch 1)
        self.counting = np.asfortranarray(counting)
        self.ones = np.ones(self.padded, dtype=dtype)
        self._capacity = 0
        self._views: dict[int, _Views] = {}

    def _work(self, n: int) -> _Views:
        """Views of the work arrays for n frames; the arrays grow to the largest n seen."""
        views = self._views.get(n)
        if views is None:
            if n > self._capacity:
                self._storage, self._capacity, self._views = self._allocate(n), n, {}
            views = self._views[n] = self._make_views(n)
        return views

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        """Work arrays for n frames, each with the frame as its first axis."""
        pair = np.zeros((n, 2, self.size + 1), dtype=self.dtype)
        pair[:, 0, : self.size] = self.pad_value
        pair[:, 0, self.size] = 1  # the bias input
        return {"pair": pair}

    def _make_views(self, n: int) -> _Views:
        (x, y, _), (bx, by) = self.shape, self.before
        views = _Views()
        views.dtype = self.dtype
        views.pair = self._storage["pair"][:n]
        views.inputs = views.pair[:, 0]  # (n, P + 1): the padded map, then the bias input
        views.values = views.inputs[:, : self.size].reshape(n, *self.padded)
        views.indicator = views.pair[:, 1, : self.size].reshape(n, *self.padded)
        views.interior = views.values[:, bx : bx + x, by : by + y, :]
        views.rows = views.pair.reshape(2 * n, -1)  # frame m: row 2m its inputs, row 2m + 1 its indicator
        views.flat = views.pair.reshape(n, -1)  # per frame: inputs, bias, indicator, 0
        assert np.may_share_memory(views.values, views.pair) and np.may_share_memory(views.indicator, views.pair)
        return views

    def _count(self, views: _Views) -> None:
        """(2n, columns) sums into ``views.counts``: row 2m is frame m's inputs times ``counting``,
        row 2m + 1 its indicator's."""
        np.minimum(views.values, self.ones, out=views.indicator)
        views.dot(views.rows, self.counting, out=views.counts)

    def layout(self, n: int, gathered: bool = False) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        """The counts' array (shape) and where in it (flat) are the input sums, events and synaptic ops."""
        columns = self.counting.shape[1]
        frame = 2 * columns * np.arange(n)
        return (2 * n, columns), frame, frame + columns, frame + columns + 1


class _Outputs(_Inputs):
    """Receives the last layer's activations; counts their sum (output_spikes) and non-zeros (events)."""

    def __init__(self, layer: Layer) -> None:
        dtype = _exact_dtype(layer.neurons * (2**layer.act_bits - 1))
        self._set_inputs(layer.output_shape, (0, 0), (0, 0), [np.ones(layer.neurons)], 0, dtype)


class _Stage(_Inputs):
    """What the simulator needs of every layer: its input buffer, potentials, firing, static counts.

    ``matrix`` has one row per fan-in input and a last row for the bias input (always 1): minus the
    threshold where the fast firing rule applies and the product stays exact with it (float64, or
    every partial sum, threshold included, below 2**24); else 0. Folding the threshold into the
    product saves the firing a pass over the potentials.
    """

    name: str
    inputs: int
    out_shape: tuple[int, int, int]
    matrix: np.ndarray
    firing: _Firing | None
    dense_ops: int
    static_values: tuple[int, int, int, int]

    def _finish(
        self,
        layer: Layer,
        matrix: np.ndarray,
        fanout: np.ndarray,
        dense_ops: int,
        before: tuple[int, int] = (0, 0),
        after: tuple[int, int] = (0, 0),
        pad_value: int = 0,
    ) -> None:
        """Set what all kinds share, from the integer weights matrix (fan-in x filters).

        A global average pool sums ``summed_positions`` products per potential: the exactness
        bounds grow with it, and the threshold cannot be folded into every product's bias row."""
        positions = summed_positions(layer)
        if self.out_shape != layer.output_shape:
            raise ModelError(
                f"layer '{layer.name}': computed output shape {self.out_shape}, akida says {layer.output_shape}"
            )
        input_max = 2**layer.input_bits - 1
        self.name = layer.name
        self.inputs = int(np.prod(layer.input_shape))
        largest_sum = int(np.abs(matrix).sum(axis=0).max(initial=0)) * input_max * positions
        counting_dtype = _exact_dtype(max(int(fanout.sum()), self.inputs * input_max))
        # one dtype for the input buffer, the products and the counting (float64 if either needs it)
        dtype = np.promote_types(_exact_dtype(largest_sum), counting_dtype).type
        max_potential = potential_extremes(layer, matrix)[1]
        self.saturates = saturates(layer, matrix)
        self.firing = None
        bias = np.zeros((1, matrix.shape[1]), dtype=np.int64)
        if layer.activation:
            shape = (self.out_shape[2],) if isinstance(layer, Dense) else self.out_shape
            self.firing = _Firing(layer, max_potential, largest_sum < FLOAT32_EXACT, shape)
            threshold = layer.threshold.astype(np.int64)
            largest_biased = int((np.abs(matrix).sum(axis=0) * input_max + np.abs(threshold)).max())
            foldable = positions == 1 and not self.saturates and (dtype == np.float64 or largest_biased < FLOAT32_EXACT)
            if self.firing.fast and foldable:
                self.firing.folded, bias[0] = True, -threshold
        self.matrix = np.concatenate([matrix, bias]).astype(dtype)
        self.dense_ops = dense_ops
        # in counters.STATIC order: neurons, inputs, weights, nonzero_weights
        stored = layer.stored_weights
        self.static_values = (
            layer.neurons,
            self.inputs,
            sum(int(w.size) for w in stored),
            sum(int(np.count_nonzero(w)) for w in stored),
        )
        self._set_inputs(layer.input_shape, before, after, [np.ones(self.inputs), fanout], pad_value, dtype)

    def runner(self, n: int) -> Callable[[_Views, np.ndarray | None], np.ndarray]:
        """``run(views, out)`` for n frames: integrate and fire the frames in the input buffer
        (``views``: :meth:`_work`'s), writing the activations to ``out`` (the next layer's input
        interior, shaped like the potentials) and the counts to ``views.counts`` (see
        :meth:`layout`). Returns the potentials: (n, X, Y, F) for a Conv, (n, units) for a
        FullyConnected (overwritten by the firing, unless the layer has no activation)."""
        raise NotImplementedError


class _ConvStage(_Stage):
    """InputConv, Conv or SepConv: im2col + one matrix product, with max pooling folded into the im2col.

    A Conv is a true convolution, so its kernel is flipped once here and both kinds then
    cross-correlate. A SepConv is a Conv with its fused kernel (``SepConv.fused_weights``): its
    synaptic ops are the fused kernel's, each input event times its non-zero (tap, filter) pairs,
    which is how the engine does the work (depthwise and pointwise fused on one NP). A global
    average pool sums the products of all positions per filter (see :meth:`_sum_positions`).

    The im2col rows are, for each pooling-window member and each pooled position, the receptive
    field of the pre-pooling neuron there (then the bias input), so pooling is one
    ``max`` over members. When the pooling windows tile the map regularly, the im2col is a strided
    view of the padded input copied in one call (2.4 us vs 6.6 us with a gather for the MNIST Conv); with
    few channels the copy's contiguous runs get too short (12 us vs 3 us for the MNIST input
    layer), and clamped 'same' pooling windows (which repeat one of their own neurons; max ignores
    duplicates) are not strided at all: those use a gather by index.
    """

    def __init__(self, layer: ConvLayer) -> None:
        (x, y, c), (kx, ky), (sx, sy) = layer.input_shape, layer.kernel, layer.stride
        ox, px0, px1 = window_geometry(x, kx, sx, layer.padding)
        oy, py0, py1 = window_geometry(y, ky, sy, layer.padding)
        kernel = layer.fused_weights
        kernel = kernel if isinstance(layer, InputConv) else kernel[::-1, ::-1]
        filters = kernel.shape[-1]
        self.members_x = _pool_members(ox, layer.pool, 0, layer.padding)
        self.members_y = _pool_members(oy, layer.pool, 1, layer.padding)
        self.global_pool = layer.global_avg_pool
        self.positions = summed_positions(layer)
        pooled_x, pooled_y = (1, 1) if self.global_pool else (self.members_x.shape[1], self.members_y.shape[1])
        self.out_shape = (pooled_x, pooled_y, filters)
        self.members = self.members_x.shape[0] * self.members_y.shape[0]
        self.kernel, self.stride = (kx, ky), (sx, sy)
        reach_x, reach_y = _reach(x, kx, sx, ox, px0), _reach(y, ky, sy, oy, py0)
        nonzero = np.count_nonzero(kernel, axis=-1)  # (kx, ky, c)
        fanout = np.einsum("ia,jb,ijc->abc", reach_x, reach_y, nonzero).ravel()
        dense_ops = int(reach_x.sum() * reach_y.sum()) * c * filters
        pad_value = layer.padding_value if isinstance(layer, InputConv) else 0
        matrix = kernel.reshape(kx * ky * c, filters).astype(np.int64)
        self._finish(layer, matrix, fanout, dense_ops, (px0, py0), (px1, py1), pad_value)
        fields = _im2col_index(self.padded, self.kernel, self.stride, self.members_x, self.members_y)
        self.gather = np.concatenate([fields, np.full((len(fields), 1), self.size)], axis=1)  # + the bias input
        regular = _regular_pool(self.members_x) is not None and _regular_pool(self.members_y) is not None
        self.strided = regular and ky * c >= _STRIDED_MIN_RUN

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        rows, fan_in = self.gather.shape
        storage = super()._allocate(n)
        storage["fields"] = np.ones((n, rows, fan_in), dtype=self.dtype)  # receptive fields; bias column 1
        storage["products"] = np.empty((n, rows, self.matrix.shape[1]), dtype=self.dtype)  # pre-pooling
        if self.members > 1 or self.global_pool:
            storage["pooled"] = np.empty((n, int(np.prod(self.out_shape))), dtype=self.dtype)
        return storage

    def _make_views(self, n: int) -> _Views:
        views = super()._make_views(n)
        rows, fan_in = self.gather.shape
        views.fields = self._storage["fields"][:n]
        views.fields_rows = views.fields.reshape(n * rows, fan_in)
        views.products = self._storage["products"][:n].reshape(n * rows, -1)
        if self.members > 1 or self.global_pool:  # max over window members, or sum over all positions
            views.members = views.products.reshape(n, self.members * self.positions, -1)
            views.pooled = self._storage["pooled"][:n]
        pooled = self.members > 1 or self.global_pool
        views.potentials = (views.pooled if pooled else views.products).reshape(n, *self.out_shape)
        if self.strided:
            views.window = self._window(views.values)
            views.fields_window = views.fields[:, :, :-1].reshape(views.window.shape)  # all but the bias column
            assert np.may_share_memory(views.fields_window, views.fields)  # a view, not a copy
        return views

    def _window(self, values: np.ndarray) -> np.ndarray:
        """The im2col as a strided view of the padded input (rows and columns as in :func:`_im2col_index`)."""
        (kx, ky), (sx, sy), c = self.kernel, self.stride, self.padded[2]
        (wx, qx), (wy, qy) = self.members_x.shape, self.members_y.shape
        px, py = _regular_pool(self.members_x), _regular_pool(self.members_y)
        frame, along_x, along_y, channel = values.strides
        # the view stays inside the padded map (window_geometry's padding is what the windows need)
        assert (wx - 1 + (qx - 1) * px) * sx + kx <= self.padded[0]
        assert (wy - 1 + (qy - 1) * py) * sy + ky <= self.padded[1]
        return as_strided(
            values,
            shape=(values.shape[0], wx, wy, qx, qy, kx, ky, c),
            strides=(
                frame,
                sx * along_x,
                sy * along_y,
                px * sx * along_x,
                py * sy * along_y,
                along_x,
                along_y,
                channel,
            ),
            writeable=False,
        )

    def runner(self, n: int) -> Callable[[_Views, np.ndarray | None], np.ndarray]:
        return self._run

    def _run(self, views: _Views, out: np.ndarray | None) -> np.ndarray:
        np.minimum(views.values, self.ones, out=views.indicator)  # self._count(views), inlined
        views.dot(views.rows, self.counting, out=views.counts)
        if self.strided:
            np.copyto(views.fields_window, views.window)
        else:
            # indices are in range by construction; mode="wrap" skips the bounds-error path (1.6x faster)
            views.flat.take(self.gather, axis=1, out=views.fields, mode="wrap")
        np.dot(views.fields_rows, self.matrix, out=views.products)
        if self.global_pool:
            self._sum_positions(views)
        elif self.members > 1:
            np.maximum.reduce(views.members, axis=1, out=views.pooled)
        if self.firing is not None:
            self.firing(views.potentials, out)
        return views.potentials

    def _sum_positions(self, views: _Views) -> None:
        """Global average pool: the engine's running sum of the positions' potentials, x slowest (the
        products' row order), saturating at 20 bits. Summed at once where no partial sum can (or, for
        these frames, does) leave the range; else position by position."""
        if not self.saturates:
            np.add.reduce(views.members, axis=1, out=views.pooled)  # exact: _finish bounded the sums
            return
        partial = np.cumsum(views.members, axis=1)
        if partial.min(initial=0) >= POTENTIAL_MIN and partial.max(initial=0) <= POTENTIAL_MAX:
            views.pooled[...] = partial[:, -1]
            return
        total = views.pooled
        total[...] = 0
        for position in range(views.members.shape[1]):
            np.add(total, views.members[:, position], out=total)
            np.clip(total, POTENTIAL_MIN, POTENTIAL_MAX, out=total)


class _DenseStage(_Stage):
    """FullyConnected: one product of the flattened events with the weights.

    akida flattens (X, Y, C) with x fastest; the weight rows are permuted once so that a plain C-order
    reshape of the input lines up with them. A dense layer's event matrix is its input itself.

    At batch 1 a large layer multiplies only its events: it gathers the weight rows of the non-zero
    inputs (20 % of them in the MNIST model) and takes one product of (inputs, ones) with those
    rows, each extended by (fan-out, 1), after the bias row; that yields the potentials and the
    counts of :class:`_Inputs` together, and moves a fifth of the weights instead of all of them
    (the MNIST model's 3136 x 128 float32 weights are 1.6 MB): 17 us instead of 23 us plus 4 us of
    counting. Batches use the dense product (the union of their events is most of the inputs). A
    small layer (below ``_GATHER_MIN_WEIGHTS``) always multiplies the whole (input, indicator) rows
    of its buffer with its weights extended by the counting columns: one product for both.
    """

    def __init__(self, layer: Dense) -> None:
        x, y, c = layer.input_shape
        akida_row = np.arange(x * y * c).reshape(c, y, x).transpose(2, 1, 0).ravel()
        matrix = layer.weights[akida_row].astype(np.int64)
        self.out_shape = (1, 1, matrix.shape[1])
        self.units = matrix.shape[1]
        fanout = np.count_nonzero(matrix, axis=1)
        self._finish(layer, matrix, fanout, int(matrix.size))
        self.gathers = matrix.size >= _GATHER_MIN_WEIGHTS
        self.gathered = False  # whether the last run at batch 1 gathered (its counts' layout)
        self._gather_limit = int(self.inputs * _GATHER_MAX_DENSITY)
        if self.gathers:  # C order: each event's row is contiguous
            counted = np.column_stack([self.matrix[:-1], fanout, np.ones_like(fanout)])
            self.events_matrix = np.ascontiguousarray(counted, dtype=self.dtype)
        else:  # the counting columns after the units (0 in the bias row, like the counting table)
            self.matrix = np.concatenate([self.matrix, self.counting], axis=1)
        self.matrix = np.asfortranarray(self.matrix)  # BLAS reads it as rows of the transpose: 10 % faster at batch 1

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        storage = super()._allocate(n)
        storage["potentials"] = np.empty((n, self.units), dtype=self.dtype)
        return storage

    def _make_views(self, n: int) -> _Views:
        views = super()._make_views(n)
        views.potentials = self._storage["potentials"][:n]
        if self.gathers and n == 1:
            views.events_values = views.inputs[0, : self.inputs]
            if not hasattr(self, "_gathered"):  # kept across reallocations: batch 1 always gathers
                self._nonzero = np.empty(self.inputs, dtype=bool)
                self._gathered = np.zeros((self.inputs + 1, self.events_matrix.shape[1]), dtype=self.dtype)
                self._gathered[0, :-2] = self.matrix[-1]  # the bias row stays first
                # row 0: 1 (bias), then the event values; row 1: 0, then ones
                self._events = np.ones((2, self.inputs + 1), dtype=self.dtype)
                self._events[1, 0] = 0
                self._gathered_rows, self._event_values = self._gathered[1:], self._events[0, 1:]
        return views

    def runner(self, n: int) -> Callable[[_Views, np.ndarray | None], np.ndarray]:
        if not self.gathers:
            return self._run_counted
        return self._run_events if n == 1 else self._run_dense

    def _run_counted(self, views: _Views, out: np.ndarray | None) -> np.ndarray:
        np.minimum(views.values, self.ones, out=views.indicator)
        # (2n, units + 2): frame m's inputs, then its indicator, times (weights, 1, fan-out)
        product = views.dot(views.rows, self.matrix, out=views.counts)
        potentials = product[::2, : self.units]
        return self._fire(potentials, out)

    def _fire(self, potentials: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """Clip to the engine's 20-bit potentials where they can leave that range, then fire."""
        if self.saturates:
            np.clip(potentials, POTENTIAL_MIN, POTENTIAL_MAX, out=potentials)
        if self.firing is not None:
            self.firing(potentials, out)
        return potentials

    def _run_dense(self, views: _Views, out: np.ndarray | None) -> np.ndarray:
        self._count(views)
        potentials = np.matmul(views.inputs, self.matrix, out=views.potentials)
        return self._fire(potentials, out)

    def _run_events(self, views: _Views, out: np.ndarray | None) -> np.ndarray:
        nonzero = self._nonzero
        np.not_equal(views.events_values, 0, out=nonzero)
        index = nonzero.nonzero()[0]  # 7x faster on booleans than on floats
        events = index.size
        self.gathered = events <= self._gather_limit
        if not self.gathered:
            return self._run_dense(views, out)
        self.events_matrix.take(index, axis=0, out=self._gathered_rows[:events], mode="wrap")
        views.events_values.take(index, out=self._event_values[:events], mode="wrap")
        # (bias, events) x (units, fan-out, 1) -> (2, units + 2)
        product = views.dot(self._events[:, : events + 1], self._gathered[: events + 1], out=views.gathered_counts)
        potentials = product[:1, : self.units]
        return self._fire(potentials, out)

    def layout(self, n: int, gathered: bool = False) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        width = self.units + 2
        if gathered:  # row 0: potentials, (inputs . fan-out), input sum; row 1: 1's products
            return (2, width), np.array([width - 1]), np.array([2 * width - 1]), np.array([2 * width - 2])
        if self.gathers:
            return super().layout(n)
        # per frame, row 2m: potentials, input sum, (inputs . fan-out); row 2m + 1: indicator's products
        frame = 2 * width * np.arange(n)
        return (2 * n, width), frame + self.units, frame + width + self.units, frame + width + self.units + 1


def _regular_pool(members: np.ndarray) -> int | None:
    """The pooling stride if window member w of output q is simply ``q * stride + w``, else None."""
    window, out = members.shape
    stride = int(members[0, 1] - members[0, 0]) if out > 1 else 1
    regular = np.arange(window)[:, None] + np.arange(out)[None, :] * stride
    return stride if stride >= 1 and np.array_equal(members, regular) else None


def _pool_members(size: int, pool: MaxPool | None, axis: int, padding: Padding) -> np.ndarray:
    """members[w, q]: the pre-pooling coordinate of window member w of pooled output q (clamped)."""
    if pool is None:
        return np.arange(size)[None, :]
    window, stride = pool.size[axis], pool.stride[axis]
    out, before, _ = window_geometry(size, window, stride, padding)
    coordinate = np.arange(window)[:, None] + np.arange(out)[None, :] * stride - before
    return np.clip(coordinate, 0, size - 1)


def _im2col_index(
    padded: tuple[int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    members_x: np.ndarray,
    members_y: np.ndarray,
) -> np.ndarray:
    """Flat indices into the padded input: row = (member, pooled position), column = (kx, ky, c)."""
    (_, y, c), (kx, ky), (sx, sy) = padded, kernel, stride
    # axes: member_x, member_y, pooled_x, pooled_y, kernel_x, kernel_y
    at_x = members_x[:, None, :, None, None, None] * sx + np.arange(kx)[:, None]
    at_y = members_y[None, :, None, :, None, None] * sy + np.arange(ky)
    index = (at_x * y + at_y)[..., None] * c + np.arange(c)
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
    (about 0.1 MB per frame) in cache; measured 79 us per frame vs 84 us in batches of 100.
    Not thread-safe (work arrays are reused): use one Simulator per thread.
    """

    def __init__(self, model: AkidaModel, max_batch: int = 32) -> None:
        self.model = model
        self.max_batch = max_batch
        for layer, following in zip(model.layers[:-1], model.layers[1:], strict=True):
            if not layer.activation:
                raise ModelError(f"layer '{layer.name}' has no activation but is not the last layer")
            if following.input_shape != layer.output_shape:
                raise ModelError(
                    f"layer '{following.name}' takes {following.input_shape}, "
                    f"layer '{layer.name}' gives {layer.output_shape}"
                )
        self._stages = tuple(
            _DenseStage(layer) if isinstance(layer, Dense) else _ConvStage(layer) for layer in model.layers
        )
        self._outputs = _Outputs(model.layers[-1]) if model.layers[-1].activation else None
        self._input_shape, self._output_shape, self._input_max = model.input_shape, model.output_shape, model.input_max
        # the counts' constants: 0 (output_spikes of a layer without activation), then dense_synaptic_ops
        self._constants = np.array([0] + [stage.dense_ops for stage in self._stages], dtype=np.int64)
        # the counts buffer: float32 if every product writing to it is, and every count fits exactly
        dtypes = {stage.dtype for stage in self._stages} | {self._outputs.dtype if self._outputs else np.float32}
        largest = max(*self._constants, model.layers[-1].neurons)
        self._counts_dtype = np.float32 if dtypes == {np.float32} and largest < FLOAT32_EXACT else np.float64
        self._gatherers = [stage for stage in self._stages if isinstance(stage, _DenseStage) and stage.gathers]
        self._static = [
            dict(zip(("name", *STATIC), (stage.name, *stage.static_values), strict=True)) for stage in self._stages
        ]
        self._indices: dict[object, np.ndarray] = {}
        self._plans: dict[int, tuple] = {}
        self._capacity = 0

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
        expected = self._input_shape
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            raise DataError(f"frames must be a uint8 array, got {getattr(frames, 'dtype', type(frames).__name__)}")
        if frames.ndim != 4 or frames.shape[1:] != expected or frames.shape[0] == 0:
            raise DataError(f"frames must have shape (N>0, {', '.join(map(str, expected))}), got {frames.shape}")
        top = self._input_max
        if top < 255 and int(frames.max()) > top:  # as the engine, which refuses such frames
            raise DataError(
                f"frames hold values up to {int(frames.max())}; this model's "
                f"{self.model.input_data.input_bits}-bit InputData takes 0..{top}"
            )

    def _regions(self, n: int) -> tuple[list[dict[bool, int]], int, int, int]:
        """Where each producer of counts writes in the counts buffer for n frames: per layer, its
        counts' offset (and at batch 1, for a layer that gathers its events, its gathered product's);
        the last layer's output counts'; the constants'; and the buffer's size."""
        regions, size = [], 0
        for stage in self._stages:
            region = {}
            for gathered in (False, True) if n == 1 and stage in self._gatherers else (False,):
                region[gathered] = size
                size += int(np.prod(stage.layout(n, gathered)[0]))
            regions.append(region)
        final = size
        size += int(np.prod(self._outputs.layout(n)[0])) if self._outputs is not None else n
        return regions, final, size, size + len(self._constants)

    def _plan(self, n: int) -> tuple:
        """For n frames: where the frames go, (run, views, out) per layer, the output views, the
        counts buffer (every producer writes its counts there, through ``out=``) and the slot of
        the last layer's output events when it has no activation."""
        if n > self._capacity:  # the work arrays are about to grow: every cached view would be stale
            self._plans, self._capacity = {}, n
        views = [stage._work(n) for stage in self._stages]
        final = self._outputs._work(n) if self._outputs is not None else None
        regions, final_at, constants_at, size = self._regions(n)
        counts = np.zeros(size, dtype=self._counts_dtype)
        counts[constants_at:] = self._constants
        steps = []
        for stage, own, following, region in zip(self._stages, views, [*views[1:], final], regions, strict=True):
            for gathered, at in region.items():
                rows, columns = stage.layout(n, gathered)[0]
                region_counts = counts[at : at + rows * columns].reshape(rows, columns)
                setattr(own, "gathered_counts" if gathered else "counts", region_counts)
            out = None
            if following is not None:  # the next layer's input interior, shaped like this layer's potentials
                out = following.interior if isinstance(stage, _ConvStage) else following.interior.reshape(n, -1)
                assert np.may_share_memory(out, following.pair)
            # np.dot: 0.5 us less per call than np.matmul, but only writes an out= of its own dtype
            own.dot = np.dot if own.dtype == counts.dtype else np.matmul
            steps.append((stage.runner(n), own, out))
        if final is not None:
            final.counts = counts[final_at:constants_at].reshape(self._outputs.layout(n)[0])
            final.dot = np.dot if final.dtype == counts.dtype else np.matmul
        shape = (n, *self._output_shape)
        plan = self._plans[n] = (views[0].interior, tuple(steps), final, counts, counts[final_at : final_at + n], shape)
        return plan

    def _run_batch(self, frames: np.ndarray) -> SimResult:
        n = frames.shape[0]
        first, steps, final, counts, emitted, shape = self._plans.get(n) or self._plan(n)
        np.copyto(first, frames)
        for run, views, out in steps:
            potentials = run(views, out)
        if final is not None:
            self._outputs._count(final)
            result = final.interior.astype(np.uint8)
        else:  # the last layer emits its potentials: return them as int32, count their non-zeros
            result = potentials.astype(np.int32).reshape(shape)
            emitted[:] = np.count_nonzero(result) if n == 1 else np.count_nonzero(result.reshape(n, -1), axis=1)
        # the counts' layout depends on n and, at batch 1, on which layers gathered their events
        key = n if n > 1 or not self._gatherers else tuple([stage.gathered for stage in self._gatherers])
        index = self._indices.get(key)
        if index is None:
            index = self._indices[key] = self._count_index(n)
        # every count is an exact integer in its float: one gather into (layers, PER_FRAME, n), one cast
        return SimResult(result, self._counters(counts.take(index).astype(np.int64)))

    def _count_index(self, n: int) -> np.ndarray:
        """Where each counter is in the counts buffer of :meth:`_plan`: (layers, PER_FRAME, n)."""
        regions, final_at, constants_at, _ = self._regions(n)
        sums, events, synaptic = [], [], []
        for stage, region in zip(self._stages, regions, strict=True):
            gathered = n == 1 and stage in self._gatherers and stage.gathered
            _, *where = stage.layout(n, gathered)
            for found, at in zip((sums, events, synaptic), where, strict=True):
                found.append(region[gathered] + at)
        if self._outputs is None:
            sums.append(np.full(n, constants_at))  # the constant 0
            events.append(final_at + np.arange(n))
        else:
            _, spikes, emitted, _ = self._outputs.layout(n)
            sums.append(final_at + spikes)
            events.append(final_at + emitted)
        index = np.empty((len(self._stages), len(PER_FRAME), n), dtype=np.int64)
        for k in range(len(self._stages)):
            index[k, _INPUT_EVENTS] = events[k]
            index[k, _SYNAPTIC_OPS] = synaptic[k]
            index[k, _OUTPUT_EVENTS] = events[k + 1]  # a layer's output events are the next one's input events
            index[k, _OUTPUT_SPIKES] = sums[k + 1]  # ... and its spikes the next one's input sum
            index[k, _DENSE_SYNAPTIC_OPS] = constants_at + 1 + k
        return index

    def _counters(self, counts: np.ndarray) -> Counters:
        per_frame = len(PER_FRAME)
        rows = list(counts.reshape(-1, counts.shape[-1]))  # (layers * PER_FRAME) arrays of n counts
        return Counters(
            tuple(
                [
                    LayerCounters._of(static, rows[k * per_frame : (k + 1) * per_frame])
                    for k, static in enumerate(self._static)
                ]
            )
        )
