"""The physics suite for the potential: one shared set of physical checks that it must pass.

Finite-difference forces and stress, translation / rotation / permutation /
periodic-image invariance, extensivity, isolated atoms, the three backends
agreeing, the ensemble mean.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernels_testlib import SMALL, SPECIES4, jittered_cell, random_numbers

from nnmd_kernels import Potential


def rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def fd_forces(pot, pos, nums, cell, pbc, h=1e-5):
    f = np.zeros_like(pos)
    for a in range(len(pos)):
        for k in range(3):
            p = pos.copy()
            p[a, k] += h
            ep = pot.compute(p, nums, cell, pbc, forces=False).energy
            p[a, k] -= 2 * h
            em = pot.compute(p, nums, cell, pbc, forces=False).energy
            f[a, k] = -(ep - em) / (2 * h)
    return f


def fd_stress(pot, pos, nums, cell, eps=1e-6):
    s = np.zeros((3, 3))
    vol = abs(np.linalg.det(cell))
    for a in range(3):
        for b in range(3):
            e = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * eps
                e.append(pot.compute(pos @ strain, nums, cell @ strain, True, forces=False).energy)
            s[a, b] = (e[0] - e[1]) / (2 * eps) / vol
    return s


@pytest.mark.parametrize("triclinic", [False, True])
@pytest.mark.parametrize("weighting", ["z", "blocks", "typespin"])
def test_forces_and_stress_by_finite_differences(triclinic, weighting):
    pot = Potential.random(SPECIES4, seed=4, weighting=weighting, **SMALL)
    pos, cell = jittered_cell(n_side=2, spacing=2.4, triclinic=triclinic, seed=11)
    nums = random_numbers(len(pos), seed=2)
    res = pot.compute(pos, nums, cell, True)
    assert rel(res.forces, fd_forces(pot, pos, nums, cell, True)) < 1e-6
    assert rel(res.stress, fd_stress(pot, pos, nums, cell)) < 1e-6
    assert np.allclose(res.virial, res.virial.T, atol=1e-9 * np.abs(res.virial).max())
    assert abs(res.forces.sum(axis=0)).max() < 1e-9 * np.abs(res.forces).max() * len(pos)


def test_default_descriptor_forces_by_finite_differences(pot4_default):
    """The source product's configuration: 50 + 30 functions, 6 A, Z weighting, Delta on."""
    pos, cell = jittered_cell(n_side=2, spacing=2.5, seed=3)
    nums = random_numbers(len(pos), seed=5)
    res = pot4_default.compute(pos, nums, cell, True)
    assert rel(res.forces, fd_forces(pot4_default, pos, nums, cell, True, h=2e-5)) < 1e-6


def test_open_boundaries_cluster(pot4):
    rng = np.random.default_rng(0)
    pos, _ = jittered_cell(n_side=2, spacing=2.4, triclinic=False, seed=2)
    pos = pos + rng.normal(0, 0.05, pos.shape)
    nums = random_numbers(len(pos), seed=1)
    res = pot4.compute(pos, nums, None, False)
    assert res.stress is None
    assert rel(res.forces, fd_forces(pot4, pos, nums, None, False)) < 1e-6


def test_backends_agree(pot4):
    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=8)
    nums = random_numbers(len(pos), seed=3)
    a = pot4.compute(pos, nums, cell, True, backend="numba")
    b = pot4.compute(pos, nums, cell, True, backend="numpy")
    c = pot4.compute(pos, nums, cell, True, backend="naive")
    assert rel(a.energies, b.energies) < 1e-12
    assert rel(a.forces, b.forces) < 1e-10
    assert rel(a.virial, b.virial) < 1e-10
    assert rel(c.energies, b.energies) < 1e-10  # naive O(N^2) oracle: explicit loops


def test_invariances(pot4):
    rng = np.random.default_rng(4)
    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=9)
    nums = random_numbers(len(pos), seed=4)
    base = pot4.compute(pos, nums, cell, True)
    # translation
    t = pot4.compute(pos + rng.normal(size=3), nums, cell, True)
    assert abs(t.energy - base.energy) < 1e-10 * abs(base.energy) and rel(t.forces, base.forces) < 1e-9
    # rotation of atoms and cell together
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r = pot4.compute(pos @ q.T, nums, cell @ q.T, True)
    assert abs(r.energy - base.energy) < 1e-10 * abs(base.energy)
    assert rel(r.forces, base.forces @ q.T) < 1e-9
    assert rel(r.virial, q @ base.virial @ q.T) < 1e-9
    # permutation
    perm = rng.permutation(len(pos))
    p = pot4.compute(pos[perm], nums[perm], cell, True)
    assert abs(p.energy - base.energy) < 1e-10 * abs(base.energy) and rel(p.forces, base.forces[perm]) < 1e-10
    # periodic images: move atoms by lattice vectors
    shifts = rng.integers(-2, 3, size=(len(pos), 3))
    s = pot4.compute(pos + shifts @ cell, nums, cell, True)
    assert abs(s.energy - base.energy) < 1e-10 * abs(base.energy) and rel(s.forces, base.forces) < 1e-9
    # extensivity: a 2x1x1 supercell has twice the energy and the same forces
    sup = np.concatenate([pos, pos + cell[0]])
    big = np.array([2 * cell[0], cell[1], cell[2]])
    e2 = pot4.compute(sup, np.concatenate([nums, nums]), big, True)
    assert abs(e2.energy - 2 * base.energy) < 1e-9 * abs(base.energy)
    assert rel(e2.forces[: len(pos)], base.forces) < 1e-9


