"""Neighbour lists in pair space: directed pairs (i -> j) with vectors r_ij.

`neighbor_pairs` builds a full list (both i -> j and j -> i, periodic images of
i itself included) with vesin's cell-list code, for periodic (triclinic), open
and mixed boundaries. `NeighborList` keeps one built with a Verlet skin and only
rebuilds when atoms (or the cell) have moved enough to matter (build once, then cheap
updates, as in JAX-MD's partition.py, https://github.com/jax-md/jax-md). `naive_pairs`
is the O(N^2 x images) oracle for tests.

Index names: i = centre atom, j = neighbour atom, p = pair; shifts are integer
image offsets S such that r_ij = R_j - R_i + S @ cell.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from itertools import product

import numpy as np

MIN_DISTANCE = 0.1  # Angstrom: closer atoms are an input error, not physics
_VESIN_IMPORT = threading.Lock()
_VESIN = None  # the vesin module, once imported (_vesin)


@dataclass(frozen=True)
class Pairs:
    """A full neighbour list, sorted by centre atom.

    i       (P,)    centre atom
    j       (P,)    neighbour atom
    shifts  (P, 3)  integer image shifts
    vectors (P, 3)  r_ij = R_j - R_i + shifts @ cell, Angstrom
    """

    i: np.ndarray
    j: np.ndarray
    shifts: np.ndarray
    vectors: np.ndarray

    @property
    def distances(self) -> np.ndarray:
        return np.linalg.norm(self.vectors, axis=1)

    def __len__(self) -> int:
        return len(self.i)


def validate_geometry(positions, cell, pbc):
    """Check and normalise (positions (N,3), cell (3,3), pbc (3,)); ValueError names the problem."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = np.argwhere(~np.isfinite(pos))[0]
        raise ValueError(f"positions contain NaN or inf (atom {bad[0]}, component {bad[1]})")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cell is None:
        if pbc.any():
            raise ValueError("cell is required when pbc is True in any direction")
        cell = np.zeros((3, 3))
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape == (3,):
        cell = np.diag(cell)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    if not np.all(np.isfinite(cell)):
        raise ValueError("cell contains NaN or inf")
    if pbc.any():
        vol = abs(np.linalg.det(cell))
        if vol < 1e-6:
            raise ValueError(f"cell is singular (volume {vol:.3g} A^3): give three independent lattice vectors")
        for k in np.flatnonzero(pbc):
            if np.linalg.norm(cell[k]) < 1e-6:
                raise ValueError(f"cell vector {k} is zero but pbc[{k}] is True")
    return pos, cell, pbc


def _box_for_vesin(pos, cell, pbc):
    """vesin needs a box; for open directions with a zero vector, any vector works."""
    if pbc.all():
        return cell
    box = cell.copy()
    if not pbc.any():
        return np.zeros((3, 3))
    # Replace zero vectors of open directions by orthogonal unit-ish vectors.
    for k in np.flatnonzero(~pbc):
        if np.linalg.norm(box[k]) < 1e-6:
            others = [box[m] for m in range(3) if m != k]
            n = np.cross(others[0], others[1])
            box[k] = n / max(np.linalg.norm(n), 1e-12)
    return box


