"""Potential.compute(backend="cuda") against backend="numpy" (simulator in CI, device where present).

float64 throughout: energies, forces, virial, stress and per-atom energies agree to
1e-10 relative on random multi-element cells, with an ensemble and the Delta baseline.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nnmd_kernels import Potential
from nnmd_kernels.baseline import pair_terms
from nnmd_kernels.neighbors import NeighborList, neighbor_pairs

pc = pytest.importorskip("nnmd_kernels.gpu.potential_cuda")
from nnmd_kernels.gpu.device import gpu_available  # noqa: E402

SMALL = dict(n_radial=5, n_angular=4, r_radial=3.4, r_angular=3.0)  # simulator-sized


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


def _cell_structure(seed, species_z, k=3):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 2.0 * k + rng.uniform(-0.6, 0.6, (3, 3)) * (1 - np.eye(3))
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = ((grid + rng.uniform(-0.25, 0.25, grid.shape)) / k) @ cell
    return pos, rng.choice(species_z, len(pos)), cell


def _assert_same(a, b, tol=1e-10):
    assert abs(a.energy - b.energy) < tol * abs(b.energy)
    assert _rel(a.energies, b.energies) < tol
    assert _rel(a.energies_models, b.energies_models) < tol
    assert _rel(a.descriptors, b.descriptors) < tol
    assert _rel(a.forces, b.forces) < tol
    assert _rel(a.virial, b.virial) < tol
    if b.stress is None:
        assert a.stress is None
    else:
        assert _rel(a.stress, b.stress) < tol
    assert abs(a.energy_std - b.energy_std) <= tol * max(abs(b.energy_std), 1e-12)


@pytest.mark.parametrize("options", [
    dict(weighting="z", cutoff_fn="tanh", angle="theta", activation="twisted_tanh"),
    dict(weighting="blocks", cutoff_fn="cos", angle="cos", activation="aenet_twist"),
])
def test_cuda_backend_matches_numpy_on_periodic_cells(options):
    pot = Potential.random(["Li", "P", "S"], seed=1, n_models=2, **SMALL, **options)
    pos, numbers, cell = _cell_structure(7, [3, 15, 16])
    _assert_same(pot.compute(pos, numbers, cell, True, backend="cuda"),
                 pot.compute(pos, numbers, cell, True, backend="numpy"))


def test_cuda_backend_open_cluster_and_cpu_neighbor_list():
    pot = Potential.random(["Li", "Ge"], seed=2, **SMALL)
    rng = np.random.default_rng(5)
    pos = rng.uniform(0, 5.0, (14, 3))
    numbers = rng.choice([3, 32], 14)
    ref = pot.compute(pos, numbers, backend="numpy")
    _assert_same(pot.compute(pos, numbers, backend="cuda"), ref)
    # a CPU NeighborList passed in is honoured (its pairs go to the device)
    _assert_same(pot.compute(pos, numbers, neighbors=NeighborList(pot.cutoff, 0.5), backend="cuda"), ref)


def test_compute_pairs_cuda_matches_numpy():
    pot = Potential.random(["Li", "P", "S"], seed=3, **SMALL)
    pos, numbers, cell = _cell_structure(8, [3, 15, 16], k=2)
    types = pot.types_of(numbers)
    p = neighbor_pairs(pos, cell, True, pot.cutoff)
    a = pot.compute_pairs(types, p.i, p.j, p.vectors, len(pos), backend="cuda")
    b = pot.compute_pairs(types, p.i, p.j, p.vectors, len(pos), backend="numpy")
    assert isinstance(a.pair_grad, np.ndarray)
    for x, y in ((a.energies, b.energies), (a.pair_grad, b.pair_grad), (a.descriptors, b.descriptors)):
        assert _rel(x, y) < 1e-10


def test_baseline_kernel_matches_pair_terms():
    rng = np.random.default_rng(4)
    pot = Potential.random(["Li", "S"], seed=4, **SMALL)
    coef = rng.uniform(0.0, 2.0, (2, 2, 4)) * np.array([400.0, 50.0, 10.0, 1.0])
    coef = coef + np.swapaxes(coef, 0, 1)
    from nnmd_kernels.baseline import PairBaseline

    pot = Potential(pot.descriptor, pot.networks, pot.feature_mean, pot.feature_std,
                    pot.energy_shift, PairBaseline(coef, 3.2))
    n, per = 5, 6
    pair_i = np.repeat(np.arange(n), per)
    rij = rng.normal(size=(n * per, 3))
    rij *= (rng.uniform(0.9, 3.6, n * per) / np.linalg.norm(rij, axis=1))[:, None]  # some beyond R
    type_c = rng.integers(0, 2, n)
    type_j = rng.integers(0, 2, n * per)
    dp = pc.device_potential(pot, np)
    e = np.zeros(n)
    g = np.zeros_like(rij)
    offsets = np.searchsorted(pair_i, np.arange(n + 1))
    pc._baseline[1, 32](rij, offsets, type_c, type_j, dp.base_coef, dp.base_R, dp.base_rp, dp.base_rp1, e, g)
    d = np.linalg.norm(rij, axis=1)
    phi, dphi = pair_terms(pot.baseline, d, type_c[pair_i], type_j)
    assert _rel(e, 0.5 * np.bincount(pair_i, phi, n)) < 1e-12
    assert _rel(g, (0.5 * dphi / d)[:, None] * rij) < 1e-12


def test_overlapping_atoms_named_by_cuda_backend():
    pot = Potential.random(["Li"], seed=0, **SMALL)
    pos = np.array([[0.0, 0, 0], [0.05, 0, 0], [2.0, 0, 0]])
    with pytest.raises(ValueError, match="apart"):
        pot.compute(pos, [3, 3, 3], backend="cuda")


@pytest.mark.skipif(gpu_available(), reason="checks the no-GPU default")
def test_auto_stays_on_cpu_without_a_gpu():
    pot = Potential.random(["Li"], seed=0, **SMALL)
    pos = np.array([[0.0, 0, 0], [1.5, 0, 0], [0.0, 1.6, 0]])
    res = pot.compute(pos, [3, 3, 3], backend="auto")
    assert res.forces.shape == (3, 3)
    assert "cupy" not in sys.modules


@pytest.mark.gpu
def test_cuda_backend_on_device_matches_numba_at_default_settings():
    pytest.importorskip("cupy")
    pot = Potential.random(["Li", "Ge", "P", "S"], seed=0, n_models=2)
    pos, numbers, cell = _cell_structure(9, [3, 32, 15, 16], k=6)
    _assert_same(pot.compute(pos, numbers, cell, True, backend="cuda"),
                 pot.compute(pos, numbers, cell, True, backend="numba"))
