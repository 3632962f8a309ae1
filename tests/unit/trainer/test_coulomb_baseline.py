"""The Coulomb term in the Delta baseline: training subtracts it from the labels and the
model adds it back (nnmd_kernels/training.py, potential.py, model_file.py)."""

import numpy as np
import pytest

from nnmd_kernels import Potential
from nnmd_kernels.electrostatics import CoulombTerm, coulomb
from nnmd_kernels.training import Structure, TrainConfig, train, without_coulomb

CHARGES = {"Li": 1.0, "F": -1.0}


def _rocksalt_frames(n=6, seed=0):
    """Rattled, strained LiF rock salt (8 atoms); labels = Coulomb + a Born-Mayer repulsion."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    term = CoulombTerm(np.array([-1.0, 1.0]), r_cut=6.0, accuracy=1e-7)  # types: F 0, Li 1
    out = []
    for k in range(n):
        a = bulk("LiF", "rocksalt", a=4.03 * (1 + rng.uniform(-0.03, 0.03)), cubic=True)
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        types = (a.numbers == 3).astype(int)  # F 0, Li 1
        c = coulomb(term, a.positions, types, a.cell.array, True)
        # Born-Mayer repulsion between unlike neighbours, A exp(-r / rho)
        from nnmd_kernels.neighbors import neighbor_pairs

        p = neighbor_pairs(a.positions, a.cell.array, True, 4.0)
        unlike = types[p.i] != types[p.j]
        d = p.distances[unlike]
        e_rep = 0.5 * np.sum(300.0 * np.exp(-d / 0.3))
        g = (0.5 * -300.0 / 0.3 * np.exp(-d / 0.3) / d)[:, None] * p.vectors[unlike]
        F = np.zeros((len(a), 3))
        for x in range(3):
            F[:, x] = np.bincount(p.i[unlike], g[:, x], len(a)) - np.bincount(p.j[unlike], g[:, x], len(a))
        vir = -(p.vectors[unlike].T @ g) + c.virial
        out.append(Structure(a.positions, a.numbers, a.cell.array, np.array([True] * 3),
                             c.energy + e_rep, c.forces + F, -vir / a.get_volume(), name=f"lif{k}"))
    return out


def test_without_coulomb_removes_exactly_the_term():
    s = _rocksalt_frames(1)[0]
    term = CoulombTerm.from_dict({"charges": CHARGES, "r_cut": 6.0, "accuracy": 1e-7}, ("F", "Li"))
    r = without_coulomb(s, term, ("F", "Li"))
    c = coulomb(term, s.positions, (s.numbers == 3).astype(int), s.cell, True)
    assert r.energy == pytest.approx(s.energy - c.energy)
    np.testing.assert_allclose(r.forces, s.forces - c.forces)
    np.testing.assert_allclose(r.stress, s.stress + c.virial / abs(np.linalg.det(s.cell)))


def test_trained_model_carries_the_term_and_round_trips(tmp_path):
    frames = _rocksalt_frames(6)
    cfg = TrainConfig(descriptor={"n_radial": 4, "n_angular": 2, "r_radial": 3.5, "r_angular": 3.5},
                      hidden=(8,), max_epochs=60, warmup_epochs=2, stress_weight=1.0,
                      coulomb={"charges": CHARGES, "r_cut": 6.0, "accuracy": 1e-7})
    res = train(frames, cfg)
    pot = res.potential
    assert pot.coulomb is not None and pot.species == ("Li", "F") and pot.coulomb.charges.tolist() == [1.0, -1.0]
    # the model's energy contains the Coulomb energy (~-10 eV/atom): without it the labels
    # could not be matched within tens of meV/atom
    s = frames[0]
    full = pot.compute(s.positions, s.numbers, s.cell, s.pbc)
    assert abs(full.energy - s.energy) / len(s.numbers) < 0.06
    local = pot.compute_local(s.positions, s.numbers, s.cell, s.pbc, neighbors=None, forces=True, backend="auto")
    assert full.energy - local.energy < -5 * len(s.numbers)
    # forces and stress include the term consistently: finite differences of the full energy
    h = 1e-4
    p, m = s.positions.copy(), s.positions.copy()
    p[3, 1] += h
    m[3, 1] -= h
    fd = -(pot.compute(p, s.numbers, s.cell, s.pbc).energy - pot.compute(m, s.numbers, s.cell, s.pbc).energy) / (2 * h)
    assert full.forces[3, 1] == pytest.approx(fd, abs=1e-4)
    # save / load keeps it (format_version 2), and a warm start keeps the initial model's term
    path = tmp_path / "m.nnmd"
    pot.save(path)
    import json

    assert json.loads(path.read_text())["format_version"] == 2
    back = Potential.load(path)
    assert back.coulomb == pot.coulomb
    assert back.compute(s.positions, s.numbers, s.cell, s.pbc).energy == pytest.approx(full.energy, rel=1e-12)
    warm = train(frames, TrainConfig(**{**cfg.__dict__, "max_epochs": 2, "coulomb": None}), init=pot).potential
    assert warm.coulomb == pot.coulomb
    with pytest.raises(ValueError, match="no electrostatic term"):
        pot.save(tmp_path / "ffield.sannp", format="sannp")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="coulomb must be a mapping"):
        TrainConfig(coulomb=[1, -1])
    with pytest.raises(ValueError, match="coulomb.charges"):
        TrainConfig(coulomb={"charges": {"Li": "plus one"}})
    with pytest.raises(ValueError, match="no charge for F"):
        train(_rocksalt_frames(2), TrainConfig(max_epochs=1, coulomb={"charges": {"Li": 1.0}}))