def test_isolated_atom_and_dimer(pot4):
    one = pot4.compute(np.zeros((1, 3)), [14 + 1], None, False)  # P
    assert np.all(one.forces == 0) and np.isfinite(one.energy)
    # far-apart atoms do not interact
    two = pot4.compute(np.array([[0, 0, 0], [0, 0, 50.0]]), [15, 15], None, False)
    assert abs(two.energy - 2 * one.energy) < 1e-12 and np.all(two.forces == 0)
    # an atom alone in a big periodic box equals the isolated atom
    box = pot4.compute(np.zeros((1, 3)), [15], np.eye(3) * 20, True)
    assert abs(box.energy - one.energy) < 1e-12


def test_ensemble_mean_and_spread(pot4):
    """A 2-member ensemble predicts the mean of its members; spread = their std."""
    from dataclasses import replace

    from nnmd_kernels.network import ElementNetwork

    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=12)
    nums = random_numbers(len(pos), seed=6)
    full = pot4.compute(pos, nums, cell, True)
    members = []
    for m in range(2):
        nets = tuple(ElementNetwork(tuple(w[m : m + 1] for w in n.weights),
                                    tuple(b[m : m + 1] for b in n.biases), n.activation) for n in pot4.networks)
        members.append(replace(pot4, networks=nets).compute(pos, nums, cell, True))
    assert abs(full.energy - 0.5 * (members[0].energy + members[1].energy)) < 1e-10 * abs(full.energy)
    assert rel(full.forces, 0.5 * (members[0].forces + members[1].forces)) < 1e-10
    assert np.isclose(full.energy_std, 0.5 * abs(members[0].energy - members[1].energy), rtol=1e-8)


def test_delta_baseline_shifted_force_at_cutoff():
    from nnmd_kernels.baseline import PairBaseline, pair_terms

    b = PairBaseline(np.array([[[2.0e3, -5.0e2, 30.0, -4.0]]]), 5.0)
    d = np.array([5.0 - 1e-6, 5.0, 5.5, 2.0])
    phi, dphi = pair_terms(b, d, np.zeros(4, int), np.zeros(4, int))
    assert abs(phi[0]) < 1e-10 and abs(dphi[0]) < 1e-5 and phi[1] == 0 and phi[2] == 0
    h = 1e-6
    p1, _ = pair_terms(b, d[3:] + h, np.zeros(1, int), np.zeros(1, int))
    p0, _ = pair_terms(b, d[3:] - h, np.zeros(1, int), np.zeros(1, int))
    assert np.isclose((p1 - p0)[0] / (2 * h), dphi[3], rtol=1e-7)


def test_compiled_baseline_pass_matches_pair_terms():
    """baseline_numba.baseline_pairs (the numba backend's Delta term) against the reference
    pair_terms + bincount, on random pairs of 3 species inside and beyond the cutoff."""
    from nnmd_kernels.baseline import PairBaseline, pair_terms
    from nnmd_kernels.baseline_numba import baseline_pairs

    rng = np.random.default_rng(11)
    c = rng.normal(size=(3, 3, 4)) * np.array([2e3, 5e2, 50.0, 5.0])
    b = PairBaseline(c + np.swapaxes(c, 0, 1), 5.0)
    P, n = 500, 40
    pair_i = np.sort(rng.integers(0, n, P))
    rij = rng.normal(size=(P, 3))
    rij *= (rng.uniform(1.2, 6.0, P) / np.linalg.norm(rij, axis=1))[:, None]  # some beyond 5 A
    types = rng.integers(0, 3, n + 10)
    pair_j = rng.integers(0, n + 10, P)
    ti, tj = types[pair_i], types[pair_j]
    d = np.linalg.norm(rij, axis=1)
    phi, dphi = pair_terms(b, d, ti, tj)
    e_ref = 0.5 * np.bincount(pair_i, weights=phi, minlength=n)
    g0 = rng.normal(size=(P, 3))
    g_ref = g0 + (0.5 * dphi / d)[:, None] * rij
    g = g0.copy()
    e = baseline_pairs(b, rij, pair_i, ti, tj, n, g)
    assert np.abs(e - e_ref).max() <= 1e-12 * np.abs(e_ref).max()
    assert np.abs(g - g_ref).max() <= 1e-12 * np.abs(g_ref).max()
    assert np.array_equal(baseline_pairs(b, rij, pair_i, ti, tj, n), e)  # energies alone: same
