"""The simulator against akida's own engine (``akida.Model.forward``), and its counters against a
plain-loop reference. Each test named in docs/akida-semantics.md pins one rule of the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import akida
import numpy as np
import pytest
from akida_random import (
    EVERY_KIND,
    Draw,
    mnist_like,
    model_frames,
    random_model,
    saturating_models,
    set_random_variables,
)
from akida_reference import POTENTIAL_MAX, reference_forward

from edge_runtime import akida_rules, cli, sim_stages, simulator
from edge_runtime.akida_model import Conv, Dense, InputConv, InputData, SepConv, from_akida, load_model
from edge_runtime.akida_rules import fire, window_geometry
from edge_runtime.counters import PER_FRAME, STATIC
from edge_runtime.energy import DeviceProfile
from edge_runtime.errors import DataError, ModelError
from edge_runtime.simulator import Simulator

RANDOM_MODELS = 300


def _input_conv(shape, kernel=(3, 3), filters=1, **kwargs) -> akida.InputConvolutional:
    return akida.InputConvolutional(
        input_shape=shape, kernel_size=kernel, filters=filters, name="input", weights_bits=8, **kwargs
    )


def _set(layer, weights, threshold=0, act_step=1.0) -> None:
    filters = weights.shape[-1]
    layer.variables["weights"] = np.asarray(weights, dtype=np.int8)
    layer.variables["threshold"] = np.broadcast_to(np.asarray(threshold, dtype=np.int32), (filters,)).copy()
    layer.variables["act_step"] = np.broadcast_to(np.asarray(act_step, dtype=np.float32), (filters,)).copy()


def _simulate(model: akida.Model, frames: np.ndarray) -> np.ndarray:
    return Simulator(from_akida(model)).run(frames).outputs


def _naive_rule(potentials, threshold, act_step, act_bits):
    """The documented-looking float rule that the engine does NOT follow for arbitrary act_step."""
    step = act_step.astype(np.float64) * 2.0 ** (4 - act_bits)
    return np.clip(np.ceil((potentials - threshold) / step), 0, 2**act_bits - 1)


# ---------------------------------------------------------------------------------------------
# Bit-exactness on random models


def _input_layers(model: akida.Model) -> int:
    """How many layers a prefix must keep: an InputData alone is not a model we run."""
    return 2 if model.layers[0].parameters.layer_type == akida.LayerType.InputData else 1


def test_random_models_match_engine_bit_exact():
    """>= 300 random Akida 1.0 models of every layer kind and option; every layer's output compared
    (the model, then each prefix)."""
    rng = np.random.default_rng(20240611)
    compared = mismatched = 0
    seen = {
        "pool": 0,
        "global_pool": 0,
        "valid": 0,
        "stride2": 0,
        "exact_path": 0,
        "fast_path": 0,
        "potentials": 0,
        "saturated": 0,
    }
    seen.update({f"act_bits={b}": 0 for b in (1, 2, 4)} | {f"weights_bits={b}": 0 for b in (1, 2, 4, 8)})
    seen.update({f"input_bits={b}": 0 for b in (1, 2, 4)} | {f"kernel={k}": 0 for k in (1, 3, 5, 7)})
    seen.update(
        {kind: 0 for kind in ("InputConvolutional", "Convolutional", "SeparableConvolutional", "FullyConnected")}
    )
    for _ in range(RANDOM_MODELS):
        model = random_model(rng, EVERY_KIND)
        frames = model_frames(rng, model, 3)
        _note_features(model, seen)
        while True:
            ours = Simulator(from_akida(model))
            expected = model.forward(frames)
            got = ours.run(frames).outputs
            assert got.shape == expected.shape and got.dtype == expected.dtype
            compared += expected.size
            mismatched += int(np.count_nonzero(got != expected))
            for stage in ours._stages:
                if stage.firing is not None:
                    seen["fast_path" if stage.firing.fast else "exact_path"] += 1
                seen["saturated"] += stage.saturates
            seen["potentials"] += expected.dtype == np.int32
            if model.layer_count == _input_layers(model):
                break
            model.pop_layer()
    assert mismatched == 0, f"{mismatched} of {compared} outputs differ from akida's engine"
    assert compared > 100_000
    assert all(count > 0 for count in seen.values()), seen  # every feature was exercised


def _note_features(model: akida.Model, seen: dict[str, int]) -> None:
    for layer in model.layers:
        params = layer.parameters
        kind = params.layer_type
        if kind == akida.LayerType.InputData:
            seen[f"input_bits={params.input_bits}"] += 1
            continue
        seen[kind.name] += 1
        seen[f"act_bits={params.act_bits}"] += 1
        if kind != akida.LayerType.InputConvolutional:
            seen[f"weights_bits={params.weights_bits}"] += 1
        if kind != akida.LayerType.FullyConnected:
            seen["pool"] += params.pool_type == 1  # PoolType.Max; parameters report plain ints
            seen["global_pool"] += params.pool_type == 2  # PoolType.Average
            seen["valid"] += params.padding == 0
            seen["stride2"] += params.stride_x == 2
            seen[f"kernel={params.kernel_width}"] += 1


# ---------------------------------------------------------------------------------------------
# The activation rule


def _potential_probe(weights: np.ndarray, act_bits: int, threshold, act_step, activation: bool = True):
    """One InputConv whose filter f's potential at pixel p is weights[f] * p: potentials we control."""
    filters = weights.size
    model = akida.Model()
    model.add(_input_conv((16, 16, 1), filters=filters, act_bits=act_bits, activation=activation))
    kernel = np.zeros((3, 3, 1, filters), dtype=np.int8)
    kernel[1, 1, 0] = weights
    _set(model.layers[0], kernel, threshold, act_step)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    potentials = pixels.astype(np.int64)[..., None, :] * weights  # (1, 16, 16, 1, filters) -> per filter
    return model, pixels, potentials.reshape(1, 16, 16, filters)


