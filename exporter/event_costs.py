"""What one more event, and one more non-zero weight, costs in modelled energy per frame (model v2).

The cost-weighted penalty (``[penalty] weighting = "energy"``) weights each layer's count by these
marginal costs, so that training lowers the modelled board energy per image, not a count. They are
computed through the energy model itself (:class:`edge_runtime.energy.ModelCost`, bound to akida's
mapping of the model), at the operating point measured on a batch of frames, so any Akida 1.0 model
the mapper places gets them; nothing here knows the network's layers.

Per frame, ``total_j = floor_power_w x frame_s + dynamic_j``, and in a call of ``n`` frames on a
single-pass mapping ``frame_s = (chip + (n - 1) x slowest) / n / clock + host`` with ``chip`` the sum of
the layers' clocks and ``slowest`` the largest. Each layer's clocks and picojoules are
``fixed + active x [events > 0] + per_event x events (+ per_synop x synops)`` (``ModelCost.clk``,
``ModelCost.pj``). So one more input event of layer ``l`` costs

    d total_j / d events_l = floor_power_w x per_event_clk_l / clock x (1/n + (n-1)/n x [l is the slowest])
                             + PJ x (per_event_pj_l + per_synop_pj_l x synops_l / events_l)

where the event brings the layer's measured mean fan-out of synaptic operations with it (an event
without its synaptic ops is not a thing the chip does). In a long batch (``n`` infinite, the
daemon's and the reports' convention) only the slowest layer's clocks cost floor energy; multi-pass
mappings (and ``n = 1``) run the layers one after another, so every layer's clocks do. The step at
the first event (``active``) has no derivative and is left out: it matters only to a layer with no
input events at all. The derivative is taken per frame and averaged over the measured frames: that
is the derivative of the mean energy per frame, what the reports measure (the slowest layer may
differ from frame to frame). Given one frame of mean counts, it is the cost at that mean frame.

The output events of layer ``l`` are the input events of layer ``l + 1`` (after pooling, as the
simulator counts them), so the activation penalty of layer ``l`` is weighted by layer ``l + 1``'s
input-event cost. Weights: a zero weight saves dynamic energy, never time (docs/energy-model.md), so
one more non-zero weight of layer ``l`` costs the synaptic ops it takes part in per frame
(``synops_l / nonzero_weights_l``, measured) x ``PJ x per_synop_pj_l``. The input layer (HRC) is
dense in the model, so its weights cost nothing there and the energy-weighted penalty leaves them be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.counters import LayerCounters
from edge_runtime.energy import PJ, ModelCost
from edge_runtime.errors import ConfigError, DataError


def input_event_costs(
    cost: ModelCost, events: np.ndarray, synops: np.ndarray, frames_per_call: float = math.inf
) -> np.ndarray:
    """Per layer (mapping order), d(total_j)/d(input events) in joules per event, averaged over frames.

    ``events`` and ``synops`` are shaped (N, layers) as for :meth:`ModelCost.evaluate`; each frame's
    synaptic ops move with its events at that frame's fan-out (synops / events, 0 without events).
    """
    c = cost.profile.coefficients
    events = np.asarray(events, dtype=np.float64)
    synops = np.asarray(synops, dtype=np.float64)
    if events.ndim != 2 or events.shape[1] != cost.clk.shape[1] or synops.shape != events.shape:
        raise DataError(f"activity of shape {events.shape} for a mapping of {cost.clk.shape[1]} layers")
    if not frames_per_call >= 1:
        raise DataError(f"frames per call must be at least 1, got {frames_per_call}")
    per_event_s = cost.clk[2] / c.clock_hz  # (layers,)
    if cost.mapping.multi_pass or frames_per_call <= 1:
        frame_share = np.ones_like(events)  # no overlap: every layer's clocks add to the frame
    else:
        clocks = cost.clk[0] + (events > 0) * cost.clk[1] + events * cost.clk[2]
        slowest = np.zeros_like(events)
        slowest[np.arange(len(events)), clocks.argmax(axis=1)] = 1.0
        frame_share = (
            slowest if math.isinf(frames_per_call) else (1 + (frames_per_call - 1) * slowest) / frames_per_call
        )
    fanout = np.divide(synops, events, out=np.zeros_like(synops), where=events > 0)
    dynamic = PJ * (cost.pj[2] + cost.pj[3] * fanout)
    return np.mean(c.floor_power_w * per_event_s * frame_share + dynamic, axis=0)


def weight_costs(cost: ModelCost, synops: np.ndarray, nonzero_weights: Sequence[int]) -> np.ndarray:
    """Per layer, the dynamic energy per frame of one non-zero weight: the synaptic ops one takes part
    in per frame (mean synops / non-zero weights) x the energy per synaptic op there, in joules."""
    synops = np.asarray(synops, dtype=np.float64)
    nonzero = np.asarray(nonzero_weights, dtype=np.float64)
    if synops.ndim != 2 or synops.shape[1] != cost.pj.shape[1] or nonzero.shape != (cost.pj.shape[1],):
        raise DataError(
            f"synops of shape {synops.shape} and {nonzero.shape} weight counts for {cost.pj.shape[1]} layers"
        )
    per_weight = np.divide(synops.mean(axis=0), nonzero, out=np.zeros_like(nonzero), where=nonzero > 0)
    return PJ * cost.pj[3] * per_weight


@dataclass(frozen=True)
class PenaltyCosts:
    """The weights of the cost-weighted penalty, in joules per frame, at one measured operating point.

    ``events[l]``: one more output event of layer ``l`` (every layer but the last, whose outputs go to
    the host); ``weights[l]``: one more non-zero weight of layer ``l``.
    """

    events: tuple[float, ...]
    weights: tuple[float, ...]

    def describe(self) -> str:
        """One line for the log: the costs in nJ, by layer."""
        events = ", ".join(f"{1e9 * e:.3g}" for e in self.events)
        weights = ", ".join(f"{1e9 * w:.3g}" for w in self.weights)
        return f"nJ per output event by layer [{events}]; per non-zero weight [{weights}]"


def penalty_costs(
    cost: ModelCost, counters: Sequence[LayerCounters], frames_per_call: float = math.inf
) -> PenaltyCosts:
    """:class:`PenaltyCosts` from the simulator's counters of a batch (layers as in the mapping)."""
    names = tuple(layer.name for layer in counters)
    if names != tuple(place.name for place in cost.mapping.layers):
        raise DataError(f"counters of layers {list(names)} for the mapping of {[p.name for p in cost.mapping.layers]}")
    events = np.stack([np.asarray(layer.input_events, dtype=np.float64) for layer in counters], axis=1)
    synops = np.stack([np.asarray(layer.synaptic_ops, dtype=np.float64) for layer in counters], axis=1)
    per_input = input_event_costs(cost, events, synops, frames_per_call)
    per_weight = weight_costs(cost, synops, [layer.nonzero_weights for layer in counters])
    return PenaltyCosts(tuple(float(e) for e in per_input[1:]), tuple(float(w) for w in per_weight))


def bound_cost(akida_model: object, device: str, map_mode: str | None = None) -> ModelCost:
    """The packaged profile of ``device`` bound to akida's mapping of ``akida_model`` (mapped in place:
    pass a model built for this); ConfigError in one line if the model does not map."""
    from edge_runtime.energy import DeviceProfile
    from edge_runtime.errors import ModelError
    from edge_runtime.mapping import DEFAULT_MAP_MODE, map_model

    try:
        mapping = map_model(akida_model, device, map_mode or DEFAULT_MAP_MODE)
    except ModelError as error:
        raise ConfigError(f"penalty.weighting = 'energy': {error}") from None
    return DeviceProfile.packaged(device).bind(mapping)
