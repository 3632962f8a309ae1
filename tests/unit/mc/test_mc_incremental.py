"""The incremental engine (nnmd_kernels/mc_incremental.py): no drift, the same chain as the
generic path, every weighting mode, cutoff function and angle variable."""

from __future__ import annotations

import numpy as np
import pytest

from nnmd_kernels import Potential, mc

from .test_mc_local import CELLS, lattice

TOL = 1e-10  # eV

# (weighting, cutoff function, angle variable, options of Potential.random)
VARIANTS = {
    "z-tanh-theta": ("z", "tanh", "theta", dict()),
    "z-cos-cos-ensemble": ("z", "cos", "cos", dict(n_models=2, activation="aenet_twist")),
    "typespin-tanh-cos": ("typespin", "tanh", "cos", dict(activation="tanh")),
    "typespin-cos-theta-nodelta": ("typespin", "cos", "theta", dict(delta=False,
                                                                    activation="elu")),
    "blocks-tanh-theta": ("blocks", "tanh", "theta", dict(activation="sigmoid")),
    "blocks-cos-cos-radial-only": ("blocks", "cos", "cos", dict(n_angular=0)),
}


def potential(variant):
    weighting, fc, angle, extra = VARIANTS[variant]
    opts = dict(hidden=(8, 8), n_radial=6, n_angular=4, r_radial=4.5, r_angular=4.0,
                weighting=weighting, cutoff_fn=fc, angle=angle)
    opts.update(extra)
    return Potential.random(["Cu", "Ag", "Au"], seed=1, **opts)


def full(pot, st):
    real = st.numbers != 0
    return pot.compute(st.positions[real], st.numbers[real], st.cell, st.pbc, forces=False)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_drift_after_ten_thousand_moves(variant):
    """10^4 moves of every kind on a three-element cell with vacancy sites: the energy and
    every atomic energy still equal a full evaluation to 1e-10 eV, and the stored
    descriptors equal freshly computed ones (no periodic refresh is needed)."""
    pot = potential(variant)
    rng = np.random.default_rng(11)
    cell, k, pbc = CELLS["triclinic"]
    pos, numbers = lattice(cell, k, rng, vacancy_fraction=0.2)
    cfg = mc.MCConfig(temperature=3e4, translate=1, swap=1, vacancy=1, max_displacement=0.3)
    energy = mc.NNPEnergy(pot)
    st = mc.init(pos, numbers, cell, pbc, cfg, energy, seed=3)
    ws = mc.workspace_for(st, cfg, energy)
    st = mc.run(st, cfg, energy, 10_000, ws)
    acc = st.accepted
    assert min(acc.values()) > 300, acc  # every kind was accepted many times
    assert ws.engine.rebuilds > 1  # translates left the Verlet skin and the list was rebuilt
    ref = full(pot, st)
    real = st.numbers != 0
    assert abs(st.energy - ref.energy) < TOL
    np.testing.assert_allclose(st.energies[real], ref.energies, rtol=0, atol=TOL)
    assert np.all(st.energies[~real] == 0)
    G = ws.engine.G[real]
    np.testing.assert_allclose(G, ref.descriptors, rtol=1e-12,
                               atol=1e-12 * np.abs(ref.descriptors).max())
    # ... and the chain goes on from a checkpoint-free workspace without any difference
    st2 = mc.run(st, cfg, energy, 200, ws)
    assert abs(st2.energy - full(pot, st2).energy) < TOL


def test_same_chain_as_the_generic_path():
    """The incremental engine and the generic path (incremental=False) make the same
    proposals from the same random numbers and reach the same decisions: identical chains
    (fixed sites and an energy window included)."""
    pot = potential("blocks-tanh-theta")
    rng = np.random.default_rng(4)
    cell, k, pbc = CELLS["small"]
    pos, numbers = lattice(np.array(cell) * 2, 4, rng, vacancy_fraction=0.15)
    cfg = mc.MCConfig(temperature=4000.0, translate=1, swap=0.7, vacancy=0.5,
                      max_displacement=0.4, fixed=(0, 5, 9), energy_window=(-0.05, 0.05),
                      move_temperatures={"swap": 8000.0})
    out = {}
    for inc in (True, False):
        energy = mc.NNPEnergy(pot, incremental=inc)
        st = mc.init(pos, numbers, cell * 2, pbc, cfg, energy, seed=9)
        ws = mc.workspace_for(st, cfg, energy)
        for _ in range(4):
            st = mc.run(st, cfg, energy, 100, ws)
        out[inc] = st
    a, b = out[True], out[False]
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
    assert a.tried == b.tried and a.accepted == b.accepted
    assert abs(a.energy - b.energy) < TOL
    assert sum(a.accepted.values()) > 50


def test_slab_and_open_cluster():
    """Open directions (slab, isolated cluster) with the Verlet list."""
    pot = potential("z-tanh-theta")
    rng = np.random.default_rng(2)
    for cell, pbc in ((np.diag([10.4, 10.4, 20.0]), (True, True, False)),
                      (None, False)):
        box = np.eye(3) * 10.4
        pos, numbers = lattice(box, 4, rng, vacancy_fraction=0.1)
        cfg = mc.MCConfig(temperature=2e4, translate=1, swap=1, vacancy=1,
                          max_displacement=0.5)
        energy = mc.NNPEnergy(pot)
        st = mc.init(pos, numbers, cell, pbc, cfg, energy, seed=5)
        st = mc.run(st, cfg, energy, 3000)
        ref = full(pot, st)
        assert abs(st.energy - ref.energy) < TOL
        assert sum(st.accepted.values()) > 300
