"""The simulator's layers: each one's input buffer, im2col, product, pooling, firing and counting product.

Why one module of ~480 lines: the three stage kinds share the base's buffers and count layout,
and are read together. The reasons behind the arithmetic are in simulator.py's docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .akida_model import ConvLayer, Dense, InputConv, Layer
from .akida_rules import (
    FLOAT32_EXACT,
    POTENTIAL_MAX,
    POTENTIAL_MIN,
    Firing,
    exact_dtype,
    im2col_index,
    kernel_reach,
    pool_members,
    potential_extremes,
    regular_pool,
    saturates,
    summed_positions,
    window_geometry,
)
from .errors import ModelError

_STRIDED_MIN_RUN = 16  # im2col by a strided copy when each (kernel row, channels) run has this many values
_GATHER_MIN_WEIGHTS = 2**16  # at batch 1 a FullyConnected with this many weights multiplies only its events
_GATHER_MAX_DENSITY = 0.3  # ... unless more of its inputs than this are events (then the dense product is faster)


class Views:
    """Attribute bag: one stage's views of its work arrays for one batch size.

    Which are set depends on the stage kind (see each ``_make_views``) and, for ``counts``,
    ``gathered_counts`` and ``dot``, on the simulator's plan for the batch size.
    """

    dtype: type
    pair: np.ndarray  # (n, 2, P + 1): per frame, the inputs then the indicator
    inputs: np.ndarray
    values: np.ndarray
    indicator: np.ndarray
    interior: np.ndarray
    rows: np.ndarray
    flat: np.ndarray
    counts: np.ndarray
    gathered_counts: np.ndarray
    dot: Callable[..., np.ndarray]
    potentials: np.ndarray
    # a Conv's
    fields: np.ndarray
    fields_rows: np.ndarray
    products: np.ndarray
    members: np.ndarray
    pooled: np.ndarray
    window: np.ndarray
    fields_window: np.ndarray
    # a FullyConnected's at batch 1, when it gathers its events
    events_values: np.ndarray


class Inputs:
    """A layer's input buffer, and the counting of its input events in one small product.

    Per frame the buffer holds the padded input map (``P`` values, C-order over the padded X, Y, C)
    and a constant 1 (the bias input, see :class:`Stage`), then a same-sized indicator map and a 0.
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
        counting: np.ndarray = np.zeros((self.size + 1, len(columns)), dtype=dtype)
        interior = counting[: self.size].reshape(*self.padded, len(columns))[bx : bx + x, by : by + y]
        for index, column in enumerate(columns):
            interior[..., index] = column.reshape(shape)
        # Fortran order: BLAS reads each column contiguously (2x faster than C order at batch 1)
        self.counting = np.asfortranarray(counting)
        self.ones: np.ndarray = np.ones(self.padded, dtype=dtype)
        self._capacity = 0
        self._views: dict[int, Views] = {}

    def _work(self, n: int) -> Views:
        """Views of the work arrays for n frames; the arrays grow to the largest n seen."""
        views = self._views.get(n)
        if views is None:
            if n > self._capacity:
                self._storage, self._capacity, self._views = self._allocate(n), n, {}
            views = self._views[n] = self._make_views(n)
        return views

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        """Work arrays for n frames, each with the frame as its first axis."""
        pair: np.ndarray = np.zeros((n, 2, self.size + 1), dtype=self.dtype)
        pair[:, 0, : self.size] = self.pad_value
        pair[:, 0, self.size] = 1  # the bias input
        return {"pair": pair}

    def _make_views(self, n: int) -> Views:
        (x, y, _), (bx, by) = self.shape, self.before
        views = Views()
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

    def _count(self, views: Views) -> None:
        """(2n, columns) sums into ``views.counts``: row 2m is frame m's inputs times ``counting``,
        row 2m + 1 its indicator's."""
        np.minimum(views.values, self.ones, out=views.indicator)
        views.dot(views.rows, self.counting, out=views.counts)

    def layout(self, n: int, gathered: bool = False) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
        """The counts' array (shape) and where in it (flat) are the input sums, events and synaptic ops."""
        columns = self.counting.shape[1]
        frame = 2 * columns * np.arange(n)
        return (2 * n, columns), frame, frame + columns, frame + columns + 1


