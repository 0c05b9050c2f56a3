"""A slow, obvious NumPy reference of Akida 1.0 inference, read straight from akida's layers.

Independent of ``edge_runtime``'s dataclasses and of the simulator's im2col, fused kernels and
buffers: plain loops over output positions, each layer kind written out as docs/akida-semantics.md
states it. Only the firing rule is shared (:func:`edge_runtime.akida_rules.fire`, pinned against the
engine on potential sweeps by tests/test_simulator.py). Use it on small models: it is slow.
"""

from __future__ import annotations

import akida
import numpy as np

from edge_runtime.akida_rules import fire

POTENTIAL_MIN, POTENTIAL_MAX = -(2**19), 2**19 - 1  # written again here on purpose: the probed rule


def _geometry(side: int, window: int, stride: int, same: bool) -> tuple[int, int]:
    """(outputs, padding before) along one axis; 'same' puts the odd extra padding after."""
    if not same:
        return (side - window) // stride + 1, 0
    out = -(-side // stride)
    return out, max((out - 1) * stride + window - side, 0) // 2


def _correlate(x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int], same: bool, pad_value: int) -> np.ndarray:
    """(N, X, Y, C) x (KX, KY, C, F) -> (N, X', Y', F) cross-correlation, one output position at a time."""
    n, side_x, side_y, _ = x.shape
    kx, ky, _, filters = kernel.shape
    out_x, before_x = _geometry(side_x, kx, stride[0], same)
    out_y, before_y = _geometry(side_y, ky, stride[1], same)
    padded = np.full((n, side_x + 2 * kx, side_y + 2 * ky, x.shape[3]), pad_value, dtype=np.int64)
    padded[:, kx : kx + side_x, ky : ky + side_y] = x
    out = np.zeros((n, out_x, out_y, filters), dtype=np.int64)
    for i in range(out_x):
        for j in range(out_y):
            a = kx + i * stride[0] - before_x
            b = ky + j * stride[1] - before_y
            field = padded[:, a : a + kx, b : b + ky, :]
            out[:, i, j, :] = np.einsum("nijc,ijcf->nf", field, kernel)
    return out


def _depthwise(x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int], same: bool) -> np.ndarray:
    """Each channel convolved with its own (KX, KY) kernel: (N, X, Y, C) -> (N, X', Y', C)."""
    channels = x.shape[3]
    return np.concatenate(
        [_correlate(x[..., c : c + 1], kernel[:, :, c : c + 1, :], stride, same, 0) for c in range(channels)], axis=3
    )


def _max_pool(p: np.ndarray, size: tuple[int, int], stride: tuple[int, int], same: bool) -> np.ndarray:
    """Windows past the edge see only the real neurons (no pad value)."""
    n, side_x, side_y, filters = p.shape
    out_x, before_x = _geometry(side_x, size[0], stride[0], same)
    out_y, before_y = _geometry(side_y, size[1], stride[1], same)
    out = np.zeros((n, out_x, out_y, filters), dtype=np.int64)
    for i in range(out_x):
        for j in range(out_y):
            a0, b0 = i * stride[0] - before_x, j * stride[1] - before_y
            a, b = max(a0, 0), max(b0, 0)
            out[:, i, j, :] = p[:, a : a0 + size[0], b : b0 + size[1], :].max(axis=(1, 2))
    return out


def _global_sum(p: np.ndarray) -> np.ndarray:
    """The engine's global average pool: a running sum over positions, x slowest, saturating at 20 bits."""
    total = np.zeros((p.shape[0], p.shape[3]), dtype=np.int64)
    for i in range(p.shape[1]):
        for j in range(p.shape[2]):
            total = np.clip(total + p[:, i, j, :], POTENTIAL_MIN, POTENTIAL_MAX)
    return total[:, None, None, :]


def reference_forward(model: akida.Model, frames: np.ndarray) -> np.ndarray:
    """What ``model.forward(frames)`` returns, computed with loops; ValueError where the engine refuses."""
    x = frames.astype(np.int64)
    for layer in model.layers:
        params = layer.parameters
        kind = params.layer_type
        if kind == akida.LayerType.InputData:
            if x.max(initial=0) > 2**params.input_bits - 1:
                raise ValueError(f"input values beyond {params.input_bits} bits")
            continue
        weights = layer.variables["weights"].astype(np.int64)
        if kind == akida.LayerType.FullyConnected:
            flat = x.transpose(0, 3, 2, 1).reshape(len(x), -1)  # akida's flattening of (X, Y, C): x fastest
            p = np.clip(flat @ weights[0, 0], POTENTIAL_MIN, POTENTIAL_MAX)[:, None, None, :]
        else:
            stride, same = (params.stride_x, params.stride_y), params.padding == 1
            if kind == akida.LayerType.InputConvolutional:
                p = _correlate(x, weights, stride, same, params.padding_value)
            elif kind == akida.LayerType.Convolutional:
                p = _correlate(x, weights[::-1, ::-1], stride, same, 0)  # a true convolution
            else:  # SeparableConvolutional: depthwise true convolution, then pointwise
                depthwise = _depthwise(x, weights[::-1, ::-1], stride, same)
                p = np.einsum("nxyc,cf->nxyf", depthwise, layer.variables["weights_pw"][0, 0].astype(np.int64))
            if params.pool_type == 1:
                size = (params.pooling_width, params.pooling_height)
                p = _max_pool(p, size, (params.pooling_stride_x, params.pooling_stride_y), same)
            elif params.pool_type == 2:
                p = _global_sum(p)
        if params.activation:
            x = fire(p, layer.variables["threshold"], layer.variables["act_step"], params.act_bits).astype(np.int64)
        else:
            x = p
    return x.astype(np.uint8 if model.layers[-1].parameters.activation else np.int32)
