"""`nnmd md` end to end on a small model: native and LAMMPS engines, and bad input."""

import argparse

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from nnmd_kernels import Potential
from orchestrator.commands import md


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mdcli")
    pot = Potential.random(["Li", "P", "S"], seed=0, n_radial=8, n_angular=4, r_radial=4.0,
                           r_angular=3.5)
    pot.save(d / "m.nnmd")
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat(2)
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    atoms.rattle(0.03, seed=0)
    write(d / "s.extxyz", atoms)
    return d


def _parse(argv):
    parser = argparse.ArgumentParser()
    md.register(parser.add_subparsers())
    return parser.parse_args(["md", *argv])


@pytest.mark.parametrize("engine", ["native", "lammps"])
def test_md_command_writes_trajectory_and_thermo(inputs, tmp_path, engine):
    traj = tmp_path / f"{engine}.extxyz"
    args = _parse(["--model", str(inputs / "m.nnmd"), "--structure", str(inputs / "s.extxyz"),
                   "--engine", engine, "--ensemble", "nvt", "--temperature", "300", "--dt",
                   "0.5", "--steps", "10", "--traj", str(traj), "--traj-interval", "5",
                   "--thermo-interval", "5", "--final", str(tmp_path / "last.extxyz"),
                   "--store", str(tmp_path / "store"), "--quiet"])
    assert args.func(args) == 0
    frames = read(traj, index=":")
    assert [f.info["step"] for f in frames] == [0, 5, 10]
    assert [f.info["time_fs"] for f in frames] == [0.0, 2.5, 5.0]
    lines = traj.with_suffix(".thermo").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("# step")
    last = read(tmp_path / "last.extxyz")
    np.testing.assert_allclose(last.positions, frames[-1].positions)
    assert "momenta" in last.arrays  # a restart keeps the velocities
    from services.store import Store

    stored = Store(str(tmp_path / "store"), read_only=True).read_trajectory(engine)
    np.testing.assert_array_equal(stored["step"], [0, 5, 10])
    np.testing.assert_allclose(stored["positions"], [f.positions for f in frames], atol=1e-7)


def test_md_command_errors_name_the_fix(inputs, tmp_path):
    base = ["--model", str(inputs / "m.nnmd"), "--structure", str(inputs / "s.extxyz"),
            "--steps", "5", "--traj", str(tmp_path / "t.extxyz")]
    args = _parse([*base, "--ensemble", "npt", "--temperature", "300"])
    with pytest.raises(ValueError, match="--pressure"):
        args.func(args)
    args = _parse([*base, "--np", "2"])
    with pytest.raises(ValueError, match="--engine lammps"):
        args.func(args)
    atoms = read(inputs / "s.extxyz")
    atoms.numbers[0] = 32
    write(tmp_path / "ge.extxyz", atoms)
    args = _parse([*base[:2], "--structure", str(tmp_path / "ge.extxyz"), *base[4:]])
    with pytest.raises(ValueError, match="Ge"):
        args.func(args)
    assert not (tmp_path / "t.extxyz").exists()  # nothing ran


def _npt_argv(inputs, tmp_path, pressure, *extra):
    return ["md", "--model", str(inputs / "m.nnmd"), "--structure", str(inputs / "s.extxyz"),
            "--ensemble", "npt", "--temperature", "300", "--pressure", pressure,
            "--dt", "0.5", "--steps", "2", "--traj", str(tmp_path / "t.extxyz"),
            "--traj-interval", "1", "--thermo-interval", "1", "--quiet", *extra]


@pytest.mark.parametrize("pressure, says", [
    ("1000bar", "--pressure 1000 bar: pressures are in GPa; 1000 bar = 0.1 GPa, "
                "write --pressure 0.1"),
    ("10 kbar", "10 kbar = 1 GPa, write --pressure 1"),
    ("10000", "is it in bar? pressures are in GPa (1 bar = 1e-4 GPa; 10000 bar = 1 GPa)"),
    ("high", "--pressure 'high': not a pressure; pressures are in GPa"),
])
def test_a_pressure_in_another_unit_exits_2_naming_gpa(inputs, tmp_path, capsys, pressure, says):
    from orchestrator import cli

    assert cli.main(_npt_argv(inputs, tmp_path, pressure)) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("nnmd md: error: ")  # one clean line
    assert says in err and "GPa" in err and "Traceback" not in err
    assert not (tmp_path / "t.extxyz").exists()  # nothing ran


def test_a_compressibility_in_1_per_bar_exits_2(inputs, tmp_path, capsys):
    from orchestrator import cli

    argv = _npt_argv(inputs, tmp_path, "1", "--compressibility", "4.5e-5")
    assert cli.main(argv) == 2
    assert "is it in 1/bar? compressibilities are in 1/GPa" in capsys.readouterr().err


def test_pressure_1_means_1_gpa_for_both_engines(inputs, tmp_path, capsys, monkeypatch):
    from orchestrator import cli
    from services.md import native
    from services.md.lammps import LammpsNNP

    for text in ("1", "1GPa", "1 gpa"):
        assert md.spec_from_args(_parse(_npt_argv(inputs, tmp_path, text)[1:])).pressure_gpa == 1.0
    spec = md.spec_from_args(_parse(_npt_argv(inputs, tmp_path, "1")[1:]))
    assert spec.compressibility_per_gpa == 0.45
    # LAMMPS (units metal) gets 1 GPa as 10000 bar
    fix = LammpsNNP._integrator_commands(spec)[0]
    assert " iso 10000 10000 " in fix
    # the native engine gets 1 GPa (npt_scr converts to eV/A^3 itself)
    handed = []
    real = native.npt_scr

    def spy(*args, **kwargs):
        handed.append(kwargs["pressure_gpa"])
        return real(*args, **kwargs)

    monkeypatch.setattr(native, "npt_scr", spy)
    assert cli.main(_npt_argv(inputs, tmp_path, "1")) == 0
    assert handed == [1.0]
    assert "(npt at 300 K, 1 GPa)" in capsys.readouterr().out
    lines = (tmp_path / "t.thermo").read_text().splitlines()
    assert lines[0].split()[7] == "P_GPa" and len(lines) == 1 + 3