@pytest.mark.parametrize("act_bits", [1, 2, 4])
def test_activation_rule_matches_engine_on_potential_sweep(act_bits):
    """Engine rule: t16 = floor(act_step * 16); out = min(ceil((pot - thr) * 2**act_bits / t16), top).

    Swept over every potential weight * pixel for pixel 0..255, 64 filters with arbitrary float32
    act_steps and thresholds. At 4 bits the naive float formula ceil((pot - thr) / (act_step *
    2**(4 - act_bits))) must disagree somewhere, else the sweep could not tell the rules apart; at 1
    and 2 bits the two rules provably agree on integer potentials (the thresholds k * t16 / 2**act_bits
    for k <= 2 have no integer between them and k * 16 * act_step / 2**act_bits)."""
    rng = np.random.default_rng(act_bits)
    filters = 64  # small weights sweep potentials densely (every integer near every step); a few large ones
    weights = np.concatenate([rng.integers(-2, 4, 48), rng.integers(-128, 128, 16)]).astype(np.int8)
    threshold = rng.integers(-100, 300, filters).astype(np.int32)
    act_step = np.exp(rng.uniform(np.log(1 / 16), np.log(100), filters)).astype(np.float32)
    model, pixels, potentials = _potential_probe(weights, act_bits, threshold, act_step)
    expected = model.forward(pixels)
    assert np.array_equal(fire(potentials, threshold, act_step, act_bits), expected)
    assert np.array_equal(_simulate(model, pixels), expected)
    naive_misses = np.count_nonzero(_naive_rule(potentials, threshold, act_step, act_bits) != expected)
    assert naive_misses > 0 if act_bits == 4 else naive_misses == 0
    assert len(np.unique(expected)) == 2**act_bits  # every level was reached


def test_engine_wraparound_is_reproduced():
    """Thresholds near the int32 limits and act_steps up to 2**20 make the engine's 32-bit numerator
    wrap; the simulator then takes its integer path and still matches."""
    rng = np.random.default_rng(7)
    filters = 64
    weights = rng.integers(-128, 128, filters).astype(np.int8)
    threshold = rng.integers(-(2**31), 2**31 - 1, filters, dtype=np.int64).astype(np.int32)
    act_step = np.exp(rng.uniform(np.log(1 / 16), np.log(1048575), filters)).astype(np.float32)
    model, pixels, potentials = _potential_probe(weights, 4, threshold, act_step)
    expected = model.forward(pixels)
    assert np.array_equal(fire(potentials, threshold, act_step, 4), expected)
    simulator = Simulator(from_akida(model))
    assert not simulator._stages[0].firing.fast
    assert np.array_equal(simulator.run(pixels).outputs, expected)
    unwrapped = np.clip(np.ceil((potentials - threshold.astype(np.int64)) * 16 / np.floor(act_step * 16.0)), 0, 15)
    assert np.count_nonzero(unwrapped != expected) > 0  # the wrap-around is really exercised


def test_layer_without_activation_returns_int32_potentials():
    model, pixels, potentials = _potential_probe(np.array([3, -5], dtype=np.int8), 4, 0, 1.0, activation=False)
    expected = model.forward(pixels)
    assert expected.dtype == np.int32
    assert np.array_equal(expected, potentials)
    assert np.array_equal(_simulate(model, pixels), expected)


# ---------------------------------------------------------------------------------------------
# Geometry: padding, stride, correlation vs convolution, pooling, flattening


def _impulse(shape, at, value=10) -> np.ndarray:
    frame = np.zeros((1, *shape), dtype=np.uint8)
    frame[(0, *at)] = value
    return frame


def test_same_padding_puts_odd_extra_after():
    """'same' with stride 2 on an even side pads 0 before and 1 after (3x3 kernel, side 8)."""
    model = akida.Model()
    model.add(_input_conv((8, 8, 1), kernel_stride=(2, 2), activation=False))
    kernel = np.zeros((3, 3, 1, 1), dtype=np.int8)
    kernel[0, 0] = 1  # output (o, p) sees input (2o + 0 - before, 2p + 0 - before)
    _set(model.layers[0], kernel)
    frame = _impulse((8, 8, 1), (0, 0, 0), 200)
    expected = model.forward(frame)
    assert expected.shape == (1, 4, 4, 1)
    assert expected[0, 0, 0, 0] == 200  # padding before is 0, so output (0, 0) sees input (0, 0)
    assert window_geometry(8, 3, 2, "same") == (4, 0, 1)
    assert np.array_equal(_simulate(model, frame), expected)


