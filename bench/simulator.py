"""Throughput of our NumPy simulator against akida's software engine, on the default MNIST model.

Run: ``python bench/simulator.py [--frames 2000]``. One run builds the default MNIST architecture
(InputConvolutional 3x3/32 + max pool 2, 8-bit weights, 4-bit act -> Convolutional 3x3/64 stride 2,
4-bit -> FullyConnected 128, 4-bit -> FullyConnected 10 without activation) with random weights and
thresholds calibrated to 10-30 % non-zero activations, then times both engines on the same frames at
batch 1 and batch 100, checks that their outputs are identical, and prints the ratio next to the
targets (>= 3x at batch 1, >= 2x at batch 100).

Frames are MNIST test images from the cache written by ``edge-export data fetch``; without a cache it
falls back to a synthetic, clearly labelled set rather than downloading anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import akida
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.akida_model import from_akida  # noqa: E402
from edge_runtime.errors import DataError  # noqa: E402
from edge_runtime.mnist import cache_path, load_cache  # noqa: E402
from edge_runtime.simulator import Simulator  # noqa: E402

TARGETS = {1: 3.0, 100: 2.0}
DENSITY = 0.2  # share of non-zero activations each hidden layer is calibrated to
MEAN_LEVEL = 4.0  # mean 4-bit value of a firing neuron the act_steps are calibrated to


def mnist_architecture(rng: np.random.Generator) -> akida.Model:
    model = akida.Model()
    model.add(akida.InputConvolutional(
        input_shape=(28, 28, 1), kernel_size=(3, 3), filters=32, name="conv0", weights_bits=8, act_bits=4,
        pool_type=akida.PoolType.Max, pool_size=(2, 2)))
    model.add(akida.Convolutional(
        kernel_size=(3, 3), filters=64, name="conv1", kernel_stride=(2, 2), weights_bits=4, act_bits=4))
    model.add(akida.FullyConnected(units=128, name="fc1", weights_bits=4, act_bits=4))
    model.add(akida.FullyConnected(units=10, name="fc2", weights_bits=4, activation=False))
    for layer in model.layers:
        low, high = (-128, 127) if layer.parameters.weights_bits == 8 else (-7, 7)
        shape = layer.variables["weights"].shape
        weights = rng.integers(low, high + 1, shape)
        weights[rng.random(shape) < 0.5] = 0
        layer.variables["weights"] = weights.astype(np.int8)
        layer.variables["act_step"] = np.ones(shape[-1], np.float32)
    return model


def _bisect(evaluate: Callable[[float], float], target: float, low: float, high: float, steps: int = 40) -> float:
    """x in [low, high] where the increasing function evaluate(x) crosses target."""
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if evaluate(middle) < target else (low, middle)
    return (low + high) / 2


def calibrate(model: akida.Model, frames: np.ndarray) -> None:
    """Per hidden layer: a threshold giving DENSITY non-zero outputs, an act_step giving MEAN_LEVEL."""
    for index, layer in enumerate(model.layers[:-1]):
        filters = layer.variables["weights"].shape[-1]

        def counters(threshold: float, step: float) -> object:
            layer.variables["threshold"] = np.full(filters, round(threshold), np.int32)
            layer.variables["act_step"] = np.full(filters, step, np.float32)
            return Simulator(from_akida(model)).run(frames).counters.layers[index]

        threshold = _bisect(lambda t: -float(np.mean(1 - counters(t, 1.0).activation_sparsity)), -DENSITY, -1e6, 1e6)

        def mean_level(log_step: float) -> float:
            c = counters(threshold, float(np.exp(log_step)))
            return -float(c.output_spikes.sum() / max(c.output_events.sum(), 1))

        step = float(np.exp(_bisect(mean_level, -MEAN_LEVEL, np.log(1 / 16), np.log(1e5), steps=25)))
        layer.variables["act_step"] = np.full(filters, step, np.float32)
        # arbitrary float32 steps, not one round value: jitter each filter's step by up to 10 %
        jitter = np.random.default_rng(index).uniform(0.9, 1.1, filters)
        layer.variables["act_step"] = np.maximum(step * jitter, 1 / 16).astype(np.float32)


def load_frames(count: int) -> tuple[np.ndarray, str]:
    try:
        images = load_cache(cache_path()).test_images[:count]
        return images[..., None], f"{len(images)} MNIST test images ({cache_path()})"
    except DataError:
        rng = np.random.default_rng(0)
        images = np.zeros((count, 28, 28), np.uint8)
        for image in images:
            for _ in range(3):
                x, y = rng.integers(4, 24, 2)
                dx, dy = rng.integers(-6, 7, 2)
                for t in np.linspace(0, 1, 20):
                    cx, cy = int(x + t * dx), int(y + t * dy)
                    image[max(cx - 1, 0) : cx + 2, max(cy - 1, 0) : cy + 2] = 255
        return images[..., None], f"{count} SYNTHETIC stroke images (no MNIST cache at {cache_path()})"


def throughput(run: Callable[[np.ndarray], object], frames: np.ndarray, batch: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` frames per second over all frames, ``batch`` at a time."""
    run(frames[:batch])  # warm-up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(frames), batch):
            run(frames[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return float(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()

    frames, origin = load_frames(args.frames)
    model = mnist_architecture(np.random.default_rng(0))
    calibrate(model, frames[:200])
    ours = from_akida(model)
    simulator = Simulator(ours)
    result = simulator.run(frames)
    reference = model.forward(frames)
    same = np.all(reference == result.outputs, axis=(1, 2, 3))

    print(f"frames: {origin}")
    activity = ", ".join(f"{c.name} {100 * np.mean(1 - c.activation_sparsity):.1f}%" for c in result.counters)
    print(f"non-zero outputs per layer: {activity}")
    print(f"bit-exact: {int(same.sum())}/{len(frames)} frames identical ({reference.size} outputs, "
          f"{reference.dtype} {reference.shape[1:]})")
    print(f"import time: akida {import_seconds('akida'):.3f} s, "
          f"edge_runtime.simulator {import_seconds('edge_runtime.simulator'):.3f} s")
    ok = bool(same.all())
    for batch, target in TARGETS.items():
        sim_fps = throughput(simulator.run, frames, batch)
        engine_fps = throughput(model.forward, frames, batch)
        ratio = sim_fps / engine_fps
        ok &= ratio >= target
        print(f"batch {batch:3d}: simulator {sim_fps:8.0f} fps | akida engine {engine_fps:8.0f} fps | "
              f"ratio {ratio:5.2f}x (target >= {target:.0f}x) {'OK' if ratio >= target else 'BELOW TARGET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
