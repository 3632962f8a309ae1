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