def test_input_layer_pads_with_padding_value():
    model = akida.Model()
    model.add(_input_conv((5, 5, 1), padding_value=7, activation=False))
    _set(model.layers[0], np.ones((3, 3, 1, 1)))
    frame = np.zeros((1, 5, 5, 1), dtype=np.uint8)
    expected = model.forward(frame)[0, :, :, 0]
    assert expected[0, 0] == 5 * 7 and expected[0, 2] == 3 * 7 and expected[2, 2] == 0
    assert np.array_equal(_simulate(model, frame)[0, :, :, 0], expected)


def test_input_conv_cross_correlates_and_conv_convolves():
    """A single tap at kernel (0, 0) moves an impulse at (4, 4) to (5, 5) in the input layer
    (cross-correlation) but to (3, 3) in a Convolutional layer (true convolution: kernel flipped)."""
    model = akida.Model()
    model.add(_input_conv((9, 9, 1), act_bits=4))
    tap = np.zeros((3, 3, 1, 1), dtype=np.int8)
    tap[0, 0] = 1
    _set(model.layers[0], tap)
    model.add(akida.Convolutional(kernel_size=(3, 3), filters=1, name="conv", weights_bits=4, activation=False))
    _set(model.layers[1], tap)
    frame = _impulse((9, 9, 1), (4, 4, 0))
    conv_out = model.forward(frame)[0, :, :, 0]
    assert list(zip(*np.nonzero(conv_out), strict=True)) == [(4, 4)]  # (4,4) -> (5,5) -> (4,4)
    model.pop_layer()
    input_out = model.forward(frame)[0, :, :, 0]
    assert list(zip(*np.nonzero(input_out), strict=True)) == [(5, 5)]
    assert np.array_equal(_simulate(model, frame)[0, :, :, 0], input_out)


def test_conv_layer_flips_kernel_on_both_axes():
    """Same as above with an asymmetric tap: Conv kernel tap (0, 2) moves (4, 4) to (3, 5) after the
    input layer's centre tap leaves it in place."""
    model = akida.Model()
    model.add(_input_conv((9, 9, 1), act_bits=4))
    centre = np.zeros((3, 3, 1, 1), dtype=np.int8)
    centre[1, 1] = 1
    _set(model.layers[0], centre)
    model.add(akida.Convolutional(kernel_size=(3, 3), filters=1, name="conv", weights_bits=4, activation=False))
    tap = np.zeros((3, 3, 1, 1), dtype=np.int8)
    tap[0, 2] = 3
    _set(model.layers[1], tap)
    frame = _impulse((9, 9, 1), (4, 4, 0))
    expected = model.forward(frame)[0, :, :, 0]
    assert list(zip(*np.nonzero(expected), strict=True)) == [(3, 5)]
    assert np.array_equal(_simulate(model, frame)[0, :, :, 0], expected)


def test_dense_flattens_x_fastest():
    """FullyConnected reads its (X, Y, C) input in Fortran order: index = x + X * (y + Y * c)."""
    model = akida.Model()
    model.add(_input_conv((2, 3, 1), filters=2, act_bits=4))
    kernel = np.zeros((3, 3, 1, 2), dtype=np.int8)
    kernel[1, 1, 0] = [1, 2]
    _set(model.layers[0], kernel)
    model.add(akida.FullyConnected(units=12, name="dense", weights_bits=4, activation=False))
    _set(model.layers[1], np.eye(12).reshape(1, 1, 12, 12))
    frame = np.arange(1, 7, dtype=np.uint8).reshape(1, 2, 3, 1)
    activations = np.concatenate([frame[0], 2 * frame[0]], axis=-1).astype(np.int32)  # (X, Y, C)
    expected = model.forward(frame)[0, 0, 0]
    assert np.array_equal(expected, activations.ravel(order="F"))
    assert np.array_equal(_simulate(model, frame)[0, 0, 0], expected)


def test_pooling_same_pads_with_nothing_and_rounds_up():
    """Max pooling acts on potentials; 'same' gives ceil(side / stride) and its windows past the
    edge see only real neurons (all potentials here are negative, a zero pad would show as 0);
    'valid' gives floor."""
    for padding, side in ((akida.Padding.Same, 3), (akida.Padding.Valid, 1)):
        model = akida.Model()
        model.add(
            _input_conv((5, 5, 1), padding=padding, activation=False, pool_type=akida.PoolType.Max, pool_size=(2, 2))
        )
        _set(model.layers[0], -np.ones((3, 3, 1, 1)))
        frame = np.random.default_rng(1).integers(1, 256, (1, 5, 5, 1)).astype(np.uint8)
        expected = model.forward(frame)
        assert expected.shape[1:3] == (side, side)
        assert np.all(expected < 0)
        assert np.array_equal(_simulate(model, frame), expected)


# ---------------------------------------------------------------------------------------------
# Counters


def _layer_facts(layer: akida.Layer) -> tuple[str, tuple[int, int], int, np.ndarray, np.ndarray | None]:
    """(type, stride, padding, weights, pointwise weights) copied out of an engine layer, before any
    pop_layer."""
    params = layer.parameters
    kind = params.layer_type.name
    weights = layer.variables["weights"].astype(np.int64)
    if kind == "FullyConnected":
        return kind, (1, 1), 0, weights, None
    pointwise = layer.variables["weights_pw"].astype(np.int64) if kind == "SeparableConvolutional" else None
    return kind, (params.stride_x, params.stride_y), params.padding, weights, pointwise


