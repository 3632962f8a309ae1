"""LAMMPS executor (fix external, serial and 2 MPI ranks) against the native engine."""

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import read, write

from nnmd_kernels import Potential
from nnmd_kernels.md.state import make_rng, maxwell_boltzmann
from services.md.lammps import folded_terms, ghost_center_terms, gpu_for_rank, lammps_cell
from services.md.native import run_native
from services.md.spec import MDSpec

pytestmark = pytest.mark.lammps


@pytest.fixture(scope="module")
def potential():
    # small descriptor so the tests are quick; the algebra is the same as the default
    return Potential.random(["Li", "P", "S"], seed=0, n_radial=12, n_angular=8,
                            r_radial=4.5, r_angular=4.0)


def lps_cell(seed=1, temperature=600.0):
    """54 atoms of Li/P/S in a skewed (triclinic) cell, with Maxwell-Boltzmann momenta."""
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat((3, 3, 3))
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.2
    cell[2, 1] -= 0.8
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    v = maxwell_boltzmann(atoms.get_masses(), temperature, make_rng(seed))
    atoms.set_velocities(v / units.fs)
    return atoms


def test_lammps_cell_rotation_is_lower_triangular():
    rng = np.random.default_rng(0)
    cell = rng.normal(size=(3, 3)) + 5 * np.eye(3)
    lower, q = lammps_cell(cell)
    np.testing.assert_allclose(cell @ q, lower, atol=1e-12)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    assert np.all(np.diag(lower) > 0) and np.allclose(np.triu(lower, 1), 0)


def test_ghost_center_terms_equal_the_periodic_potential(potential):
    """Explicit periodic images as 'ghosts', cut to a slab: the rank's share is exact."""
    atoms = lps_cell()
    ref = potential.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    types = potential.types_of(atoms.numbers)
    h = atoms.cell.array
    shifts = np.array([(a, b, c) for a in range(-2, 3) for b in range(-2, 3)
                       for c in range(-2, 3) if (a, b, c) != (0, 0, 0)]) @ h
    images = (atoms.positions[None] + shifts[:, None]).reshape(-1, 3)
    # a "rank" owning the atoms with fractional x < 0.5; ghosts = everything else nearby
    frac = atoms.get_scaled_positions()[:, 0]
    local = np.flatnonzero(frac < 0.5)
    other = np.flatnonzero(frac >= 0.5)
    x_all = np.concatenate([atoms.positions[local], atoms.positions[other], images])
    t_all = np.concatenate([types[local], types[other], np.tile(types, len(shifts))])
    e, f, w = ghost_center_terms(potential, x_all, t_all, len(local))
    np.testing.assert_allclose(f, ref.forces[local], rtol=0, atol=1e-10)
    assert e == pytest.approx(ref.energies[local].sum(), rel=1e-12)
    # the other half completes energy and virial
    x2 = np.concatenate([atoms.positions[other], atoms.positions[local], images])
    t2 = np.concatenate([types[other], types[local], np.tile(types, len(shifts))])
    e2, _, w2 = ghost_center_terms(potential, x2, t2, len(other))
    assert e + e2 == pytest.approx(ref.energy, rel=1e-12)
    np.testing.assert_allclose(w + w2, ref.virial, atol=1e-9)
    # one rank owning everything: ghosts folded onto their owners
    x1 = np.concatenate([atoms.positions, images])
    owner = np.concatenate([np.arange(len(atoms)), np.tile(np.arange(len(atoms)), len(shifts))])
    e1, f1, w1 = folded_terms(potential, x1, np.concatenate([types, np.tile(types, len(shifts))]),
                              owner, len(atoms))
    assert e1 == pytest.approx(ref.energy, rel=1e-12)
    np.testing.assert_allclose(f1, ref.forces, atol=1e-10)
    np.testing.assert_allclose(w1, ref.virial, atol=1e-9)


@pytest.mark.parametrize("fold_ghosts", [True, False])
def test_serial_lammps_matches_native_forces_and_nve_trajectory(potential, fold_ghosts):
    from services.md.lammps import run_lammps

    atoms = lps_cell()
    spec = MDSpec(ensemble="nve", dt_fs=1.0, steps=20, traj_interval=20, thermo_interval=20)
    frames = []
    final, info = run_lammps(atoms, potential, spec, traj=frames.append, fold_ghosts=fold_ghosts)
    ref = potential.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    first = frames[0]
    assert first.energy == pytest.approx(ref.energy, rel=1e-8)
    assert np.abs(first.forces - ref.forces).max() <= 1e-8 * np.abs(ref.forces).max()
    native_frames = []
    state = run_native(atoms, potential, spec, traj=native_frames.append)
    assert final.step == state.step == 20
    assert np.abs(final.positions - state.positions).max() < 1e-6
    assert np.abs(final.positions - atoms.positions).max() > 0.01  # the atoms did move
    assert info["force_calls"] == 21


