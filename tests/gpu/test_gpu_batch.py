"""Batched proposals on the GPU path (the MD executors' engine: cuda): the same proposals as
one chain at a time on the CPU (simulator in CI, device where present)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.data import atomic_masses

from nnmd_kernels import Potential, slhmc
from nnmd_kernels.md.batch import BatchSystem, batch_forces
from nnmd_kernels.md.forces import potential_force_fn

pytest.importorskip("nnmd_kernels.gpu.potential_cuda")

SMALL = dict(n_radial=5, n_angular=4, r_radial=3.4, r_angular=3.0)  # simulator-sized


def _chain(seed, k=2):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 2.2 * k
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    x = ((grid + rng.uniform(-0.15, 0.15, grid.shape)) / k) @ cell
    z = rng.choice([3, 16], len(x))
    conf = slhmc.SLHMCConfig(temperature=700.0, dt=0.5, n_md=1 + seed, n_md_min=1)
    return slhmc.init_chain(x, z, atomic_masses[z], cell, True, 0.0, conf, seed=seed), conf


def test_batched_forces_and_proposals_on_the_cuda_backend():
    pot = Potential.random(["Li", "S"], seed=2, hidden=(6,), **SMALL)
    chains = [_chain(s) for s in range(3)]
    systems = [BatchSystem(pot, s.numbers, s.pbc) for s, _ in chains]
    gpu = batch_forces(pot, systems, [s.positions for s, _ in chains],
                       [s.cell for s, _ in chains], backend="cuda")
    for (s, _), (e, f, v) in zip(chains, gpu):
        ref = pot.compute(s.positions, s.numbers, s.cell, True, backend="numpy")
        assert abs(e - ref.energy) <= 1e-10 * abs(ref.energy)
        np.testing.assert_allclose(f, ref.forces, rtol=0, atol=1e-9)
        np.testing.assert_allclose(v, ref.virial, rtol=0, atol=1e-9)
    got = slhmc.propose_many([s for s, _ in chains], [c for _, c in chains], pot,
                             backend="cuda")
    for (s, conf), p in zip(chains, got):
        ref = slhmc.propose(s, conf, potential_force_fn(pot, s.numbers, s.pbc, backend="numpy"))
        assert p.n_md == ref.n_md and p.rng_state == ref.rng_state
        np.testing.assert_allclose(p.positions, ref.positions, rtol=0, atol=1e-9)
        assert abs(p.log_q - ref.log_q) <= 1e-8