def _loop_counts(facts: tuple, x: np.ndarray) -> dict[str, int]:
    """input_events, synaptic_ops and dense_synaptic_ops of one frame, by plain loops over neurons.

    A SeparableConvolutional is counted as the engine does its work, depthwise and pointwise fused:
    an (input event, tap, filter) is one synaptic op when the depthwise tap of the event's channel and
    the pointwise weight of (channel, filter) are both non-zero; dense ops count every (tap, channel,
    filter) like a Convolutional with as many filters."""
    kind, (stride_x, stride_y), padding, weights, pointwise = facts
    counts = {"input_events": int(np.count_nonzero(x)), "synaptic_ops": 0, "dense_synaptic_ops": 0}
    if kind == "FullyConnected":
        flat = x.ravel(order="F")
        for i in range(flat.size):
            for unit in range(weights.shape[-1]):
                counts["dense_synaptic_ops"] += 1
                counts["synaptic_ops"] += bool(flat[i] != 0 and weights[0, 0, i, unit] != 0)
        return counts
    if kind != "InputConvolutional":
        weights = weights[::-1, ::-1]  # true convolution
    kx, ky, channels, filters = weights.shape
    if pointwise is not None:
        filters = pointwise.shape[-1]
    side_x, side_y = x.shape[:2]
    out_x, before_x = _reference_pads(side_x, kx, stride_x, padding)
    out_y, before_y = _reference_pads(side_y, ky, stride_y, padding)
    for ox in range(out_x):
        for oy in range(out_y):
            for i in range(kx):
                for j in range(ky):
                    a, b = ox * stride_x + i - before_x, oy * stride_y + j - before_y
                    if not (0 <= a < side_x and 0 <= b < side_y):
                        continue
                    for c in range(channels):
                        for f in range(filters):
                            if pointwise is None:
                                nonzero = weights[i, j, c, f] != 0
                            else:
                                nonzero = weights[i, j, c, 0] != 0 and pointwise[0, 0, c, f] != 0
                            counts["dense_synaptic_ops"] += 1
                            counts["synaptic_ops"] += bool(x[a, b, c] != 0 and nonzero)
    return counts


