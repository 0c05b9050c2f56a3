"""Calibration: our NNLS against brute force, recovery of known coefficients from synthetic board data,
refusals when the data cannot identify them, and the ``calibrate`` command end to end."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import stat

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime import calibrate_cli, cli, energy
from edge_runtime.counters import Counters, LayerCounters
from edge_runtime.energy import EnergyModel, Load, Measurements
from edge_runtime.errors import ConfigError, DataError


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
    x = energy.nnls(a, b)
    reference = brute_force_nnls(a, b)
    assert np.all(x >= 0)
    assert np.linalg.norm(a @ x - b) <= np.linalg.norm(a @ reference - b) + 1e-9 * (1 + np.linalg.norm(b))
    np.testing.assert_allclose(x, reference, atol=1e-7 * (1 + np.abs(reference).max()))


def test_nnls_simple_cases() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(energy.nnls(a, a @ np.array([2.0, 3.0])), [2.0, 3.0])
    np.testing.assert_allclose(energy.nnls(a, -(a @ np.array([2.0, 3.0]))), [0.0, 0.0])
    np.testing.assert_allclose(energy.nnls(a, np.array([1.0, -1.0, 0.0])), [0.5, 0.0])


# The truth differs from the packaged default in every coefficient calibration can set.
DEFAULT = EnergyModel.load_default()
TRUTH = dataclasses.replace(
    DEFAULT.coefficients,
    input_pixel_pj=3.1, input_mac_pj=0.4, input_event_pj=4.2, synaptic_op_pj=12.5, output_event_pj=90.0,
    floor_power_w=0.884, host_time_s=7.3e-4, host_time_per_pixel_s=3.2e-8,
    cycles_per_input_event=4.1, cycles_per_synaptic_op=0.02,
)
FITTED_WITH_TIMES = [name for name in energy.UNITS if name != "clock_hz"]


def synthetic_load(frames: int, seed: int, models: int) -> Load:
    """Counters of ``frames`` frames from ``models`` different networks (pixels and input MACs differ
    between networks, events vary frame to frame, fan-out varies with which channels fire)."""
    rng = np.random.default_rng(seed)
    shapes = rng.choice([784, 3072, 150528, 490][:models], size=frames)
    macs_per_pixel = {784: 144.0, 3072: 48.0, 150528: 36.0, 490: 408.0}
    events = rng.uniform(2e3, 8e5, frames)
    return Load(
        pixels=shapes.astype(float),
        input_macs=np.array([macs_per_pixel[s] * s for s in shapes]),
        input_events=events,
        synaptic_ops=events * rng.uniform(20, 300, frames),
        output_events=rng.uniform(1e3, 8e5, frames),
    )


def board_measurements(coefficients: energy.Coefficients, load: Load) -> Measurements:
    time = energy.frame_time_s(coefficients, load)
    chip = energy.PJ * (
        coefficients.input_pixel_pj * load.pixels + coefficients.input_mac_pj * load.input_macs
        + coefficients.input_event_pj * load.input_events + coefficients.synaptic_op_pj * load.synaptic_ops
        + coefficients.output_event_pj * load.output_events
    )
    return Measurements(coefficients.floor_power_w * time + chip, time)


def assert_recovered(model: EnergyModel, names: list[str], rel: float = 0.01) -> None:
    for name in names:
        assert getattr(model.coefficients, name) == pytest.approx(getattr(TRUTH, name), rel=rel), name


def test_calibrate_recovers_every_coefficient_from_energy_and_frame_time() -> None:
    load = synthetic_load(200, seed=1, models=4)
    result = energy.calibrate(DEFAULT, load, board_measurements(TRUTH, load), version="test")
    assert_recovered(result.model, FITTED_WITH_TIMES)
    assert [r.target for r in result.fits] == ["frame time", "board energy"]
    assert all(r.r2 > 0.999999 and r.max_relative_error < 1e-9 for r in result.fits)
    assert result.model.version == "test"
    assert "fitted by calibrate to 200 measurements" in result.model.sources["synaptic_op_pj"]
    assert result.model.sources["clock_hz"] == DEFAULT.sources["clock_hz"]


def test_calibrate_from_energy_alone_holds_floor_power_and_time_shape() -> None:
    """Without frame times, floor power and the time coefficients but host time come from the base."""
    base = EnergyModel("base", dataclasses.replace(
        DEFAULT.coefficients, floor_power_w=TRUTH.floor_power_w,
        host_time_per_pixel_s=TRUTH.host_time_per_pixel_s,
        cycles_per_input_event=TRUTH.cycles_per_input_event,
        cycles_per_synaptic_op=TRUTH.cycles_per_synaptic_op,
    ), DEFAULT.sources)
    load = synthetic_load(200, seed=2, models=4)
    measured = dataclasses.replace(board_measurements(TRUTH, load), frame_time_s=None)
    result = energy.calibrate(base, load, measured, version="test")
    (report,) = result.fits
    assert set(report.fitted) == {"host_time_s", "input_pixel_pj", "input_mac_pj", "input_event_pj",
                                  "synaptic_op_pj", "output_event_pj"}
    assert_recovered(result.model, list(report.fitted))


def test_one_network_holds_its_constant_input_layer_at_the_base() -> None:
    """One network means constant pixels and input MACs, which cannot be told from host time."""
    load = synthetic_load(100, seed=3, models=1)
    base = EnergyModel("base", dataclasses.replace(
        DEFAULT.coefficients, input_pixel_pj=TRUTH.input_pixel_pj, input_mac_pj=TRUTH.input_mac_pj,
        host_time_per_pixel_s=TRUTH.host_time_per_pixel_s), DEFAULT.sources)
    result = energy.calibrate(base, load, board_measurements(TRUTH, load), version="test")
    time_fit, energy_fit = result.fits
    assert time_fit.fixed == ("host_time_per_pixel_s",)
    assert energy_fit.fixed == ("input_pixel_pj", "input_mac_pj")
    assert_recovered(result.model, FITTED_WITH_TIMES)


def test_calibrate_with_measurement_noise_still_pins_the_large_terms() -> None:
    """0.1% noise: the terms that carry the energy (floor power, host time, clocks) stay within 1%; the
    tiny ones (input pixels, MACs) cannot be resolved at that noise, and the fit says so via R^2."""
    load = synthetic_load(2000, seed=4, models=4)
    exact = board_measurements(TRUTH, load)
    rng = np.random.default_rng(5)
    noisy = Measurements(exact.energy_j * (1 + 1e-3 * rng.standard_normal(load.pixels.shape)),
                         exact.frame_time_s * (1 + 1e-3 * rng.standard_normal(load.pixels.shape)))
    result = energy.calibrate(DEFAULT, load, noisy, version="test")
    assert_recovered(result.model, ["floor_power_w", "host_time_s", "host_time_per_pixel_s",
                                    "cycles_per_input_event"])
    assert all(0.99 < r.r2 < 1 and 1e-3 < r.max_relative_error < 1e-2 for r in result.fits)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda load, m: (load, dataclasses.replace(m, energy_j=m.energy_j[:-1])),
         "199 energy measurements for 200 counter rows"),
        (lambda load, m: (load, dataclasses.replace(m, frame_time_s=m.frame_time_s[:-1])),
         "199 frame time measurements for 200 counter rows"),
        (lambda load, m: (load, dataclasses.replace(m, energy_j=-m.energy_j)),
         "every measured energy must be a positive finite number"),
        (lambda load, m: (load, dataclasses.replace(m, energy_j=m.energy_j * np.nan)),
         "every measured energy must be a positive finite number"),
    ],
)
def test_calibrate_refuses_mismatched_or_impossible_measurements(change, message) -> None:
    load = synthetic_load(200, seed=6, models=4)
    load, measured = change(load, board_measurements(TRUTH, load))
    with pytest.raises(DataError, match=message):
        energy.calibrate(DEFAULT, load, measured, version="test")


def test_calibrate_refuses_too_few_measurements() -> None:
    load = synthetic_load(200, seed=7, models=4)
    few = Load(*(getattr(load, f.name)[:4] for f in dataclasses.fields(Load)))
    with pytest.raises(DataError, match="4 measurements cannot fit 4 coefficients of frame time"):
        energy.calibrate(DEFAULT, few, board_measurements(TRUTH, few), version="test")


def test_calibrate_refuses_counters_that_move_together() -> None:
    """Synaptic ops exactly proportional to input events: their costs cannot be told apart."""
    load = synthetic_load(200, seed=8, models=4)
    load = dataclasses.replace(load, synaptic_ops=load.input_events * 50.0)
    with pytest.raises(DataError, match=r"cannot tell apart .*input_event_pj.*synaptic_op_pj") as error:
        energy.calibrate(DEFAULT, load, board_measurements(TRUTH, load), version="test")
    assert "--fix" in str(error.value)
    # Holding one of them at the base value makes the rest identifiable.
    fixed = dataclasses.replace(DEFAULT.coefficients, input_event_pj=TRUTH.input_event_pj,
                                cycles_per_synaptic_op=TRUTH.cycles_per_synaptic_op)
    result = energy.calibrate(EnergyModel("base", fixed, {}), load, board_measurements(TRUTH, load),
                              version="test", fix=["input_event_pj", "cycles_per_synaptic_op"])
    assert_recovered(result.model, ["synaptic_op_pj", "floor_power_w", "cycles_per_input_event"])


def test_calibrate_refuses_a_term_that_is_zero_everywhere() -> None:
    """From energy alone host time enters as floor power x host time: with a zero floor it cannot."""
    load = synthetic_load(50, seed=13, models=4)
    base = EnergyModel("base", dataclasses.replace(DEFAULT.coefficients, floor_power_w=0.0), {})
    measured = dataclasses.replace(board_measurements(TRUTH, load), frame_time_s=None)
    with pytest.raises(DataError, match="cannot fit host_time_s: its term is zero in every row"):
        energy.calibrate(base, load, measured, version="test")


def test_calibrate_refuses_unknown_fixed_names() -> None:
    load = synthetic_load(50, seed=9, models=4)
    with pytest.raises(ConfigError, match=r"cannot fix unknown coefficients \['synop_pj'\]"):
        energy.calibrate(DEFAULT, load, board_measurements(TRUTH, load), version="test", fix=["synop_pj"])


def write_counters(path, load: Load) -> None:
    """A counters file, as the simulator saves them, whose totals are ``load`` (one network: pixels
    constant): an input layer that never fires and an NP layer with all the events."""
    frames = load.pixels.shape[0]
    zeros = np.zeros(frames)
    layers = (
        LayerCounters("conv_0", neurons=10**5, inputs=int(load.pixels[0]), weights=432, nonzero_weights=400,
                      input_events=load.pixels // 2, output_events=zeros, output_spikes=zeros,
                      synaptic_ops=zeros, dense_synaptic_ops=load.input_macs),
        LayerCounters("conv_1", neurons=10**5, inputs=10**6, weights=4608, nonzero_weights=4000,
                      input_events=load.input_events, output_events=load.output_events,
                      output_spikes=3 * load.output_events, synaptic_ops=load.synaptic_ops,
                      dense_synaptic_ops=np.full(frames, 1e9)),
    )
    np.savez(path, outputs=np.zeros((frames, 10)), **Counters(layers).to_arrays())


def test_calibrate_command_end_to_end(tmp_path, capsys) -> None:
    load = synthetic_load(300, seed=10, models=1)
    measured = board_measurements(TRUTH, load)
    write_counters(tmp_path / "counters.npz", load)
    pairs = zip(measured.energy_j.tolist(), measured.frame_time_s.tolist(), strict=True)
    lines = ["energy_mj,fps", *(f"{e * 1e3!r},{1 / t!r}" for e, t in pairs)]
    (tmp_path / "measured.csv").write_text("\n".join(lines) + "\n")
    base = dataclasses.replace(DEFAULT.coefficients, input_pixel_pj=TRUTH.input_pixel_pj,
                               input_mac_pj=TRUTH.input_mac_pj,
                               host_time_per_pixel_s=TRUTH.host_time_per_pixel_s)
    EnergyModel("base-v0", base, DEFAULT.sources).save(tmp_path / "base.json")
    status = cli.main(["calibrate", "--counters", str(tmp_path / "counters.npz"),
                       "--measured", str(tmp_path / "measured.csv"), "--base", str(tmp_path / "base.json"),
                       "--out", str(tmp_path / "new.json")])
    assert status == 0
    out = capsys.readouterr().out
    assert "board energy: R^2 1.000000" in out and "held at base value: input_pixel_pj, input_mac_pj" in out
    new = EnergyModel.load(tmp_path / "new.json")
    assert new.version == "base-v0+calibrated"
    assert_recovered(new, FITTED_WITH_TIMES)
    assert json.loads((tmp_path / "new.json").read_text())["schema"] == energy.SCHEMA


def test_calibrate_command_energy_only_from_three_networks(tmp_path, capsys) -> None:
    """Three networks (.npy energies, no frame times), this board's floor power from the command line.
    Three, because host time, pixel and input-MAC energy are three per-network constants."""
    args = ["calibrate", "--out", str(tmp_path / "new.json"), "--floor-power-w", str(TRUTH.floor_power_w),
            "--version", "board-7"]
    for seed, network in enumerate(("small", "medium", "large")):
        load = synthetic_load(100, seed=11 + seed, models=1)
        load = dataclasses.replace(load, pixels=load.pixels * (1 + 40 * seed),
                                   input_macs=load.input_macs * (1 + 7 * seed**2))
        write_counters(tmp_path / f"{network}.npz", load)
        np.save(tmp_path / f"{network}.npy", board_measurements(TRUTH, load).energy_j)
        args += ["--counters", str(tmp_path / f"{network}.npz")]
        args += ["--measured", str(tmp_path / f"{network}.npy")]
    base = dataclasses.replace(DEFAULT.coefficients, host_time_per_pixel_s=TRUTH.host_time_per_pixel_s,
                               cycles_per_input_event=TRUTH.cycles_per_input_event,
                               cycles_per_synaptic_op=TRUTH.cycles_per_synaptic_op)
    EnergyModel("base-v0", base, DEFAULT.sources).save(tmp_path / "base.json")
    assert cli.main([*args, "--base", str(tmp_path / "base.json")]) == 0
    new = EnergyModel.load(tmp_path / "new.json")
    assert new.version == "board-7"
    assert "--floor-power-w" in new.sources["floor_power_w"]
    assert_recovered(new, ["floor_power_w", "host_time_s", "input_pixel_pj", "input_mac_pj", "input_event_pj",
                           "synaptic_op_pj", "output_event_pj"])


def test_calibrate_command_wants_pairs_of_files(tmp_path, capsys) -> None:
    status = cli.main(["calibrate", "--counters", "a.npz", "--counters", "b.npz", "--measured", "a.npy",
                       "--out", str(tmp_path / "new.json")])
    assert status == 2
    assert "one --measured per --counters" in capsys.readouterr().err


def test_calibrate_command_reports_unidentifiable_data_in_one_line(tmp_path, capsys) -> None:
    load = synthetic_load(4, seed=12, models=1)
    write_counters(tmp_path / "counters.npz", load)
    np.save(tmp_path / "measured.npy", board_measurements(TRUTH, load).energy_j)
    status = cli.main(["calibrate", "--counters", str(tmp_path / "counters.npz"),
                       "--measured", str(tmp_path / "measured.npy"), "--out", str(tmp_path / "new.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-runtime: error: 4 measurements cannot fit 4") and err.count("\n") == 1
    assert not (tmp_path / "new.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("energy_j,watts\n1,2\n", "need a header with one of energy_j, energy_mj"),
        ("energy_j,energy_mj\n1,2\n", "need a header"),
        ("fps\n1\n", "need a header"),
        ("energy_j\nabc\n", "column energy_j must hold numbers"),
        ("", "need a header"),
    ],
)
def test_measurement_csv_errors(tmp_path, text, message) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        calibrate_cli.load_measurements(path)


def test_counters_file_errors(tmp_path) -> None:
    np.savez(tmp_path / "c.npz", **{"conv_0/inputs": np.array(784), "conv_0/weights": np.array(9)})
    with pytest.raises(DataError, match="file lacks conv_0/neurons, conv_0/nonzero_weights, conv_0/input"):
        calibrate_cli.load_counters(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", outputs=np.zeros(3))
    with pytest.raises(DataError, match="no <layer>/<counter> arrays"):
        calibrate_cli.load_counters(tmp_path / "d.npz")
    with pytest.raises(DataError, match="cannot read counters"):
        calibrate_cli.load_counters(tmp_path / "missing.npz")


def _calibrate_inputs(tmp_path, counters_kind: str, measured_kind: str, out_kind: str) -> list[str]:
    """Good files, except the one of each kind named otherwise."""
    load = synthetic_load(300, seed=10, models=1)
    write_counters(tmp_path / "counters.npz", load)
    np.save(tmp_path / "measured.npy", board_measurements(TRUTH, load).energy_j)
    bad = tmp_path / "bad"
    bad.mkdir()
    counters_path, measured_path = tmp_path / "counters.npz", tmp_path / "measured.npy"
    if counters_kind == "npy":
        counters_path = bad / "ok.npy"
        np.save(counters_path, np.zeros(3))
    elif counters_kind == "empty":
        counters_path = bad / "empty.npy"
        counters_path.write_bytes(b"")
    elif counters_kind == "non-scalar":
        with np.load(tmp_path / "counters.npz") as data:
            arrays = {key: data[key] for key in data.files}
        arrays["conv_0/neurons"] = np.array([1, 2, 3])
        counters_path = bad / "vector.npz"
        np.savez(counters_path, **arrays)
    if measured_kind == "empty":
        measured_path = bad / "empty.npy"
        measured_path.write_bytes(b"")
    elif measured_kind == "npz":
        measured_path = bad / "archive.npy"
        with measured_path.open("wb") as handle:
            np.savez(handle, energy=np.ones(3))
    elif measured_kind == "strings":
        measured_path = bad / "strings.npy"
        np.save(measured_path, np.array(["1.0", "abc"] * 150))
    out = {"ok": tmp_path / "new.json", "missing-dir": tmp_path / "absent" / "new.json", "dir": bad}[out_kind]
    return ["calibrate", "--counters", str(counters_path), "--measured", str(measured_path), "--out", str(out)]


@pytest.mark.parametrize(
    ("counters_kind", "measured_kind", "out_kind", "message"),
    [
        ("npy", "ok", "ok", "one .npy array; expected counters"),
        ("empty", "ok", "ok", "empty or truncated file"),
        ("non-scalar", "ok", "ok", "conv_0/neurons must be one integer"),
        ("ok", "empty", "ok", "empty or truncated file"),
        ("ok", "npz", "ok", "an .npz archive"),
        ("ok", "strings", "ok", "must be 1-D numbers"),
        ("ok", "ok", "missing-dir", "does not exist"),
        ("ok", "ok", "dir", "is a directory"),
    ],
)
def test_calibrate_user_errors_are_one_line(tmp_path, capsys, counters_kind, measured_kind, out_kind, message):
    argv = _calibrate_inputs(tmp_path, counters_kind, measured_kind, out_kind)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 2 and message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.out == ""  # refused before the fit is printed
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_saved_coefficients_are_world_readable(tmp_path) -> None:
    old_umask = os.umask(0o077)
    try:
        DEFAULT.save(tmp_path / "model.json")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "model.json").stat().st_mode) == 0o644
    assert EnergyModel.load(tmp_path / "model.json") == DEFAULT