def _vesin():
    """vesin, imported without torch and cupy where they are not loaded yet.

    vesin imports both when they are installed, only to accept their tensors, which nnmd
    never passes; with the CHGNet extra installed, that cost every process that builds
    a neighbour list about 190 MB of memory and 1-2 s (measured: 26 -> 220 MB RSS for
    `import vesin`). Packages already imported are left as they are.
    """
    global _VESIN
    if _VESIN is not None:  # set only once the import has finished
        return _VESIN
    with _VESIN_IMPORT:  # another thread may be half-way through the import
        if _VESIN is not None:
            return _VESIN
        blocked = [name for name in ("torch", "cupy") if name not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # `import name` raises ImportError inside vesin
        try:
            import vesin
        finally:
            for name in blocked:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
        _VESIN = vesin
    return vesin


def neighbor_pairs(positions, cell, pbc, cutoff: float) -> Pairs:
    """Full neighbour list within `cutoff` (strictly less), grouped (sorted) by centre i."""
    vesin = _vesin()

    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    n = len(pos)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return Pairs(z, z, np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, S, D = nl.compute(pos, _box_for_vesin(pos, cell, pbc), pbc.tolist(), quantities="ijSD")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    S = S.astype(np.int64)
    # vesin's D is R_j - R_i + S @ box in float64 (the test suite checks it against the
    # naive list); with a stand-in box for open directions S is zero there.
    D = np.asarray(D, dtype=np.float64)
    keep = np.einsum("px,px->p", D, D) < cutoff * cutoff
    if not keep.all():
        i, j, S, D = i[keep], j[keep], S[keep], D[keep]
    # The kernels need pairs grouped by centre (vesin gives that already; stay safe).
    if len(i) > 1 and np.any(i[1:] < i[:-1]):
        order = np.argsort(i, kind="stable")
        i, j, S, D = i[order], j[order], S[order], D[order]
    return Pairs(i, j, S, D)


def pair_forces(i, j, grad, n: int) -> np.ndarray:
    """Forces (n, 3) from pair gradients dE/dr_ij (P, 3), r_ij = R_j - R_i: atom i gets
    +dE/dr_ij and atom j gets -dE/dr_ij of every pair (i, j)."""
    forces = np.empty((n, 3))
    for a in range(3):
        forces[:, a] = np.bincount(i, weights=grad[:, a], minlength=n) \
            - np.bincount(j, weights=grad[:, a], minlength=n)
    return forces


def check_min_distance(pairs: Pairs, min_distance: float = MIN_DISTANCE):
    if len(pairs):
        d = pairs.distances
        k = int(np.argmin(d))
        if d[k] < min_distance:
            raise ValueError(
                f"atoms {pairs.i[k]} and {pairs.j[k]} are {d[k]:.4f} A apart "
                f"(< {min_distance} A): overlapping atoms; check positions and cell units (Angstrom)"
            )


def naive_pairs(positions, cell, pbc, cutoff: float) -> Pairs:
    """O(N^2 x images) oracle: every pair and image within `cutoff`. For tests only."""
    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    n = len(pos)
    reps = [0, 0, 0]
    if pbc.any():
        inv = np.linalg.inv(cell).T  # rows: reciprocal vectors / (2 pi)
        for k in range(3):
            if pbc[k]:
                height = 1.0 / np.linalg.norm(inv[k])
                extent = np.ptp(pos @ np.linalg.inv(cell)[:, k]) if n else 0.0
                reps[k] = int(np.ceil(cutoff / height + extent)) + 1
    rows = []
    for s in product(*(range(-r, r + 1) for r in reps)):
        shift = np.array(s) @ cell
        d = pos[None, :, :] - pos[:, None, :] + shift
        dist = np.linalg.norm(d, axis=2)
        ii, jj = np.nonzero(dist < cutoff)
        for a, b in zip(ii, jj):
            if a == b and s == (0, 0, 0):
                continue
            rows.append((a, b, *s))
    if not rows:
        z = np.zeros(0, dtype=np.int64)
        return Pairs(z, z, np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3)))
    arr = np.array(sorted(rows), dtype=np.int64)
    i, j, S = arr[:, 0], arr[:, 1], arr[:, 2:]
    return Pairs(i, j, S, pos[j] - pos[i] + S @ cell)


class NeighborList:
    """A full neighbour list reused across steps with a Verlet skin.

    Built with cutoff + skin; `update` returns the pairs within `cutoff` at the
    new geometry and rebuilds only when some atom moved more than skin/2 since
    the last build (cell deformation counted as a displacement of the farthest
    pair partner), or the number of atoms or the boundary conditions changed.
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0 (got {cutoff})")
        if skin < 0:
            raise ValueError(f"skin must be >= 0 (got {skin})")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._ref = None  # (positions, cell, pbc, pairs built with cutoff + skin)

    def _needs_rebuild(self, pos, cell, pbc) -> bool:
        if self._ref is None:
            return True
        rpos, rcell, rpbc, _ = self._ref
        if rpos.shape != pos.shape or not np.array_equal(rpbc, pbc):
            return True
        if self.skin == 0.0:
            return True
        disp = np.sqrt(np.max(np.sum((pos - rpos) ** 2, axis=1))) if len(pos) else 0.0
        strain = 0.0
        if pbc.any() and not np.array_equal(cell, rcell):
            # |S (h' - h)| for the largest image vector in use bounds the change of a pair vector
            # beyond the atoms' own displacement.
            dh = cell - rcell
            smax = 1 + (np.abs(self._ref[3].shifts).max(axis=0) if len(self._ref[3]) else np.zeros(3))
            strain = float(np.linalg.norm(smax @ np.abs(dh)))
        return 2.0 * disp + strain > self.skin

    def update(self, positions, cell=None, pbc=False) -> Pairs:
        pos, cell, pbc = validate_geometry(positions, cell, pbc)
        if self._needs_rebuild(pos, cell, pbc):
            big = neighbor_pairs(pos, cell, pbc, self.cutoff + self.skin)
            self._ref = (pos.copy(), cell.copy(), pbc.copy(), big)
            self.n_builds += 1
        big = self._ref[3]
        vectors = pos[big.j] - pos[big.i] + big.shifts @ cell
        keep = np.einsum("px,px->p", vectors, vectors) < self.cutoff * self.cutoff
        return Pairs(big.i[keep], big.j[keep], big.shifts[keep], vectors[keep])