class Outputs(Inputs):
    """Receives the last layer's activations; counts their sum (output_spikes) and non-zeros (events)."""

    def __init__(self, layer: Layer) -> None:
        dtype = exact_dtype(layer.neurons * (2**layer.act_bits - 1))
        self._set_inputs(layer.output_shape, (0, 0), (0, 0), [np.ones(layer.neurons)], 0, dtype)


class Stage(Inputs):
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
    firing: Firing | None
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
        counting_dtype = exact_dtype(max(int(fanout.sum()), self.inputs * input_max))
        # one dtype for the input buffer, the products and the counting (float64 if either needs it)
        dtype = np.promote_types(exact_dtype(largest_sum), counting_dtype).type
        max_potential = potential_extremes(layer, matrix)[1]
        self.saturates = saturates(layer, matrix)
        self.firing = None
        bias = np.zeros((1, matrix.shape[1]), dtype=np.int64)
        if layer.activation:
            shape = (self.out_shape[2],) if isinstance(layer, Dense) else self.out_shape
            self.firing = Firing(layer, max_potential, largest_sum < FLOAT32_EXACT, shape)
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

    def runner(self, n: int) -> Callable[[Views, np.ndarray | None], np.ndarray]:
        """``run(views, out)`` for n frames: integrate and fire the frames in the input buffer
        (``views``: :meth:`_work`'s), writing the activations to ``out`` (the next layer's input
        interior, shaped like the potentials) and the counts to ``views.counts`` (see
        :meth:`layout`). Returns the potentials: (n, X, Y, F) for a Conv, (n, units) for a
        FullyConnected (overwritten by the firing, unless the layer has no activation)."""
        raise NotImplementedError


class ConvStage(Stage):
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
        self.members_x = pool_members(ox, layer.pool, 0, layer.padding)
        self.members_y = pool_members(oy, layer.pool, 1, layer.padding)
        self.global_pool = layer.global_avg_pool
        self.positions = summed_positions(layer)
        pooled_x, pooled_y = (1, 1) if self.global_pool else (self.members_x.shape[1], self.members_y.shape[1])
        self.out_shape = (pooled_x, pooled_y, filters)
        self.members = self.members_x.shape[0] * self.members_y.shape[0]
        self.kernel, self.stride = (kx, ky), (sx, sy)
        reach_x, reach_y = kernel_reach(x, kx, sx, ox, px0), kernel_reach(y, ky, sy, oy, py0)
        nonzero = np.count_nonzero(kernel, axis=-1)  # (kx, ky, c)
        fanout = np.einsum("ia,jb,ijc->abc", reach_x, reach_y, nonzero).ravel()
        dense_ops = int(reach_x.sum() * reach_y.sum()) * c * filters
        pad_value = layer.padding_value if isinstance(layer, InputConv) else 0
        matrix = kernel.reshape(kx * ky * c, filters).astype(np.int64)
        self._finish(layer, matrix, fanout, dense_ops, (px0, py0), (px1, py1), pad_value)
        fields = im2col_index(self.padded, self.kernel, self.stride, self.members_x, self.members_y)
        self.gather = np.concatenate([fields, np.full((len(fields), 1), self.size)], axis=1)  # + the bias input
        regular = regular_pool(self.members_x) is not None and regular_pool(self.members_y) is not None
        self.strided = regular and ky * c >= _STRIDED_MIN_RUN

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        rows, fan_in = self.gather.shape
        storage = super()._allocate(n)
        storage["fields"] = np.ones((n, rows, fan_in), dtype=self.dtype)  # receptive fields; bias column 1
        storage["products"] = np.empty((n, rows, self.matrix.shape[1]), dtype=self.dtype)  # pre-pooling
        if self.members > 1 or self.global_pool:
            storage["pooled"] = np.empty((n, int(np.prod(self.out_shape))), dtype=self.dtype)
        return storage

    def _make_views(self, n: int) -> Views:
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
        """The im2col as a strided view of the padded input (rows and columns as in :func:`im2col_index`)."""
        (kx, ky), (sx, sy), c = self.kernel, self.stride, self.padded[2]
        (wx, qx), (wy, qy) = self.members_x.shape, self.members_y.shape
        px, py = regular_pool(self.members_x), regular_pool(self.members_y)
        assert px is not None and py is not None  # strided only when both pool regularly
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

    def runner(self, n: int) -> Callable[[Views, np.ndarray | None], np.ndarray]:
        return self._run

    def _run(self, views: Views, out: np.ndarray | None) -> np.ndarray:
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
            assert out is not None  # a layer that fires has the next layer's (or the outputs') input to fire into
            self.firing(views.potentials, out)
        return views.potentials

    def _sum_positions(self, views: Views) -> None:
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


