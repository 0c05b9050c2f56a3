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
:class:`DenseStage`). The event counts do not come from the potentials' product but from event
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

from dataclasses import dataclass

import numpy as np

from .akida_model import AkidaModel, Dense
from .akida_rules import FLOAT32_EXACT
from .counters import PER_FRAME, STATIC, Counters, LayerCounters, concatenate
from .errors import DataError, ModelError
from .sim_stages import ConvStage, DenseStage, Outputs

# rows of the per-layer count table, in counters.PER_FRAME order
_INPUT_EVENTS, _SYNAPTIC_OPS, _OUTPUT_EVENTS, _OUTPUT_SPIKES, _DENSE_SYNAPTIC_OPS = range(len(PER_FRAME))


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
            DenseStage(layer) if isinstance(layer, Dense) else ConvStage(layer) for layer in model.layers
        )
        self._outputs = Outputs(model.layers[-1]) if model.layers[-1].activation else None
        self._input_shape, self._output_shape, self._input_max = model.input_shape, model.output_shape, model.input_max
        # the counts' constants: 0 (output_spikes of a layer without activation), then dense_synaptic_ops
        self._constants = np.array([0] + [stage.dense_ops for stage in self._stages], dtype=np.int64)
        # the counts buffer: float32 if every product writing to it is, and every count fits exactly
        dtypes = {stage.dtype for stage in self._stages} | {self._outputs.dtype if self._outputs else np.float32}
        largest = max(*self._constants, model.layers[-1].neurons)
        self._counts_dtype = np.float32 if dtypes == {np.float32} and largest < FLOAT32_EXACT else np.float64
        self._gatherers = [stage for stage in self._stages if isinstance(stage, DenseStage) and stage.gathers]
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
            input_data = self.model.input_data
            assert input_data is not None  # only an InputData takes fewer than 8 bits
            raise DataError(
                f"frames hold values up to {int(frames.max())}; this model's "
                f"{input_data.input_bits}-bit InputData takes 0..{top}"
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
                out = following.interior if isinstance(stage, ConvStage) else following.interior.reshape(n, -1)
                assert np.may_share_memory(out, following.pair)
            # np.dot: 0.5 us less per call than np.matmul, but only writes an out= of its own dtype
            own.dot = np.dot if own.dtype == counts.dtype else np.matmul
            steps.append((stage.runner(n), own, out))
        if final is not None and self._outputs is not None:  # both or neither: the last layer fires
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
        outputs = self._outputs
        if final is not None and outputs is not None:  # both or neither (see _plan)
            outputs._count(final)
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
        sums: list[np.ndarray] = []
        events: list[np.ndarray] = []
        synaptic: list[np.ndarray] = []
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
