"""Pressures are in GPa everywhere: units.pressure_gpa, the MD spec and npt_scr refuse bar."""

import math

import numpy as np
import pytest
from md_testpot import ideal_gas_force_fn

from nnmd_kernels.md import npt_scr
from nnmd_kernels.md.units import (
    BAR_TO_EV_PER_A3,
    EV_PER_A3_TO_BAR,
    EV_PER_A3_TO_GPA,
    GPA_TO_BAR,
    GPA_TO_EV_PER_A3,
    compressibility_per_gpa,
    pressure_gpa,
)
from services.md.spec import MDSpec


def test_conversion_constants_agree():
    assert GPA_TO_BAR == 1.0e4
    assert EV_PER_A3_TO_GPA == pytest.approx(160.2176634, rel=1e-12)
    assert GPA_TO_EV_PER_A3 == pytest.approx(GPA_TO_BAR * BAR_TO_EV_PER_A3, rel=1e-14)
    assert EV_PER_A3_TO_BAR == pytest.approx(EV_PER_A3_TO_GPA * GPA_TO_BAR, rel=1e-14)


@pytest.mark.parametrize("value, expected", [
    (1, 1.0), (1.5, 1.5), (-2.0, -2.0), (0, 0.0), (np.float64(0.25), 0.25), (np.int64(3), 3.0),
    ("1.5", 1.5), ("  1.5 ", 1.5), ("-0.1", -0.1), ("1e-3", 1e-3), (".5", 0.5),
    ("1.5GPa", 1.5), ("1.5 GPa", 1.5), ("1.5 gpa", 1.5), ("1.5GPA", 1.5), ("-2 GPa", -2.0),
    ("1000", 1000.0), ("-1000 GPa", -1000.0),
])
def test_numbers_and_gpa_strings_are_gpa(value, expected):
    p = pressure_gpa(value)
    assert type(p) is float and p == expected


@pytest.mark.parametrize("text, number, unit, gpa", [
    ("1000 bar", "1000", "bar", "0.1"),
    ("1000bar", "1000", "bar", "0.1"),
    ("1000 BAR", "1000", "bar", "0.1"),
    ("10 kbar", "10", "kbar", "1"),
    ("1 atm", "1", "atm", "0.000101325"),
    ("1e9 Pa", "1e9", "Pa", "1"),
    ("2000 kPa", "2000", "kPa", "0.002"),
    ("100 MPa", "100", "MPa", "0.1"),
    ("1000 psi", "1000", "psi", "0.00689475729317"),
    ("0.01 eV/A^3", "0.01", "eV/A^3", "1.602176634"),
    ("0.01 eV/A3", "0.01", "eV/A^3", "1.602176634"),
    ("0.01 eV/Å^3", "0.01", "eV/A^3", "1.602176634"),
    ("0.01 eV/Angstrom^3", "0.01", "eV/A^3", "1.602176634"),
])
def test_other_units_are_refused_with_the_conversion(text, number, unit, gpa):
    with pytest.raises(ValueError) as err:
        pressure_gpa(text)
    assert str(err.value) == (f"--pressure {number} {unit}: pressures are in GPa; "
                              f"{number} {unit} = {gpa} GPa, write --pressure {gpa}")


def test_the_message_names_the_field():
    with pytest.raises(ValueError, match=r"^pressure_gpa 1000 bar: .* write pressure_gpa: 0\.1$"):
        pressure_gpa("1000 bar", "pressure_gpa")
    with pytest.raises(ValueError, match=r"^groups\[0\]\.pressure 5 kbar: .*= 0\.5 GPa"):
        pressure_gpa("5 kbar", "groups[0].pressure")


@pytest.mark.parametrize("value", [1000.001, -1500.0, 1e4, "20000", "1e5 GPa"])
def test_a_pressure_beyond_1000_gpa_is_taken_for_bar(value):
    with pytest.raises(ValueError, match=r"is it in bar\? pressures are in GPa "
                                         r"\(1 bar = 1e-4 GPa"):
        pressure_gpa(value)
    with pytest.raises(ValueError, match=r"^--pressure "):
        pressure_gpa(value)


def test_the_bar_hint_gives_the_value_in_gpa():
    with pytest.raises(ValueError, match=r"10000 bar = 1 GPa\)$"):
        pressure_gpa(10000)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "-inf GPa",
                                   np.float64("nan")])
def test_non_finite_values_are_refused(value):
    with pytest.raises(ValueError, match=r"^--pressure .*GPa"):
        pressure_gpa(value)


@pytest.mark.parametrize("value", ["", "GPa", "one GPa", "1,5", "1.5 G Pa", "1 mbar",
                                   "1 furlong", "1.2.3", "--1"])
def test_unparseable_strings_name_the_field(value):
    with pytest.raises(ValueError, match=r"^--pressure .*pressures are in GPa"):
        pressure_gpa(value)


@pytest.mark.parametrize("value", [None, True, [1.0], {"p": 1}])
def test_non_numbers_are_refused(value):
    with pytest.raises(ValueError, match=r"^--pressure: expected a pressure in GPa"):
        pressure_gpa(value)


def test_compressibility_is_per_gpa():
    assert compressibility_per_gpa(0.45) == 0.45
    assert compressibility_per_gpa("2e-3") == 2e-3
    with pytest.raises(ValueError, match=r"is it in 1/bar\?.*4\.5e-05 /bar = 0\.45 /GPa"):
        compressibility_per_gpa(4.5e-5)
    for bad in (0.0, -1.0, math.inf, "x", None):
        with pytest.raises(ValueError, match="^--compressibility"):
            compressibility_per_gpa(bad)