class DenseStage(Stage):
    """FullyConnected: one product of the flattened events with the weights.

    akida flattens (X, Y, C) with x fastest; the weight rows are permuted once so that a plain C-order
    reshape of the input lines up with them. A dense layer's event matrix is its input itself.

    At batch 1 a large layer multiplies only its events: it gathers the weight rows of the non-zero
    inputs (20 % of them in the MNIST model) and takes one product of (inputs, ones) with those
    rows, each extended by (fan-out, 1), after the bias row; that yields the potentials and the
    counts of :class:`Inputs` together, and moves a fifth of the weights instead of all of them
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
            self.events_matrix: np.ndarray = np.ascontiguousarray(counted, dtype=self.dtype)
        else:  # the counting columns after the units (0 in the bias row, like the counting table)
            self.matrix = np.concatenate([self.matrix, self.counting], axis=1)
        self.matrix = np.asfortranarray(self.matrix)  # BLAS reads it as rows of the transpose: 10 % faster at batch 1

    def _allocate(self, n: int) -> dict[str, np.ndarray]:
        storage = super()._allocate(n)
        storage["potentials"] = np.empty((n, self.units), dtype=self.dtype)
        return storage

    def _make_views(self, n: int) -> Views:
        views = super()._make_views(n)
        views.potentials = self._storage["potentials"][:n]
        if self.gathers and n == 1:
            views.events_values = views.inputs[0, : self.inputs]
            if not hasattr(self, "_gathered"):  # kept across reallocations: batch 1 always gathers
                self._nonzero = np.empty(self.inputs, dtype=bool)
                self._gathered: np.ndarray = np.zeros((self.inputs + 1, self.events_matrix.shape[1]), dtype=self.dtype)
                self._gathered[0, :-2] = self.matrix[-1]  # the bias row stays first
                # row 0: 1 (bias), then the event values; row 1: 0, then ones
                self._events: np.ndarray = np.ones((2, self.inputs + 1), dtype=self.dtype)
                self._events[1, 0] = 0
                self._gathered_rows, self._event_values = self._gathered[1:], self._events[0, 1:]
        return views

    def runner(self, n: int) -> Callable[[Views, np.ndarray | None], np.ndarray]:
        if not self.gathers:
            return self._run_counted
        return self._run_events if n == 1 else self._run_dense

    def _run_counted(self, views: Views, out: np.ndarray | None) -> np.ndarray:
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
            assert out is not None  # as in ConvStage._run
            self.firing(potentials, out)
        return potentials

    def _run_dense(self, views: Views, out: np.ndarray | None) -> np.ndarray:
        self._count(views)
        potentials = np.matmul(views.inputs, self.matrix, out=views.potentials)
        return self._fire(potentials, out)

    def _run_events(self, views: Views, out: np.ndarray | None) -> np.ndarray:
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
