"""Calibration: our NNLS against brute force; measuring a model the devhub's way on a fake board whose
hidden cost model the fit must recover; refusals when the data cannot identify coefficients; and the
``calibrate`` command end to end."""

from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import akida
import numpy as np
import pytest
from akida_random import mnist_like, set_random_variables
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime import cli, energy, energy_fit
from edge_runtime.akida_model import from_akida
from edge_runtime.board_measure import measure
from edge_runtime.energy import DeviceProfile
from edge_runtime.energy_fit import Row
from edge_runtime.errors import DataError
from edge_runtime.mapping import map_model
from edge_runtime.simulator import Simulator


def brute_force_nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The reference: try every set of free coefficients, keep the best non-negative least-squares fit."""
    best, best_residual = np.zeros(a.shape[1]), float(np.linalg.norm(b))
    for size in range(1, a.shape[1] + 1):
        for subset in itertools.combinations(range(a.shape[1]), size):
            x_subset = np.linalg.lstsq(a[:, subset], b, rcond=None)[0]
            if np.all(x_subset >= 0):
                x = np.zeros(a.shape[1])
                x[list(subset)] = x_subset
                residual = float(np.linalg.norm(a @ x - b))
                if residual < best_residual:
                    best, best_residual = x, residual
    return best


@st.composite
def full_rank_problems(draw) -> tuple[np.ndarray, np.ndarray]:
    unknowns = draw(st.integers(1, 5))
    rows = draw(st.integers(unknowns, 8))
    values = st.floats(-10, 10, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 3))
    a = draw(arrays(np.float64, (rows, unknowns), elements=values))
    b = draw(arrays(np.float64, (rows,), elements=values))
    singular = np.linalg.svd(a, compute_uv=False)
    # Full column rank and well conditioned: then the minimiser is unique and the comparison meaningful.
    assume(singular[-1] > 1e-3 * singular[0])
    return a, b


@settings(max_examples=300, deadline=None)
@given(full_rank_problems())
def test_nnls_agrees_with_brute_force(problem) -> None:
    a, b = problem
    x = energy_fit.nnls(a, b)
    reference = brute_force_nnls(a, b)
    assert np.all(x >= 0)
    assert np.linalg.norm(a @ x - b) <= np.linalg.norm(a @ reference - b) + 1e-9 * (1 + np.linalg.norm(b))
    np.testing.assert_allclose(x, reference, atol=1e-7 * (1 + np.abs(reference).max()))


def test_nnls_simple_cases() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(energy_fit.nnls(a, a @ np.array([2.0, 3.0])), [2.0, 3.0])
    np.testing.assert_allclose(energy_fit.nnls(a, -(a @ np.array([2.0, 3.0]))), [0.0, 0.0])
    np.testing.assert_allclose(energy_fit.nnls(a, np.array([1.0, -1.0, 0.0])), [0.5, 0.0])


# The truth differs from the packaged default in every coefficient calibration can set.


# ---------------------------------------------------------------------------------------------
# A fake board with a hidden cost model, driven through the real measurement code


BASE = DeviceProfile.packaged("akd1000")
_HIDDEN_FACTORS = {  # what the board "really" costs, relative to the packaged profile
    "hrc_clk_per_block": 1.3,
    "cnp_clk_per_event_filter_k3": 0.8,
    "cnp_clk_per_event_filter_k1": 1.5,
    "cnp_clk_per_layer": 2.0,
    "cnp_clk_per_neuron": 0.7,
    "fnp3_clk_per_event_unit": 1.4,
    "fnp2_clk_per_event_unit": 1.4,
    "fnp_clk_per_layer": 0.6,
    "host_s_per_frame": 0.5,
    "host_s_per_call": 0.3,
    "floor_power_w": 1.1,
    "dyn_pj_per_hrc_block": 0.9,
    "dyn_pj_per_event_filter": 1.7,
    "dyn_pj_per_synop": 0.6,
}
HIDDEN = dataclasses.replace(
    BASE,
    version="hidden",
    coefficients=dataclasses.replace(
        BASE.coefficients,
        **{name: getattr(BASE.coefficients, name) * f for name, f in _HIDDEN_FACTORS.items()},
        dyn_pj_per_fnp_event_unit=3.0,
    ),
)  # packaged: 0 (the zoo cannot see it), so not a factor


class FakeClock:
    """The host clock as the fake board advances it: each call takes its modelled wall time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeBoard:
    """An Akida device and model loader that behave as ``HIDDEN`` says, behind akida's real API shape:
    ``Model(path)`` / ``Model(layers=...)`` with real akida layers, ``map``, ``forward``, ``statistics``
    (fps, energy in mJ/frame, inference_clk summed over the call), ``soc.power_meter.floor`` in mW."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.clock = FakeClock()
        self.soc = type("Soc", (), {})()
        self.soc.power_measurement_enabled = False
        self.soc.power_meter = type("Meter", (), {"floor": profile.coefficients.floor_power_w * 1e3})()
        board = self

        class Model:
            def __init__(self, path: str | None = None, layers: list | None = None) -> None:
                self._real = akida.Model(path) if path is not None else akida.Model(layers=layers)
                self.statistics: Any = None
                self._mapping = None

            @property
            def layers(self) -> Any:
                return self._real.layers

            def save(self, path: str) -> None:
                self._real.save(path)

            def map(self, device: Any, hw_only: bool, mode: Any) -> None:
                assert device is board and hw_only
                self._mapping = map_model(akida.Model(layers=list(self._real.layers)), "akd1000", mode.name)

            def forward(self, frames: np.ndarray) -> np.ndarray:
                assert self._mapping is not None, "forward before map"
                counters = Simulator(from_akida(self._real)).run(frames).counters.layers
                n = len(frames)
                full = board.profile.bind(self._mapping).evaluate_counters(counters, n)
                no_host = dataclasses.replace(
                    board.profile,
                    coefficients=dataclasses.replace(
                        board.profile.coefficients, **dict.fromkeys(energy.HOST_COEFFICIENTS, 0.0)
                    ),
                )
                chip = no_host.bind(self._mapping).evaluate_counters(counters, n).frame_s
                wall = float(np.sum(full.frame_s))
                board.clock.now += wall
                energy_mj = float(np.mean(full.total_j)) * 1e3 if board.soc.power_measurement_enabled else None
                self.statistics = type(
                    "Statistics", (), {"fps": n / wall, "energy": energy_mj, "inference_clk": float(np.sum(chip)) * 3e8}
                )()
                return self._real.forward(frames)

        self.Model = Model


def small_model(path: Path) -> Path:
    """InputConv 3x3 (HRC), Conv 3x3, 1x1, 3x3 of different widths (CNPs, so fixed and per-neuron
    costs differ between sub-models), FullyConnected (FNP): every kind of unit."""
    rng = np.random.default_rng(5)
    model = akida.Model()
    model.add(akida.InputConvolutional((16, 16, 1), (3, 3), 8, name="conv0", weights_bits=8, act_bits=4))
    model.add(akida.Convolutional((3, 3), 16, name="conv1", weights_bits=4, act_bits=4))
    model.add(akida.Convolutional((1, 1), 32, name="conv2", weights_bits=4, act_bits=4))
    model.add(akida.Convolutional((3, 3), 8, name="conv3", weights_bits=4, act_bits=4))
    model.add(akida.FullyConnected(10, name="fc", weights_bits=4, activation=False))
    for layer in model.layers:
        set_random_variables(rng, layer)
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("calibration")
    board = FakeBoard(HIDDEN)
    frames = mnist_like(np.random.default_rng(3), 24, (16, 16, 1))
    return measure(
        small_model(work / "model.fbz"),
        frames,
        work / "measured",
        device=board,
        mode="Minimal",
        shifts=(-3, -1, 1, 2, 4),
        load=board.Model,
        clock=board.clock,
    )


def test_measurement_writes_a_sample_per_sub_model_shift_and_reading(samples) -> None:
    rows = list(csv.DictReader(samples.open()))
    labels = [row["label"] for row in rows]
    assert labels[::2] == [
        "layers 1-1",
        "layers 1-2",
        "layers 1-3",
        "layers 1-4",
        "whole model",
        "threshold shift -3",
        "threshold shift -1",
        "threshold shift +1",
        "threshold shift +2",
        "threshold shift +4",
    ]
    assert [row["frames_per_call"] for row in rows[:2]] == ["1", "24"]
    assert rows[0]["energy_j"] == "" and float(rows[1]["energy_j"]) > 0 and float(rows[1]["floor_w"]) > 0
    silenced = akida.Model(str(samples.parent / rows[2]["model"]))  # layers 1-2: conv1 cannot fire
    assert (silenced.layers[-1].get_variable("threshold") == 524287).all()


def test_calibration_recovers_the_hidden_cost_model(samples, tmp_path, capsys) -> None:
    """The fit sees only what the board reported; every coefficient the samples exercise comes back
    within 2% of the hidden one, and the rest keep the base profile's values."""
    assert (
        cli.main(
            ["calibrate", "--samples", str(samples), "--out", str(tmp_path / "fitted.json"), "--version", "site-1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "clocks: 10 measurements" in out and "wrote" in out
    fitted = DeviceProfile.load(tmp_path / "fitted.json")
    assert fitted.version == "site-1" and fitted.device == "akd1000"
    exercised = [
        "hrc_clk_per_block",
        "cnp_clk_per_event_filter_k3",
        "cnp_clk_per_event_filter_k1",
        "cnp_clk_per_layer",
        "cnp_clk_per_neuron",
        "fnp_clk_per_layer",
        "host_s_per_frame",
        "host_s_per_call",
        "floor_power_w",
        "dyn_pj_per_hrc_block",
        "dyn_pj_per_event_filter",
        "dyn_pj_per_fnp_event_unit",
        "dyn_pj_per_synop",
    ]
    fnp = "fnp3_clk_per_event_unit" if "FNP3" in _fc_types(samples) else "fnp2_clk_per_event_unit"
    for name in [*exercised, fnp]:
        assert getattr(fitted.coefficients, name) == pytest.approx(getattr(HIDDEN.coefficients, name), rel=0.02), name
    for name in (
        "cnp_clk_per_event_filter_k5",
        "cnp_clk_per_event_filter_k7",
        "host_s_per_extra_pass",
        "host_s_per_input_byte",
    ):
        assert getattr(fitted.coefficients, name) == getattr(BASE.coefficients, name), name
    assert "fitted by calibrate" in fitted.sources["cnp_clk_per_layer"]


def _fc_types(samples: Path) -> tuple[str, ...]:
    model = akida.Model(str(samples.parent / "sample-04.fbz"))
    return map_model(model, "akd1000", "Minimal").layers[-1].np_types


def test_fix_holds_a_coefficient_and_a_missing_out_is_refused(samples, tmp_path, capsys) -> None:
    assert (
        cli.main(
            ["calibrate", "--samples", str(samples), "--out", str(tmp_path / "f.json"), "--fix", "cnp_clk_per_layer"]
        )
        == 0
    )
    fitted = DeviceProfile.load(tmp_path / "f.json")
    assert fitted.coefficients.cnp_clk_per_layer == BASE.coefficients.cnp_clk_per_layer
    capsys.readouterr()
    assert cli.main(["calibrate", "--samples", str(samples)]) == 2
    assert "--samples needs --out" in capsys.readouterr().err
    assert cli.main(["calibrate", "--samples", str(samples), "--out", str(tmp_path / "g.json"), "--fix", "watts"]) == 2
    assert "cannot fix unknown coefficients ['watts']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1].update(clocks="fast"), "clocks must be a number, got 'fast'"),
        (lambda rows: rows[1].update(frame_time_s="-1"), "frame_time_s must be a positive number"),
        (lambda rows: rows[1].update(energy_j="1e-9"), "is not above floor_w x frame_time_s"),
        (lambda rows: rows[1].update(model="absent.fbz"), "no such model file"),
        (lambda rows: rows[3].update(counters="sample-00-counters.npz"), "the counters' layers do not match"),
    ],
)
def test_bad_samples_are_refused_in_one_line(samples, tmp_path, capsys, edit, message) -> None:
    rows = list(csv.DictReader(samples.open()))
    edit(rows)
    bad = samples.parent / "bad.csv"
    with bad.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli.main(["calibrate", "--samples", str(bad), "--out", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "x.json").exists()


def test_measure_needs_frames_and_a_board(tmp_path, capsys) -> None:
    model = small_model(tmp_path / "m.fbz")
    assert cli.main(["calibrate", "--measure", str(model)]) == 2
    assert "--measure needs --frames" in capsys.readouterr().err
    np.save(tmp_path / "f.npy", np.zeros((2, 16, 16, 1), np.uint8))
    assert (
        cli.main(
            [
                "calibrate",
                "--measure",
                str(model),
                "--frames",
                str(tmp_path / "f.npy"),
                "--out-dir",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "no Akida device found" in capsys.readouterr().err  # this machine has no board


def test_fit_refuses_data_that_cannot_pin_the_coefficients() -> None:
    rows = [Row("a", {"x": 1.0, "y": 2.0}, 3.0)]
    with pytest.raises(DataError, match="1 measurements cannot fit 2 coefficients"):
        energy_fit.fit(rows, ["x", "y"], {})
    rows = [Row("a", {"x": 1.0, "y": 2.0}, 3.0), Row("b", {"x": 2.0, "y": 4.0}, 6.0)]
    with pytest.raises(DataError, match="cannot tell apart x, y"):
        energy_fit.fit(rows, ["x", "y"], {})
    with pytest.raises(DataError, match="no measurement exercises it"):
        energy_fit.fit([Row("a", {"x": 1.0}, 1.0), Row("b", {"x": 2.0}, 2.0)], ["x", "y"], {})
    with pytest.raises(DataError, match="positive finite"):
        energy_fit.fit([Row("a", {"x": 1.0}, -1.0)], ["x"], {})


def test_a_model_that_starts_with_input_data_is_measured_from_its_first_computing_layer(tmp_path) -> None:
    """InputData computes nothing and has no firing threshold: sub-models start after it."""
    rng = np.random.default_rng(8)
    model = akida.Model()
    model.add(akida.InputData((12, 12, 1), input_bits=4, name="input"))
    model.add(akida.Convolutional((3, 3), 8, name="conv", weights_bits=4, act_bits=4))
    model.add(akida.FullyConnected(10, name="fc", weights_bits=4, activation=False))
    for layer in model.layers[1:]:
        set_random_variables(rng, layer)
    model.save(str(tmp_path / "m.fbz"))
    board = FakeBoard(HIDDEN)
    frames = rng.integers(0, 16, size=(6, 12, 12, 1)).astype(np.uint8)
    samples = measure(
        tmp_path / "m.fbz",
        frames,
        tmp_path / "out",
        device=board,
        mode="Minimal",
        shifts=(1,),
        load=board.Model,
        clock=board.clock,
    )
    labels = [row["label"] for row in csv.DictReader(samples.open())][::2]
    assert labels == ["layers 1-2", "whole model", "threshold shift +1"]