def test_md_spec_is_in_gpa_and_refuses_the_bar_keys():
    spec = MDSpec(ensemble="npt", temperature=300.0, pressure_gpa="1.5 GPa")
    assert spec.pressure_gpa == 1.5 and spec.compressibility_per_gpa == 0.45
    assert MDSpec.from_dict(spec.to_dict()) == spec
    assert "pressure_bar" not in spec.to_dict()
    with pytest.raises(ValueError, match="--pressure \\(GPa\\) is required for npt"):
        MDSpec(ensemble="npt", temperature=300.0)
    with pytest.raises(ValueError, match=r"write pressure_gpa: 0\.1"):
        MDSpec(ensemble="npt", temperature=300.0, pressure_gpa="1000 bar")
    with pytest.raises(ValueError, match="is it in bar"):
        MDSpec(ensemble="npt", temperature=300.0, pressure_gpa=10000.0)
    old = {"ensemble": "npt", "temperature": 300.0, "pressure_bar": 10000.0}
    for make in (MDSpec.from_dict, lambda d: MDSpec(**d)):
        with pytest.raises(ValueError, match=r"pressure_bar is no longer accepted, pressures are "
                                             r"in GPa; pressure_bar: 10000 \(bar\) is "
                                             r"pressure_gpa: 1$"):
            make(old)
    with pytest.raises(ValueError, match=r"compressibility_per_bar: 4\.5e-05 \(1/bar\) is "
                                         r"compressibility_per_gpa: 0\.45"):
        MDSpec.from_dict({"compressibility_per_bar": 4.5e-5})
    with pytest.raises(ValueError, match="unknown key 'pressure'"):
        MDSpec.from_dict({"ensemble": "npt", "temperature": 300.0, "pressure": 1.0})


def test_npt_scr_takes_gpa_and_refuses_bar():
    npt_scr(ideal_gas_force_fn, dt=1.0, temperature=300.0, pressure_gpa=1.0)
    npt_scr(ideal_gas_force_fn, 1.0, 300.0, 1.0)
    with pytest.raises(ValueError, match=r"pressure_bar \(bar\) is no longer accepted: pressures "
                                         r"are in GPa, pass pressure_gpa; pressure_bar=2000 is "
                                         r"pressure_gpa=0\.2"):
        npt_scr(ideal_gas_force_fn, dt=1.0, temperature=300.0, pressure_bar=2000.0)
    with pytest.raises(ValueError, match="compressibility_per_bar"):
        npt_scr(ideal_gas_force_fn, 1.0, 300.0, 1.0, compressibility_per_bar=4.5e-5)
    with pytest.raises(ValueError, match="is it in bar"):
        npt_scr(ideal_gas_force_fn, 1.0, 300.0, 20000.0)  # a positional value in bar
    with pytest.raises(ValueError, match="is it in 1/bar"):
        npt_scr(ideal_gas_force_fn, 1.0, 300.0, 1.0, compressibility_per_gpa=4.5e-5)
    with pytest.raises(TypeError, match="pressure_gpa"):
        npt_scr(ideal_gas_force_fn, 1.0, 300.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'pressure'"):
        npt_scr(ideal_gas_force_fn, 1.0, 300.0, pressure=1.0)


def test_npt_scr_target_is_gpa():
    """One barostat step of a nearly cold ideal gas (P_int ~ 0, negligible noise): ln V
    moves by -(beta_T / tau_p) P0 dt, with P0 in GPa and beta_T in 1/GPa."""
    rng = np.random.default_rng(0)
    n, cell = 8, np.eye(3) * 10.0
    x = rng.uniform(size=(n, 3)) @ cell
    vols = {}
    for p in (0.5, 1.0):
        init_fn, step_fn = npt_scr(ideal_gas_force_fn, dt=1.0, temperature=1e-6,
                                   pressure_gpa=p, tau_t=1e9, tau_p=100.0,
                                   compressibility_per_gpa=1.0)
        s = init_fn(x, np.full(n, 39.95), np.full(n, 18), cell, velocities=np.full((n, 3), 1e-9),
                    seed=1)
        vols[p] = step_fn(s).volume
    v0 = 1000.0
    # d ln V = -(beta/tau_p) (P0 - P_int) dt + noise; beta P0 = 1/GPa * P GPa: dimensionless
    for p, v in vols.items():
        assert math.log(v / v0) == pytest.approx(-(1.0 / 100.0) * p, rel=1e-3)


def test_thermo_log_prints_the_pressure_in_gpa():
    import io

    from md_testpot import cu_crystal, short_morse_force_fn

    from nnmd_kernels.md import nve, pressure, run
    from services.md.observers import MDFrame, ThermoLog

    atoms = cu_crystal(2, a=3.55, rattle=0.02)  # compressed: a positive pressure, GPa-sized
    init_fn, step_fn = nve(short_morse_force_fn(), dt=1.0)
    s = run(step_fn, init_fn(atoms.positions, atoms.get_masses(), atoms.numbers,
                             atoms.cell.array, atoms.pbc, temperature=300.0, seed=0), 3)
    out = io.StringIO()
    ThermoLog(out)(MDFrame.from_state(s))
    header, line = out.getvalue().splitlines()
    assert header.split()[7] == "P_GPa"
    p_gpa = pressure(s) * EV_PER_A3_TO_GPA
    assert MDFrame.from_state(s).pressure_gpa == pytest.approx(p_gpa, rel=1e-12)
    assert float(line.split()[6]) == pytest.approx(p_gpa, abs=1e-6)
    assert 0.1 < p_gpa < 1000.0