def _reference_pads(side: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    if padding == 0:  # valid
        return (side - kernel) // stride + 1, 0
    out = -(-side // stride)
    return out, max((out - 1) * stride + kernel - side, 0) // 2


def test_counters_match_loop_reference():
    """Per-layer counters vs plain loops over every (output neuron, tap, channel, filter), with each
    layer's input and output taken from akida's engine (prefix models), not from the simulator."""
    rng = np.random.default_rng(5)
    draw = Draw(max_extra_layers=2, max_side=7, max_filters=3, extreme_share=0.0, input_data_share=0.3)
    for _ in range(24):
        model = random_model(rng, draw)
        frames = model_frames(rng, model, 1)
        counters = Simulator(from_akida(model)).run(frames).counters
        keep = _input_layers(model)
        facts = [_layer_facts(layer) for layer in model.layers[keep - 1 :]]
        outputs = [model.forward(frames)]
        while model.layer_count > keep:
            model.pop_layer()
            outputs.insert(0, model.forward(frames))
        inputs = [frames, *outputs[:-1]]
        for index, layer_counts in enumerate(counters):
            out = outputs[index]
            for n in range(len(frames)):
                for key, value in _loop_counts(facts[index], inputs[index][n]).items():
                    assert getattr(layer_counts, key)[n] == value, (layer_counts.name, key)
                assert layer_counts.output_events[n] == np.count_nonzero(out[n])
                spikes = int(out[n].astype(np.int64).sum()) if out.dtype == np.uint8 else 0
                assert layer_counts.output_spikes[n] == spikes


def test_counters_hand_worked_example():
    """A 3x3 frame with two non-zero pixels through a 3x3 'same' input layer with 2 filters.

    Filter 0 has weights only on its centre tap, filter 1 on all 9 taps except the centre.
    Pixel (0, 0) is reached by the taps of outputs (0,0),(0,1),(1,0),(1,1): 4 taps; its non-zero
    fan-out: filter 0 through the centre tap of output (0, 0) only (1), filter 1 through the 3 other
    taps (3) -> 4. Pixel (1, 1) is reached by all 9 outputs: filter 0 once (centre of output (1, 1)),
    filter 1 eight times -> 9. synaptic_ops = 4 + 9 = 13. dense: 9 pixels x (taps reaching them:
    corners 4, edges 6, centre 9 -> 4*4 + 4*6 + 9 = 49) x 2 filters = 98."""
    model = akida.Model()
    model.add(_input_conv((3, 3, 1), filters=2, act_bits=1))
    kernel = np.zeros((3, 3, 1, 2), dtype=np.int8)
    kernel[1, 1, 0, 0] = 1
    kernel[..., 1] = 1
    kernel[1, 1, 0, 1] = 0
    _set(model.layers[0], kernel, threshold=0, act_step=1.0)
    frame = np.zeros((1, 3, 3, 1), dtype=np.uint8)
    frame[0, 0, 0, 0], frame[0, 1, 1, 0] = 5, 9
    layer = Simulator(from_akida(model)).run(frame).counters["input"]
    assert (layer.input_events[0], layer.synaptic_ops[0], layer.dense_synaptic_ops[0]) == (2, 13, 98)
    expected = model.forward(frame)
    assert layer.output_events[0] == np.count_nonzero(expected) and layer.output_spikes[0] == expected.sum()
    assert (layer.neurons, layer.inputs, layer.weights, layer.nonzero_weights) == (18, 9, 18, 9)
    assert layer.activation_sparsity[0] == 1 - np.count_nonzero(expected) / 18
    assert layer.connection_sparsity == 0.5


def test_batches_and_chunks_give_the_same_counters():
    rng = np.random.default_rng(11)
    model = from_akida(random_model(rng, Draw(max_extra_layers=3, extreme_share=0.0)))
    frames = mnist_like(rng, 9, model.input_shape)
    whole = Simulator(model, max_batch=64).run(frames)
    chunked = Simulator(model, max_batch=4).run(frames)
    one_by_one = [Simulator(model).run(frames[i : i + 1]) for i in range(len(frames))]
    assert np.array_equal(whole.outputs, chunked.outputs)
    assert np.array_equal(whole.outputs, np.concatenate([r.outputs for r in one_by_one]))
    for a, b in zip(whole.counters.to_arrays().items(), chunked.counters.to_arrays().items(), strict=True):
        assert a[0] == b[0] and np.array_equal(a[1], b[1])
    arrays = whole.counters.to_arrays()
    assert set(arrays) == {f"{layer.name}/{key}" for layer in model.layers for key in PER_FRAME + STATIC}
    assert all(arrays[f"{layer.name}/{key}"].shape == (9,) for layer in model.layers for key in PER_FRAME)
    summary = whole.counters.summary()
    assert summary["frames"] == 9 and set(summary["layers"]) == {layer.name for layer in model.layers}


# ---------------------------------------------------------------------------------------------
# Loading models, and what is refused


def test_load_model_reads_every_field(tmp_path):
    rng = np.random.default_rng(3)
    engine = akida.Model()
    engine.add(
        _input_conv(
            (12, 10, 3),
            kernel=(5, 3),
            filters=4,
            act_bits=2,
            kernel_stride=(2, 1),
            padding=akida.Padding.Valid,
            padding_value=9,
            pool_type=akida.PoolType.Max,
            pool_size=(2, 2),
            pool_stride=(1, 2),
        )
    )
    engine.add(akida.Convolutional(kernel_size=(3, 3), filters=5, name="conv", weights_bits=2, act_bits=4))
    engine.add(akida.FullyConnected(units=3, name="dense", weights_bits=4, activation=False))
    for layer in engine.layers:
        set_random_variables(rng, layer)
    engine.save(str(tmp_path / "m.fbz"))
    model = load_model(tmp_path / "m.fbz")
    first, conv, dense = model.layers
    assert isinstance(first, InputConv) and isinstance(conv, Conv) and isinstance(dense, Dense)
    assert (first.kernel, first.stride, first.padding, first.padding_value) == ((5, 3), (2, 1), "valid", 9)
    assert (first.pool.size, first.pool.stride, first.act_bits, first.input_bits) == ((2, 2), (1, 2), 2, 8)
    assert (conv.padding, conv.pool, conv.weights_bits, conv.input_bits) == ("same", None, 2, 2)
    assert dense.weights.shape == (int(np.prod(dense.input_shape)), 3) and not dense.activation
    for ours, theirs in zip(model.layers, engine.layers, strict=True):
        assert np.array_equal(ours.weights.reshape(theirs.variables["weights"].shape), theirs.variables["weights"])
        assert np.array_equal(ours.threshold, theirs.variables["threshold"])
        assert np.array_equal(ours.act_step, theirs.variables["act_step"])
        assert not ours.weights.flags.writeable
    assert model.output_dtype == np.int32 and model.output_shape == (1, 1, 3)


def test_load_model_reads_input_data_separable_and_global_pool(tmp_path):
    rng = np.random.default_rng(4)
    engine = akida.Model()
    engine.add(akida.InputData(input_shape=(9, 7, 3), input_bits=2, name="data"))
    engine.add(
        akida.SeparableConvolutional(
            kernel_size=(5, 3),
            filters=6,
            name="sep",
            weights_bits=4,
            act_bits=2,
            kernel_stride=(2, 1),
            pool_type=akida.PoolType.Average,
        )
    )
    engine.add(akida.FullyConnected(units=3, name="dense", weights_bits=2, activation=False))
    for layer in engine.layers[1:]:
        set_random_variables(rng, layer)
    engine.save(str(tmp_path / "m.fbz"))
    model = load_model(tmp_path / "m.fbz")
    assert model.input_data == InputData("data", (9, 7, 3), 2) and model.input_max == 3
    sep, dense = model.layers
    assert isinstance(sep, SepConv) and isinstance(dense, Dense)
    assert (sep.kernel, sep.stride, sep.pool, sep.global_avg_pool, sep.filters) == ((5, 3), (2, 1), None, True, 6)
    assert (sep.input_bits, sep.output_shape, dense.input_shape) == (2, (1, 1, 6), (1, 1, 6))
    assert np.array_equal(sep.weights, engine.layers[1].variables["weights"])
    assert np.array_equal(sep.weights_pw, engine.layers[1].variables["weights_pw"])
    assert [w.shape for w in sep.stored_weights] == [(5, 3, 3, 1), (1, 1, 3, 6)]
    fused = sep.fused_weights  # by a loop: depthwise tap times pointwise weight
    for x, y, c, f in np.ndindex(fused.shape):
        assert fused[x, y, c, f] == int(sep.weights[x, y, c, 0]) * int(sep.weights_pw[0, 0, c, f])
    assert not sep.weights_pw.flags.writeable


def test_missing_or_corrupt_fbz_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.fbz")
    engine = akida.Model()
    engine.add(_input_conv((8, 8, 1)))
    engine.save(str(tmp_path / "good.fbz"))
    data = (tmp_path / "good.fbz").read_bytes()
    (tmp_path / "cut.fbz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.fbz").write_text("not a model\n")
    for name in ("cut.fbz", "text.fbz"):
        with pytest.raises(ModelError, match="not a readable Akida model"):
            load_model(tmp_path / name)


def _refused(build) -> str:
    model = akida.Model()
    build(model)
    with pytest.raises(ModelError) as error:
        from_akida(model)
    return str(error.value)


def test_unsupported_layers_are_refused_by_name_and_type():
    message = _refused(lambda m: m.add(akida.InputConv2D(input_shape=(8, 8, 1), kernel_size=3, filters=4, name="v2in")))
    assert "'v2in'" in message and "InputConv2D" in message
    message = _refused(lambda m: m.add(akida.InputData(input_shape=(8, 8, 1), input_bits=4, name="data")))
    assert "'data'" in message and "InputData" in message and "needs a layer after it" in message
    message = _refused(lambda m: m.add(akida.InputData(input_shape=(8, 8, 1), input_bits=8, name="wide")))
    assert "'wide'" in message and "signed inputs" in message  # akida makes 8-bit InputData signed
    assert "\n" not in message


def test_input_data_frames_beyond_its_bits_are_refused_like_the_engine():
    model = akida.Model()
    model.add(akida.InputData(input_shape=(4, 4, 1), input_bits=2, name="data"))
    model.add(akida.FullyConnected(units=2, name="dense", weights_bits=2, activation=False))
    frames = np.full((1, 4, 4, 1), 3, np.uint8)
    assert np.array_equal(_simulate(model, frames), model.forward(frames))
    frames[0, 1, 2, 0] = 4
    with pytest.raises(RuntimeError, match="range"):
        model.forward(frames)
    with pytest.raises(DataError, match=r"2-bit InputData takes 0\.\.3"):
        _simulate(model, frames)


def test_simulator_refuses_wrong_frames():
    model = akida.Model()
    model.add(_input_conv((8, 8, 1)))
    simulator = Simulator(from_akida(model))
    for frames in (
        np.zeros((2, 8, 8, 1), np.float32),
        np.zeros((2, 8, 8, 3), np.uint8),
        np.zeros((8, 8, 1), np.uint8),
        np.zeros((0, 8, 8, 1), np.uint8),
    ):
        with pytest.raises(DataError):
            simulator.run(frames)


def test_simulator_never_imports_akida():
    """The simulator and the model types run where akida is absent (it is only the .fbz reader)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from edge_runtime.akida_model import AkidaModel, Dense, InputConv
        from edge_runtime.simulator import Simulator
        first = InputConv(name="in", input_shape=(4, 4, 1), output_shape=(4, 4, 2),
                          weights=np.ones((3, 3, 1, 2), np.int8), threshold=np.zeros(2, np.int32),
                          act_step=np.ones(2, np.float32), act_bits=4, weights_bits=8, input_bits=8,
                          activation=True, kernel=(3, 3), stride=(1, 1), padding="same", pool=None, padding_value=0)
        dense = Dense(name="d", input_shape=(4, 4, 2), output_shape=(1, 1, 3), weights=np.ones((32, 3), np.int8),
                      threshold=np.zeros(3, np.int32), act_step=np.ones(3, np.float32), act_bits=4,
                      weights_bits=4, input_bits=4, activation=False)
        result = Simulator(AkidaModel((first, dense))).run(np.full((2, 4, 4, 1), 3, np.uint8))
        assert result.outputs.shape == (2, 1, 1, 3)
        assert "akida" not in sys.modules, "akida was imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------
# The simulate command


@pytest.fixture
def saved_model(tmp_path) -> tuple[Path, akida.Model]:
    rng = np.random.default_rng(17)
    engine = akida.Model()
    engine.add(_input_conv((10, 10, 1), filters=4, act_bits=4))
    engine.add(akida.FullyConnected(units=5, name="dense", weights_bits=4, activation=False))
    for layer in engine.layers:
        set_random_variables(rng, layer)
    engine.save(str(tmp_path / "model.fbz"))
    return tmp_path / "model.fbz", engine


def test_simulate_writes_engine_outputs_counters_and_stats(tmp_path, saved_model):
    path, engine = saved_model
    frames = mnist_like(np.random.default_rng(2), 6, (10, 10, 1))
    np.save(tmp_path / "frames.npy", frames[..., 0])  # (N, X, Y): one channel
    code = cli.main(
        [
            "simulate",
            str(path),
            str(tmp_path / "frames.npy"),
            "--out",
            str(tmp_path / "out.npz"),
            "--stats",
            str(tmp_path / "stats.json"),
        ]
    )
    assert code == 0
    with np.load(tmp_path / "out.npz") as out:
        assert np.array_equal(out["outputs"], engine.forward(frames))
        assert out["outputs"].dtype == np.int32
        assert out["input/synaptic_ops"].shape == (6,) and int(out["dense/neurons"]) == 5
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames"] == 6 and set(stats["layers"]) == {"input", "dense"}
    assert stats["device"] == "akd1000" and stats["profile"] == "akd1000-v2" and stats["map_mode"] == "AllNps"
    energy, time = stats["energy_per_frame_j"], stats["time_per_frame_s"]
    assert energy["total"] > energy["dynamic"] > 0 and time["frame"] > 0
    # the whole is the sum of the per-layer parts, and total = floor x frame time + dynamic
    assert sum(stats["layers"][name]["chip_s"] for name in ("input", "dense")) == pytest.approx(time["chip"])
    assert sum(stats["layers"][name]["dynamic_j"] for name in ("input", "dense")) == pytest.approx(energy["dynamic"])
    floor = DeviceProfile.packaged("akd1000").coefficients.floor_power_w
    assert energy["total"] == pytest.approx(floor * time["frame"] + energy["dynamic"])
    code = cli.main(
        [
            "simulate",
            str(path),
            str(tmp_path / "frames.npy"),
            "--out",
            str(tmp_path / "out.npz"),
            "--stats",
            str(tmp_path / "stats1500.json"),
            "--device",
            "akd1500",
            "--map-mode",
            "Minimal",
        ]
    )
    assert code == 0
    other = json.loads((tmp_path / "stats1500.json").read_text())
    assert other["profile"] == "akd1500-v2" and other["map_mode"] == "Minimal"
    assert other["time_per_frame_s"]["chip"] < time["chip"]  # 400 MHz against 300, same clocks


def test_simulate_stats_of_a_model_the_chip_cannot_run_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(3)
    engine = akida.Model()  # a max-pooled Convolutional followed by a dense layer: the pooled conv runs in software
    engine.add(_input_conv((10, 10, 1), filters=4, act_bits=4))
    engine.add(
        akida.Convolutional(
            (3, 3), 4, name="conv", weights_bits=4, act_bits=4, pool_type=akida.PoolType.Max, pool_size=(2, 2)
        )
    )
    engine.add(akida.FullyConnected(units=5, name="dense", weights_bits=4, activation=False))
    for layer in engine.layers:
        set_random_variables(rng, layer)
    engine.save(str(tmp_path / "pooled.fbz"))
    np.save(tmp_path / "frames.npy", np.zeros((2, 10, 10), np.uint8))
    code = cli.main(
        [
            "simulate",
            str(tmp_path / "pooled.fbz"),
            str(tmp_path / "frames.npy"),
            "--out",
            str(tmp_path / "o.npz"),
            "--stats",
            str(tmp_path / "s.json"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "does not map fully on AKD1000" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((3, 10, 10, 1), np.float32), "must be uint8"),
        (np.zeros((3, 10, 10, 3), np.uint8), "the model takes"),
        (np.zeros((3, 9, 10), np.uint8), "the model takes"),
    ],
)
def test_simulate_refuses_bad_frames_in_one_line(tmp_path, saved_model, capsys, frames, message):
    np.save(tmp_path / "bad.npy", frames)
    code = cli.main(["simulate", str(saved_model[0]), str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o.npz")])
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1
    assert not (tmp_path / "o.npz").exists()


def test_simulate_refuses_missing_and_corrupt_files_in_one_line(tmp_path, saved_model, capsys):
    np.save(tmp_path / "frames.npy", np.zeros((1, 10, 10, 1), np.uint8))
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "broken.fbz").write_bytes(b"garbage")
    cases = [
        (str(tmp_path / "absent.fbz"), str(tmp_path / "frames.npy"), "no such model file"),
        (str(tmp_path / "broken.fbz"), str(tmp_path / "frames.npy"), "not a readable Akida model"),
        (str(saved_model[0]), str(tmp_path / "absent.npy"), "no such frames file"),
        (str(saved_model[0]), str(tmp_path / "broken.npy"), "not a readable .npy array"),
    ]
    for model, frames, message in cases:
        code = cli.main(["simulate", model, frames, "--out", str(tmp_path / "o.npz")])
        error = capsys.readouterr().err
        assert code == 2 and message in error and error.count("\n") == 1, error


@pytest.mark.parametrize("float32_exact", [akida_rules.FLOAT32_EXACT, 2**8])
def test_batch1_gather_and_float64_paths_match_engine_and_default_counters(monkeypatch, float32_exact):
    """The random models are too small for the batch-1 row gather and rarely need float64 sums; force both
    paths (gather always, float32 considered exact only below 2**8) and compare outputs with akida's engine
    and every counter with the default simulator's."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        model = random_model(rng, EVERY_KIND)
        frames = model_frames(rng, model, 2)
        reference = Simulator(from_akida(model)).run(frames)
        with monkeypatch.context() as patch:
            patch.setattr(sim_stages, "_GATHER_MIN_WEIGHTS", 0)
            patch.setattr(sim_stages, "_GATHER_MAX_DENSITY", 1.0)
            for module in (akida_rules, sim_stages, simulator):  # each reads its own imported copy
                patch.setattr(module, "FLOAT32_EXACT", float32_exact)
            forced = Simulator(from_akida(model))
            one_by_one = [forced.run(frames[i : i + 1]) for i in range(len(frames))]
        np.testing.assert_array_equal(np.concatenate([r.outputs for r in one_by_one]), model.forward(frames))
        for name in PER_FRAME:
            for layer in reference.counters:
                got = np.concatenate([getattr(r.counters[layer.name], name) for r in one_by_one])
                np.testing.assert_array_equal(got, getattr(layer, name), err_msg=f"{layer.name}.{name}")


def _bad_input(tmp_path, kind):
    """An argument a user might get wrong: a bad frames file, or an output path that is a directory."""
    path = tmp_path / "inputs" / kind
    if kind == "empty.npy":
        path.write_bytes(b"")
    elif kind == "archive.npy":
        with path.open("wb") as handle:
            np.savez(handle, frames=np.zeros((1, 10, 10, 1), np.uint8))
    elif kind == "objects.npy":
        np.save(path, np.array([None, {}], dtype=object), allow_pickle=True)
    elif kind == "dir":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("frames", "out", "stats", "message"),
    [
        ("empty.npy", None, None, "empty or truncated file"),
        ("archive.npy", None, None, "an .npz archive"),
        ("objects.npy", None, None, "not a readable .npy array"),
        (None, "dir", None, "is a directory"),
        (None, None, "dir", "is a directory"),
        (None, "absent/o.npz", None, "does not exist"),
    ],
)
def test_simulate_user_errors_are_one_line_and_leave_nothing_behind(
    tmp_path, saved_model, capsys, frames, out, stats, message
):
    np.save(tmp_path / "frames.npy", np.zeros((2, 10, 10, 1), np.uint8))
    (tmp_path / "inputs").mkdir()
    argv = ["simulate", str(saved_model[0])]
    argv.append(str(_bad_input(tmp_path, frames)) if frames else str(tmp_path / "frames.npy"))
    argv += ["--out", str(_bad_input(tmp_path, out)) if out == "dir" else str(tmp_path / (out or "o.npz"))]
    if stats:
        argv += ["--stats", str(_bad_input(tmp_path, stats))]
    before = sorted(os.listdir(tmp_path)) + sorted(os.listdir(tmp_path / "inputs"))
    code = cli.main(argv)
    error = capsys.readouterr().err
    assert code == 2 and message in error and error.count("\n") == 1 and "Traceback" not in error, error
    after = sorted(os.listdir(tmp_path)) + sorted(os.listdir(tmp_path / "inputs"))
    assert after == before  # no half-written output, no leaked temporary file


# ---------------------------------------------------------------------------------------------
# Every layer kind against a slow loop reference, and the engine's 20-bit potentials


def test_every_layer_kind_matches_loop_reference_and_engine():
    """Small random models of every kind (InputData 1/2/4 bits, InputConvolutional, Convolutional,
    SeparableConvolutional, FullyConnected; max and global pooling): the loop reference of
    tests/akida_reference.py, the engine and the simulator give the same outputs."""
    rng = np.random.default_rng(14)
    draw = replace(EVERY_KIND, max_side=8, max_filters=4, extreme_share=0.0)
    kinds: dict[str, int] = {}
    compared = 0
    for _ in range(60):
        model = random_model(rng, draw)
        for layer in model.layers:
            kinds[layer.parameters.layer_type.name] = kinds.get(layer.parameters.layer_type.name, 0) + 1
        frames = model_frames(rng, model, 2)
        expected = model.forward(frames)
        np.testing.assert_array_equal(reference_forward(model, frames), expected)
        np.testing.assert_array_equal(_simulate(model, frames), expected)
        compared += expected.size
    assert set(kinds) == {
        "InputData",
        "InputConvolutional",
        "Convolutional",
        "SeparableConvolutional",
        "FullyConnected",
    }, kinds
    assert compared > 1000


def test_twenty_bit_potentials_are_reproduced(monkeypatch):
    """A FullyConnected clips its potential to [-2**19, 2**19 - 1] (630,000 -> 524,287 does not reach
    a 600,000 threshold); a global average pool saturates its running sum position by position, x
    slowest (the same potentials summed in another order give another result)."""
    for kind, model, frames in saturating_models():
        expected = model.forward(frames)
        np.testing.assert_array_equal(_simulate(model, frames), expected, err_msg=kind)
        np.testing.assert_array_equal(reference_forward(model, frames), expected, err_msg=kind)
        with monkeypatch.context() as patch:  # the batch-1 path that multiplies only the event rows
            patch.setattr(sim_stages, "_GATHER_MIN_WEIGHTS", 0)
            patch.setattr(sim_stages, "_GATHER_MAX_DENSITY", 1.0)
            forced = Simulator(from_akida(model))
            one_by_one = np.concatenate([forced.run(frames[i : i + 1]).outputs for i in range(len(frames))])
        np.testing.assert_array_equal(one_by_one, expected, err_msg=kind)
        if kind == "FullyConnected":
            assert expected[0, 0, 0, 0] == 0 and expected[0, 0, 0, 1] > 0
        else:
            # 12 of 16 rows at +3360 per position then 4 at -3360: saturates at 2**19 - 1 first
            assert expected[0, 0, 0, 0] == POTENTIAL_MAX - 4 * 16 * 3360
            assert expected[1, 0, 0, 0] != expected[0, 0, 0, 0]  # order matters
            assert expected[0, 0, 0, 1] == POTENTIAL_MAX
