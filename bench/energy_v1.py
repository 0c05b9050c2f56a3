"""The retired energy model v1 (``akd1000-estimate-v1``), kept only so benches can print it beside v2.

v1 charged 5.6 clocks per pixel and per NP input event in every layer, a fixed 0.516 ms of host time
per frame, and Loihi-scaled picojoules per event and synaptic op (``bench/data/energy-model-v1.json``
has every coefficient with its source). Silicon measurements contradict it (docs/energy-model.md,
docs/results/energy-fit.md); nothing in the product uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

COEFFICIENTS = {
    name: entry["value"]
    for name, entry in json.loads((Path(__file__).resolve().parent / "data" / "energy-model-v1.json").read_text())[
        "coefficients"
    ].items()
}


@dataclass(frozen=True)
class Load:
    """Per frame: the input layer's pixels and dense MACs; the NP layers' input events and synaptic
    ops; every layer's output events (v1's inputs)."""

    pixels: float
    input_macs: float
    np_events: float
    synops: float
    output_events: float


def clocks(load: Load) -> float:
    return COEFFICIENTS["cycles_per_input_event"] * (load.pixels + load.np_events) + COEFFICIENTS[
        "cycles_per_synaptic_op"
    ] * (load.input_macs + load.synops)


def frame_time_s(load: Load) -> float:
    """Time per frame in a long batch: host + pixel transfer + chip clocks."""
    c = COEFFICIENTS
    return c["host_time_s"] + c["host_time_per_pixel_s"] * load.pixels + clocks(load) / c["clock_hz"]


def chip_j(load: Load) -> float:
    c = COEFFICIENTS
    return 1e-12 * (
        c["input_pixel_pj"] * load.pixels
        + c["input_mac_pj"] * load.input_macs
        + c["input_event_pj"] * load.np_events
        + c["synaptic_op_pj"] * load.synops
        + c["output_event_pj"] * load.output_events
    )


def board_j(load: Load) -> float:
    """v1's board energy per frame: chip energy + floor power x frame time."""
    return chip_j(load) + COEFFICIENTS["floor_power_w"] * frame_time_s(load)
