"""Many independent systems through one potential evaluation.

Small systems (the proposals of many SLHMC chains, 4-100 atoms each) evaluated one at a
time spend most of their time in per-call overhead: Python, array set-up, one small BLAS
call per element network. Here the systems' neighbour pairs are concatenated with atom
offsets and go through `Potential.compute_pairs` once. An atom's descriptors depend on
its own pairs only and the networks act row by row, so each system gets the energy,
forces and virial of its own evaluation (the same numbers up to floating-point summation
order; tests/unit/md/test_md_batch.py checks 1e-10).

Every system keeps its own Verlet neighbour list, so a system can join or leave between
any two evaluations (continuous batching, nnmd_kernels.slhmc.ProposalBatch).
"""

from __future__ import annotations

import numpy as np

from nnmd_kernels.neighbors import (
    MIN_DISTANCE,
    NeighborList,
    Pairs,
    check_min_distance,
    neighbor_pairs,
    pair_forces,
    validate_geometry,
)


class BatchSystem:
    """One system of a batch: its species, boundary conditions and Verlet neighbour list.

    The list is built with cutoff + skin and reused while no atom has moved more than
    skin / 2 since the build and the cell is the same (as NeighborList, which is its
    reference; with a cheaper check, since a batch calls it for every system at every
    step); the Coulomb term's real-space pairs keep a NeighborList of their own.
    """

    __slots__ = ("types", "pbc", "cutoff", "skin", "_ref", "coulomb_pairs", "n_builds")

    def __init__(self, potential, numbers, pbc, skin: float = 1.0) -> None:
        self.types = potential.types_of(np.asarray(numbers))  # unknown species: ValueError
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        self.cutoff, self.skin = float(potential.cutoff), float(skin)
        self._ref = None  # (positions, cell, i, j, shifts @ cell) of the last build
        self.n_builds = 0
        term = potential.coulomb
        self.coulomb_pairs = NeighborList(term.r_cut, skin=skin) \
            if term is not None and self.pbc.all() else None

    def pairs(self, positions, cell):
        """(i, j, r_ij) within the cutoff at these positions; ValueError for bad geometry."""
        ref = self._ref
        x = positions
        if ref is not None and x.shape == ref[0].shape and (
                (cell is None and ref[1] is None)
                or (cell is not None and ref[1] is not None and np.array_equal(cell, ref[1]))):
            d = x - ref[0]
            # NaN never passes this test, and goes to validate_geometry below
            if 4.0 * float(np.max(np.einsum("ij,ij->i", d, d), initial=0.0)) <= self.skin ** 2:
                return self._within(x, ref)
        pos, h, pbc = validate_geometry(x, cell if self.pbc.any() else None, self.pbc)
        big = neighbor_pairs(pos, h, pbc, self.cutoff + self.skin)
        kept = None if cell is None else np.array(cell, dtype=np.float64)  # a copy
        ref = self._ref = (pos.copy(), kept, big.i, big.j, big.shifts @ h)
        self.n_builds += 1
        return self._within(pos, ref)

    def _within(self, x, ref):
        _, _, i, j, image = ref
        r = x[j] - x[i] + image
        keep = np.einsum("px,px->p", r, r) < self.cutoff * self.cutoff
        return i[keep], j[keep], r[keep]


def batch_forces(potential, systems, positions, cells, backend: str = "auto") -> list:
    """Energy, forces and virial of every system, from one evaluation of the potential.

    systems: BatchSystem per system; positions: (N_k, 3) A per system; cells: (3, 3) A
    per system (ignored where the system is not periodic). Returns one entry per system:
    (energy eV, forces (N_k, 3) eV/A, virial (3, 3) eV), or the ValueError that its own
    evaluation would raise (overlapping atoms, bad geometry); one system's error leaves
    the others' results as they are.
    """
    out: list = [None] * len(systems)
    ok, geo = [], []
    for k, (sys_, x, h) in enumerate(zip(systems, positions, cells)):
        try:
            geo.append(sys_.pairs(np.asarray(x, dtype=np.float64), h))
        except ValueError as exc:
            out[k] = exc
            continue
        ok.append(k)
    if not ok:
        return out
    # overlapping atoms: the error of that system's own evaluation, the others go on
    d2min = [float(np.min(np.einsum("px,px->p", g[2], g[2]), initial=np.inf)) for g in geo]
    if min(d2min) < MIN_DISTANCE ** 2:
        keep = []
        for r, k in enumerate(ok):
            if d2min[r] < MIN_DISTANCE ** 2:
                i, j, rij = geo[r]
                try:
                    check_min_distance(Pairs(i, j, np.zeros((len(i), 3)), rij))
                except ValueError as exc:
                    out[k] = exc
                    continue
            keep.append(r)
        ok, geo = [ok[r] for r in keep], [geo[r] for r in keep]
        if not ok:
            return out
    xs = [np.asarray(positions[k], dtype=np.float64) for k in ok]
    sizes = np.array([len(x) for x in xs])
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n = int(starts[-1])
    n_pairs = np.array([len(g[0]) for g in geo])
    pi = np.concatenate([g[0] + s for g, s in zip(geo, starts)])
    pj = np.concatenate([g[1] + s for g, s in zip(geo, starts)])
    rij = np.concatenate([g[2] for g in geo]).reshape(-1, 3)
    types = np.concatenate([systems[k].types for k in ok])
    res = potential.compute_pairs(types, pi, pj, rij, n, forces=True, backend=backend)
    g = np.asarray(res.pair_grad)
    forces = pair_forces(pi, pj, g, n)
    owner = np.repeat(np.arange(len(ok)), sizes)
    energies = np.bincount(owner, weights=np.asarray(res.energies), minlength=len(ok))
    pair_owner = np.repeat(np.arange(len(ok)), n_pairs)
    outer = (rij[:, :, None] * g[:, None, :]).reshape(-1, 9)
    virials = -np.stack([np.bincount(pair_owner, weights=outer[:, c], minlength=len(ok))
                         for c in range(9)], axis=1).reshape(-1, 3, 3)
    for r, k in enumerate(ok):
        e, f, v = float(energies[r]), forces[starts[r]:starts[r + 1]], virials[r]
        if potential.coulomb is not None:
            try:
                e, f, v = _add_coulomb(potential, systems[k], xs[r], cells[k], e, f, v)
            except ValueError as exc:  # e.g. a slab: what compute would raise
                out[k] = exc
                continue
        out[k] = (e, f, v)
    return out


def _add_coulomb(potential, sys_, x, h, e, f, v):
    from nnmd_kernels.electrostatics import coulomb

    pos, cell, pbc = validate_geometry(x, h if sys_.pbc.any() else None, sys_.pbc)
    pairs = sys_.coulomb_pairs.update(pos, cell, pbc) if sys_.coulomb_pairs is not None else None
    c = coulomb(potential.coulomb, pos, sys_.types, cell if pbc.any() else None, pbc, pairs=pairs)
    return e + c.energy, f + c.forces, v + c.virial
