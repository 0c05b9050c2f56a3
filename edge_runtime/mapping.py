"""Where a model lands on an Akida device, from akida's own mapper, as plain data.

Why: a layer's time on the chip depends on how many neural processors (NPs) it is spread over and of
which kind, and only akida's mapper knows that. Mapping happens where akida is at hand (export, or
``simulate`` of a bare ``.fbz``); the result is recorded in the bundle manifest as
:class:`edge_runtime.energy_inputs.ModelMapping`, so serving needs no mapper. ``akida`` is imported lazily.
"""

from __future__ import annotations

import math
from typing import Any

from .energy import DEVICES
from .energy_inputs import ModelMapping, Placement
from .errors import ModelError

MAP_MODES = ("AllNps", "Minimal", "HwPr")
DEFAULT_MAP_MODE = "AllNps"  # akida's own default for Model.map
_UNITS = {"HRC": "HRC", "CNP1": "CNP", "CNP2": "CNP", "FNP2": "FNP", "FNP3": "FNP"}
_DEVICE_NAMES = {"akd1000": "AKD1000", "akd1500": "AKD1500"}


def virtual_device(device: str) -> Any:
    """akida's virtual device of that name (``akd1000``, ``akd1500``); no board needed."""
    import akida

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    return getattr(akida, _DEVICE_NAMES[device])()


def map_model(model: Any, device: str, mode: str = DEFAULT_MAP_MODE) -> ModelMapping:
    """Map ``model`` (an ``akida.Model``, in place: pass a copy) on ``device`` with hardware only.

    ModelError (one line) if the model does not fit the chip: a layer that would run on the host CPU
    has no chip cost to model.
    """
    import akida

    if mode not in MAP_MODES:
        raise ModelError(f"unknown map mode {mode!r}: choose one of {', '.join(MAP_MODES)}")
    name = _DEVICE_NAMES.get(device, device)
    try:
        model.map(virtual_device(device), hw_only=True, mode=getattr(akida.MapMode, mode))
    except RuntimeError as error:  # akida's reasons come one per line: keep the message on one
        raise ModelError(f"the model does not map fully on {name} ({' '.join(str(error).split())})") from None
    software = [seq.name for seq in model.sequences if seq.backend != akida.BackendType.Hardware]
    if software:
        raise ModelError(f"the model does not map fully on {name}: sequences {software} run in software")
    passes = sum(len(seq.passes) for seq in model.sequences)
    input_bytes = math.prod(int(d) for d in model.layers[0].input_dims)
    # An InputData layer does no work (its values go to the next layer as events) and has no counters.
    layers = tuple(placement(layer) for layer in model.layers if layer.parameters.layer_type.name != "InputData")
    return ModelMapping(device, mode, layers, passes, len(model.sequences), input_bytes, weight_count(model))


def weight_count(model: Any) -> int:
    """Weights of every layer (a separable layer's depthwise and pointwise kernels both count)."""
    return sum(
        math.prod(layer.get_variable(name).shape)
        for layer in model.layers
        for name in layer.get_variable_names()
        if name.startswith("weights")
    )


def placement(layer: Any) -> Placement:
    """One mapped akida layer's :class:`Placement` (its NPs, kind and the sizes its cost depends on)."""
    params = layer.parameters
    kind = params.layer_type.name
    nps = list(layer.mapping.nps) if layer.mapping is not None else []
    types = tuple(sorted(np_.type.name for np_ in nps))
    if not nps:
        return Placement(layer.name, "none", 1, 0, np_types=types)
    units = {_UNITS.get(t) for t in types}
    if len(units) != 1 or None in units:
        raise ModelError(
            f"layer '{layer.name}' ({kind}) is mapped on NPs {types}, which the energy model does not know"
        )
    unit = units.pop()
    assert unit is not None
    if unit == "FNP":
        return Placement(layer.name, unit, len(nps), int(params.units), np_types=types)
    area = int(params.kernel_width) * int(params.kernel_height)
    return Placement(layer.name, unit, len(nps), int(params.filters), area, _positions(layer), types)


def _positions(layer: Any) -> int:
    """Output positions of a conv before pooling (the HRC computes every one; a CNP fires over them)."""
    params = layer.parameters
    width, height = int(layer.input_dims[0]), int(layer.input_dims[1])
    strides = int(params.stride_x), int(params.stride_y)
    kernel = int(params.kernel_width), int(params.kernel_height)
    if int(params.padding) == 1:  # akida.Padding.Same
        return math.ceil(width / strides[0]) * math.ceil(height / strides[1])
    return ((width - kernel[0]) // strides[0] + 1) * ((height - kernel[1]) // strides[1] + 1)
