"""Placements from akida's mapper: the rebuilt public models land on the NP counts BrainChip published,
and a placement carries what the energy model needs (unit, NPs, width, kernel, positions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import akida
import numpy as np
import pytest

from edge_runtime import cli
from edge_runtime.errors import ModelError
from edge_runtime.mapping import map_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import architectures  # noqa: E402

DATA = json.loads((ROOT / "bench" / "data" / "akida1-silicon.json").read_text())


def mapped(name: str, device: str, mode: str):
    return map_model(architectures.build(architectures.expand(DATA["architectures"][name])), device, mode)


@pytest.mark.parametrize(
    ("arch", "mode", "published"),
    [  # the devhub's metrics.json "NPs" (sum of each layer's NPs, the HRC included), AKD1500
        ("vww", "Minimal", 17),
        ("vww", "AllNps", 29),
        ("arrhythmia", "Minimal", 7),
        ("arrhythmia", "AllNps", 31),
        ("speech_dscnn", "Minimal", 6),
        ("speech_dscnn", "AllNps", 31),
        ("imagenet_a0.25_160", "Minimal", 21),
        ("imagenet_a0.5_224", "Minimal", 33),
        ("imagenet_a1.0_224", "Minimal", 117),
    ],
)
def test_rebuilt_public_models_map_on_the_published_np_counts(arch, mode, published) -> None:
    mapping = mapped(arch, "akd1500", mode)
    assert sum(p.nps for p in mapping.layers) == published


def test_vww_minimal_placements_are_the_published_split() -> None:
    """[S1] model summary: conv_0 on the HRC, conv_1 and conv_2 on 2 CNP1 each, the rest on 1, predictions FNP3."""
    layers = mapped("vww", "akd1500", "Minimal").layers
    assert [p.nps for p in layers] == [1, 2, 2] + [1] * 12
    assert [p.unit for p in layers] == ["HRC"] + ["CNP"] * 13 + ["FNP"]
    assert layers[-1].np_types == ("FNP3",)
    hrc = layers[0]  # 96x96x3 input, stride 2: 48x48 output positions, 8 filters
    assert (hrc.positions, hrc.width, hrc.kernel_area) == (48 * 48, 8, 9)
    assert (layers[4].width, layers[4].kernel_area, layers[4].positions) == (64, 9, 12 * 12)  # separable_4, stride 2


def test_multi_pass_and_fnp2_are_recorded() -> None:
    mapping = mapped("plant_village", "akd1500", "Minimal")
    assert mapping.passes == 2 and mapping.multi_pass
    fc = {p.name: p for p in mapping.layers}["fc_1"]
    assert fc.unit == "FNP" and fc.np_types == ("FNP2",) and fc.width == 512


def test_a_model_the_hardware_cannot_run_is_refused_in_one_line() -> None:
    model = akida.Model()
    model.add(akida.InputConvolutional((10, 10, 1), (3, 3), 4, name="in", weights_bits=8, act_bits=4))
    model.add(
        akida.Convolutional(
            (3, 3), 4, name="conv", weights_bits=4, act_bits=4, pool_type=akida.PoolType.Max, pool_size=(2, 2)
        )
    )
    model.add(akida.FullyConnected(5, name="fc", weights_bits=4, activation=False))
    for layer in model.layers:
        for variable in layer.get_variable_names():
            if variable == "weights":
                layer.set_variable(variable, np.ones(layer.get_variable(variable).shape, np.int8))
    with pytest.raises(ModelError, match="does not map fully on AKD1000") as caught:
        map_model(model, "akd1000")
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelError, match="unknown map mode"):
        map_model(model, "akd1000", "Fast")


def test_simulate_can_price_with_a_bundles_recorded_mapping(tmp_path, capsys) -> None:
    """--mapping uses the manifest's placements (what an edge host without a mapper would do), and gives
    the same figures as mapping the .fbz again."""
    bundle = ROOT / "models" / "mnist-zeroaware"
    frames = np.load(bundle / "golden.npz")["frames"]
    np.save(tmp_path / "frames.npy", frames)
    base = ["simulate", str(bundle / "model.fbz"), str(tmp_path / "frames.npy"), "--out", str(tmp_path / "o.npz")]
    assert cli.main([*base, "--stats", str(tmp_path / "mapped.json")]) == 0
    assert cli.main([*base, "--stats", str(tmp_path / "recorded.json"), "--mapping", str(bundle)]) == 0
    mapped_stats = json.loads((tmp_path / "mapped.json").read_text())
    recorded = json.loads((tmp_path / "recorded.json").read_text())
    assert recorded["energy_per_frame_j"] == mapped_stats["energy_per_frame_j"]
    assert recorded["time_per_frame_s"] == mapped_stats["time_per_frame_s"]
    capsys.readouterr()
    assert cli.main([*base, "--stats", str(tmp_path / "x.json"), "--mapping", str(tmp_path)]) == 2
    assert "manifest" in capsys.readouterr().err
