"""Device neighbour lists (neighbors_cuda) against vesin's list (neighbors.neighbor_pairs).

Pair sets must be equal exactly as sets of (i, j, image shift), with the same vectors;
simulator inputs are tiny (it runs one Python thread per CUDA thread).
"""

from __future__ import annotations

import numpy as np
import pytest

from nnmd_kernels.neighbors import neighbor_pairs

nc = pytest.importorskip("nnmd_kernels.gpu.neighbors_cuda")

CUTOFF = 3.5


def _key(p):
    return sorted(zip(np.asarray(p.i).tolist(), np.asarray(p.j).tolist(),
                      map(tuple, np.asarray(p.shifts).tolist())))


def _vectors_by_key(p):
    return {k: v for k, v in zip(_key(p), np.asarray(p.vectors)[np.lexsort(
        (np.asarray(p.shifts)[:, 2], np.asarray(p.shifts)[:, 1], np.asarray(p.shifts)[:, 0],
         np.asarray(p.j), np.asarray(p.i)))])}


def _assert_same_pairs(dev, ref):
    assert len(dev) == len(ref)
    assert _key(dev) == _key(ref)
    assert np.all(np.diff(np.asarray(dev.i)) >= 0), "pairs must be grouped by centre"
    off = np.asarray(dev.offsets)
    assert np.array_equal(off, np.searchsorted(np.asarray(dev.i), np.arange(len(off))))
    a, b = _vectors_by_key(dev), _vectors_by_key(ref)
    assert max(np.abs(a[k] - b[k]).max() for k in a) < 1e-12


CASES = {
    # name: (cell, pbc, n_atoms)
    "orthorhombic": (np.diag([9.0, 8.0, 10.0]), True, 30),
    "triclinic": (np.array([[7.0, 0, 0], [2.5, 6.5, 0], [-1.5, 1.0, 7.5]]), True, 30),
    # perpendicular widths < cutoff: several images of the same atom are neighbours
    "small_triclinic": (np.array([[3.0, 0, 0], [1.2, 2.8, 0], [0.5, -0.7, 3.1]]), True, 6),
    "open_cluster": (None, False, 30),
    "slab": (np.array([[7.0, 0, 0], [2.0, 6.5, 0], [0.3, 0.2, 9.0]]), (True, True, False), 24),
}


def _structure(name, seed=0):
    cell, pbc, n = CASES[name]
    rng = np.random.default_rng(seed)
    if cell is None:
        return rng.uniform(0, 7.0, (n, 3)), None, False
    # fractional coordinates outside [0, 1) too: wrapping must give the right shifts
    return rng.uniform(-0.2, 1.2, (n, 3)) @ cell, cell, pbc


@pytest.mark.parametrize("name", list(CASES))
def test_pairs_equal_vesin(name):
    pos, cell, pbc = _structure(name)
    _assert_same_pairs(nc.neighbor_pairs(pos, cell, pbc, CUTOFF), neighbor_pairs(pos, cell, pbc, CUTOFF))


def test_skin_reuse_and_rebuild():
    pos, cell, pbc = _structure("triclinic", seed=1)
    nbrs = nc.allocate(pos, cell, pbc, CUTOFF, skin=0.6)
    assert nbrs.n_builds == 1 and not nbrs.overflow
    rng = np.random.default_rng(2)
    moved = pos + rng.uniform(-0.1, 0.1, pos.shape)  # < skin/2 everywhere
    nbrs = nc.update(nbrs, moved, cell)
    assert nbrs.n_builds == 1, "no rebuild within skin/2"
    _assert_same_pairs(nc.pairs(nbrs, moved, cell), neighbor_pairs(moved, cell, pbc, CUTOFF))
    buffers = nbrs.idx
    far = moved.copy()
    far[3] += 0.4
    nbrs = nc.update(nbrs, far, cell)
    assert nbrs.n_builds == 2 and nbrs.idx is buffers, "rebuilt in place"
    _assert_same_pairs(nc.pairs(nbrs, far, cell), neighbor_pairs(far, cell, pbc, CUTOFF))


def test_overflow_flag_and_reallocation():
    pos, cell, pbc = _structure("orthorhombic", seed=3)
    nbrs = nc.allocate(pos, cell, pbc, CUTOFF, skin=0.3, capacity_factor=1.0)
    k = nbrs.max_neighbors
    dense, dense_cell = 0.8 * pos, 0.8 * cell  # same atoms, 2x the density
    nbrs = nc.update(nbrs, dense, dense_cell)
    assert nbrs.overflow and nbrs.did_buffer_overflow
    assert nbrs.max_neighbors == k, "update never reallocates"
    with pytest.raises(RuntimeError, match="allocate"):
        nc.pairs(nbrs, dense, dense_cell)
    nbrs = nc.allocate(dense, dense_cell, pbc, CUTOFF, skin=0.3, capacity_factor=1.0)
    assert not nbrs.overflow and nbrs.max_neighbors > k
    _assert_same_pairs(nc.pairs(nbrs, dense, dense_cell), neighbor_pairs(dense, dense_cell, pbc, CUTOFF))


def test_stateful_list_reallocates_on_overflow():
    pos, cell, pbc = _structure("orthorhombic", seed=4)
    nl = nc.DeviceNeighborList(CUTOFF, skin=0.3, capacity_factor=1.0)
    nl.update(pos, cell, pbc)
    p = nl.update(0.8 * pos, 0.8 * cell, pbc)
    assert nl.n_allocations == 2
    _assert_same_pairs(p, neighbor_pairs(0.8 * pos, 0.8 * cell, pbc, CUTOFF))


def test_bad_arguments_say_what_to_change():
    pos, cell, pbc = _structure("orthorhombic")
    with pytest.raises(ValueError, match="capacity_factor"):
        nc.allocate(pos, cell, pbc, CUTOFF, capacity_factor=0.5)
    nbrs = nc.allocate(pos, cell, pbc, CUTOFF, skin=0.0)
    with pytest.raises(ValueError, match="allocate"):
        nc.update(nbrs, pos[:-1], cell)