def test_two_mpi_ranks_match_native(potential, tmp_path):
    from services.md.lammps import launch_lammps

    atoms = lps_cell(seed=2)
    structure, model = tmp_path / "in.extxyz", tmp_path / "m.nnmd"
    write(structure, atoms)
    potential.save(model)
    spec = MDSpec(ensemble="nve", dt_fs=1.0, steps=20, traj_interval=20, thermo_interval=10)
    result = launch_lammps(structure, model, spec, 2, tmp_path / "run",
                           traj=tmp_path / "traj.extxyz", thermo=tmp_path / "thermo.log",
                           timeout=240, store=(str(tmp_path / "store"), "two_ranks"))
    assert result["mpi_size"] == 2 and result["ranks"] == 2
    frames = read(tmp_path / "traj.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 20]
    atoms_in = read(structure)
    ref = potential.compute(atoms_in.positions, atoms_in.numbers, atoms_in.cell.array, True)
    assert frames[0].info["potential_energy"] == pytest.approx(ref.energy, rel=1e-8)
    f0 = frames[0].get_forces()  # ase.io puts extxyz forces on a calculator
    assert np.abs(f0 - ref.forces).max() <= 1e-8 * np.abs(ref.forces).max()
    state = run_native(atoms_in, potential, spec)
    assert np.abs(frames[-1].positions - state.positions).max() < 1e-6
    assert len((tmp_path / "thermo.log").read_text().splitlines()) == 1 + 3
    from services.store import Store

    stored = Store(str(tmp_path / "store"), read_only=True).read_trajectory("two_ranks")
    np.testing.assert_array_equal(stored["step"], [0, 20])
    np.testing.assert_allclose(stored["positions"][-1], state.positions, atol=1e-6)


def test_species_missing_from_model_fail_before_lammps_starts(potential, tmp_path):
    from services.md.lammps import launch_lammps, run_lammps

    atoms = lps_cell()
    atoms.numbers[0] = 32  # Ge: not in the model
    with pytest.raises(ValueError, match="Ge"):
        run_lammps(atoms, potential, MDSpec(steps=1))
    structure, model = tmp_path / "ge.extxyz", tmp_path / "m.nnmd"
    write(structure, atoms)
    potential.save(model)
    with pytest.raises(ValueError, match="Ge"):
        launch_lammps(structure, model, MDSpec(steps=1), 2, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_rank_to_gpu_mapping():
    assert [gpu_for_rank(r, 2, 2) for r in range(6)] == [0, 0, 1, 1, 0, 0]
    assert [gpu_for_rank(r, 4, 1) for r in range(4)] == [0, 0, 0, 0]
    assert gpu_for_rank(3, 2, 0) is None
    with pytest.raises(ValueError, match="ranks_per_gpu"):
        gpu_for_rank(0, 0, 1)


def test_lammps_npt_moves_the_box_and_user_commands_pass_through(potential, tmp_path):
    from services.md.lammps import run_lammps

    atoms = lps_cell(temperature=300.0)
    out = tmp_path / "user_fix.txt"
    spec = MDSpec(ensemble="npt", temperature=300.0, pressure_gpa=-2.0, dt_fs=0.5, steps=20,
                  tau_t_fs=20.0, tau_p_fs=100.0, traj_interval=10, thermo_interval=10,
                  lammps_commands=(f'fix user_print all print 5 "$(step) $(pe:%.6f) '
                                   f'$(v_nnmd_press_gpa:%.9f)" file {out} screen no',))
    frames = []
    final, _ = run_lammps(atoms, potential, spec, traj=frames.append,
                          log=tmp_path / "lammps.log")
    assert [f.step for f in frames] == [0, 10, 20]
    assert abs(final.volume - atoms.get_volume()) > 1e-3  # the barostat acted
    lines = [ln.split() for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert [int(s) for s, _, _ in lines] == [0, 5, 10, 15, 20]  # the user's fix ran in the run
    # LAMMPS' pe (from fix external's global energy) is the NNP energy of that frame
    by_step = {int(s): (float(pe), float(p)) for s, pe, p in lines}
    assert by_step[10][0] == pytest.approx(frames[1].energy, abs=1e-5)
    # LAMMPS' pressure, printed in GPa, is the frame's (to LAMMPS' own eV/A^3 -> bar
    # constant, nktv2p = 1.6021765e6, 1e-7 from CODATA 2018)
    for frame in frames:
        assert abs(frame.pressure_gpa) > 0.1  # GPa-sized, so a unit slip would show
        assert by_step[frame.step][1] == pytest.approx(frame.pressure_gpa, rel=1e-6)
    log = (tmp_path / "lammps.log").read_text()
    assert "v_nnmd_press_gpa" in log and "Press " not in log  # LAMMPS' log says GPa too


def test_lammps_npt_target_is_the_spec_gpa_in_bar():
    from services.md.lammps import LammpsNNP

    for p_gpa, p_bar in ((1.0, "10000"), (-2.0, "-20000"), (0.0001, "1"), (0.25, "2500")):
        spec = MDSpec(ensemble="npt", temperature=300.0, pressure_gpa=p_gpa, tau_p_fs=500.0)
        (fix,) = LammpsNNP._integrator_commands(spec)
        assert fix.endswith(f" iso {p_bar} {p_bar} 0.5"), fix
    spec = MDSpec(ensemble="npt", temperature=300.0, pressure_gpa=1.5, anisotropic=True)
    assert " aniso 15000 15000 " in LammpsNNP._integrator_commands(spec)[0]
