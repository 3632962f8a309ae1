"""Device neighbour lists with cell lists: `allocate` sizes buffers, `update` refills them.

The shape of JAX-MD's jax_md/partition.py (https://github.com/jax-md/jax-md):
`allocate(positions, cell, pbc, cutoff, skin, capacity_factor)` counts neighbours within cutoff + skin and sizes fixed buffers
(K = capacity_factor x the largest count, per atom); `update(nbrs, positions, cell)`
rebuilds into the same buffers only when some atom moved more than skin/2 since the last
build (cell deformation counted, as in neighbors.NeighborList) and sets `overflow` when
an atom has more than K neighbours; the caller then calls `allocate` again.
`pairs(nbrs, positions, cell)` compacts the Verlet list to the pairs within `cutoff` in
the layout the descriptor kernels consume: CSR by centre (pair_i sorted, offsets), r_ij
vectors, neighbour index j and image shifts S, with r_ij = R_j - R_i + S @ cell.

Cells, triclinic included, are binned in fractional coordinates: along a periodic
direction of perpendicular width w there are floor(w / r) bins and atoms of bin b see
bins b - s .. b + s (s = ceil(r n / w), 1 when w >= r), each wrapped bin with its image
shift; a cell narrower than the cutoff just searches more images (s > 1), so no cell is
too small. Open directions get an orthonormal stand-in vector and bins over the atoms'
extent. Atoms are sorted by bin (no per-bin capacity). One thread per atom; each thread
writes only its own row, so no atomics. Kernels run unchanged in numba's simulator.

Arrays are numpy or CuPy (`xp`); the cell is a host (3, 3) array (rows = lattice vectors).
Per update there are one or two scalar reads from the device (the largest displacement,
the pair total); no array crosses to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numba import config, cuda

from ..neighbors import validate_geometry
from .device import array_module

# The simulator runs one Python thread per CUDA thread: small blocks waste fewer on idle threads.
THREADS = 32 if config.ENABLE_CUDASIM else 128
SEARCH_MARGIN = 1e-6  # relative: bins searched a hair wider than the cutoff needs


@dataclass(frozen=True)
class DevicePairs:
    """Pairs within the cutoff, CSR by centre (arrays on the device of `positions`).

    i (P,) sorted centres; j (P,); shifts (P, 3) int; vectors (P, 3) A; offsets (N + 1,)
    with the pairs of centre i at offsets[i]:offsets[i + 1].
    """

    i: object
    j: object
    shifts: object
    vectors: object
    offsets: object

    def __len__(self) -> int:
        return int(self.i.shape[0])


@dataclass(frozen=True)
class DeviceNeighbors:
    """A Verlet list (cutoff + skin) in fixed buffers; dense rows of K = max_neighbors slots.

    idx (N, K) neighbour j; shifts (N, K, 3) image shifts; counts (N,) neighbours found
    at the last build (> K for some atom means overflow); ref_positions (N, 3) and ref_cell
    (3, 3) of the last build; out_* (N K, ...) buffers of `pairs`.
    """

    idx: object
    shifts: object
    counts: object
    ref_positions: object
    ref_cell: np.ndarray
    pbc: np.ndarray
    cutoff: float
    skin: float
    capacity_factor: float
    max_neighbors: int
    overflow: bool
    n_builds: int
    max_shift: np.ndarray  # (3,) largest |S| per axis at the last build (strain bound)
    out_i: object
    out_j: object
    out_shifts: object
    out_vectors: object
    out_within: object  # (N,) pairs within cutoff per centre
    out_offsets: object  # (N + 1,)

    @property
    def n_atoms(self) -> int:
        return int(self.counts.shape[0])

    @property
    def did_buffer_overflow(self) -> bool:  # JAX-MD's name
        return self.overflow


# -- kernels ---------------------------------------------------------------------------

@cuda.jit
def _bin_atoms(pos, inv_box, fmin, span, nbins, periodic, wrap, cell_of):
    """Fractional coordinates -> bin per atom; wrap (N, 3) = floor(f) on periodic axes."""
    i = cuda.grid(1)
    if i >= pos.shape[0]:
        return
    flat = 0
    for k in range(3):
        f = pos[i, 0] * inv_box[0, k] + pos[i, 1] * inv_box[1, k] + pos[i, 2] * inv_box[2, k]
        if periodic[k]:
            w = math.floor(f)
            f = f - w
            wrap[i, k] = int(w)
        else:
            f = (f - fmin[k]) / span[k]
            wrap[i, k] = 0
        b = int(f * nbins[k])
        if b < 0:
            b = 0
        if b >= nbins[k]:
            b = nbins[k] - 1
        flat = flat * nbins[k] + b
    cell_of[i] = flat


@cuda.jit(device=True, inline=True)
def _wrap_bin(b, n, periodic):
    """(bin, image shift) of bin index b on an axis of n bins; shift -9999 = outside (open)."""
    if periodic:
        s = b // n
        return b - s * n, s
    if b < 0 or b >= n:
        return 0, -9999
    return b, 0


@cuda.jit
def _build(pos, box, wrap, cell_of, order, cell_start, nbins, search, periodic, rc2,
           kmax, idx, shifts, counts):
    """Verlet list of atom i: every (j, S) with |r_ij| < rc, j != i or S != 0; the first
    kmax go to row i of idx/shifts, counts[i] gets the full number."""
    i = cuda.grid(1)
    if i >= pos.shape[0]:
        return
    n0 = nbins[0]
    n1 = nbins[1]
    n2 = nbins[2]
    c = cell_of[i]
    b2 = c % n2
    b1 = (c // n2) % n1
    b0 = c // (n1 * n2)
    found = 0
    for d0 in range(-search[0], search[0] + 1):
        c0, s0 = _wrap_bin(b0 + d0, n0, periodic[0])
        if s0 == -9999:
            continue
        for d1 in range(-search[1], search[1] + 1):
            c1, s1 = _wrap_bin(b1 + d1, n1, periodic[1])
            if s1 == -9999:
                continue
            for d2 in range(-search[2], search[2] + 1):
                c2, s2 = _wrap_bin(b2 + d2, n2, periodic[2])
                if s2 == -9999:
                    continue
                cc = (c0 * n1 + c1) * n2 + c2
                for q in range(cell_start[cc], cell_start[cc + 1]):
                    j = order[q]
                    S0 = s0 + wrap[i, 0] - wrap[j, 0]
                    S1 = s1 + wrap[i, 1] - wrap[j, 1]
                    S2 = s2 + wrap[i, 2] - wrap[j, 2]
                    if j == i and S0 == 0 and S1 == 0 and S2 == 0:
                        continue
                    r2 = 0.0
                    for k in range(3):
                        r = pos[j, k] - pos[i, k] + S0 * box[0, k] + S1 * box[1, k] + S2 * box[2, k]
                        r2 += r * r
                    if r2 < rc2:
                        if found < kmax:
                            idx[i, found] = j
                            shifts[i, found, 0] = S0
                            shifts[i, found, 1] = S1
                            shifts[i, found, 2] = S2
                        found += 1
    counts[i] = found


@cuda.jit(device=True, inline=True)
def _slot_vector(pos, cell, idx, shifts, i, q, k):
    j = idx[i, q]
    return (pos[j, k] - pos[i, k] + shifts[i, q, 0] * cell[0, k] + shifts[i, q, 1] * cell[1, k]
            + shifts[i, q, 2] * cell[2, k])


@cuda.jit
def _count_within(pos, cell, idx, shifts, counts, rc2, within):
    i = cuda.grid(1)
    if i >= pos.shape[0]:
        return
    m = min(counts[i], idx.shape[1])
    c = 0
    for q in range(m):
        r2 = 0.0
        for k in range(3):
            r = _slot_vector(pos, cell, idx, shifts, i, q, k)
            r2 += r * r
        if r2 < rc2:
            c += 1
    within[i] = c


@cuda.jit
def _fill_within(pos, cell, idx, shifts, counts, rc2, offsets, out_i, out_j, out_s, out_r):
    i = cuda.grid(1)
    if i >= pos.shape[0]:
        return
    m = min(counts[i], idx.shape[1])
    o = offsets[i]
    for q in range(m):
        r0 = _slot_vector(pos, cell, idx, shifts, i, q, 0)
        r1 = _slot_vector(pos, cell, idx, shifts, i, q, 1)
        r2 = _slot_vector(pos, cell, idx, shifts, i, q, 2)
        if r0 * r0 + r1 * r1 + r2 * r2 < rc2:
            out_i[o] = i
            out_j[o] = idx[i, q]
            for k in range(3):
                out_s[o, k] = shifts[i, q, k]
            out_r[o, 0] = r0
            out_r[o, 1] = r1
            out_r[o, 2] = r2
            o += 1


def _launch(kernel, n, *args):
    kernel[max(1, (n + THREADS - 1) // THREADS), THREADS](*args)


# -- geometry on the host (3 x 3 and a few scalars) -------------------------------------

def binning_box(cell, pbc) -> np.ndarray:
    """The cell with each open direction's vector replaced by an orthonormal stand-in.

    Shifts are zero along open directions, so those rows never enter r_ij; they only
    give the binning a non-singular frame.
    """
    cell = np.asarray(cell, dtype=np.float64)
    per = [cell[k] for k in range(3) if pbc[k]]
    if len(per) == 3:
        return cell.copy()
    if len(per) == 2:
        n = np.cross(per[0], per[1])
        extra = [n / np.linalg.norm(n)]
    elif len(per) == 1:
        a = per[0] / np.linalg.norm(per[0])
        t = np.eye(3)[int(np.argmin(np.abs(a)))]
        u = np.cross(a, t)
        u /= np.linalg.norm(u)
        extra = [u, np.cross(a, u)]
    else:
        extra = list(np.eye(3))
    box = np.empty((3, 3))
    for k in range(3):
        box[k] = cell[k] if pbc[k] else extra.pop(0)
    return box


def _bins(xp, pos, box, pbc, rc):
    """Bins per axis, search ranges and fractional frames for a cutoff rc."""
    inv = np.linalg.inv(box)
    delta = rc * np.linalg.norm(inv, axis=0) * (1.0 + SEARCH_MARGIN)  # fractional reach per axis
    n_atoms = pos.shape[0]
    fmin = np.zeros(3)
    span = np.ones(3)
    nbins = np.ones(3, dtype=np.int64)
    if not pbc.all():
        f = pos @ xp.asarray(inv)
        lo = np.asarray([float(v) for v in f.min(axis=0)])
        hi = np.asarray([float(v) for v in f.max(axis=0)])
    for k in range(3):
        if pbc[k]:
            nbins[k] = max(1, int(np.floor(1.0 / delta[k])))
        else:
            fmin[k] = lo[k]
            span[k] = max(hi[k] - lo[k], delta[k]) * (1.0 + 1e-9) + 1e-12
            nbins[k] = max(1, int(np.floor(span[k] / delta[k])))
    # A dilute open cluster would get mostly empty bins: cap their number near N.
    while nbins.prod() > 8 * n_atoms + 27 and nbins.max() > 1:
        k = int(np.argmax(nbins))
        nbins[k] = max(1, nbins[k] // 2)
    bin_width = np.where(pbc, 1.0, span) / nbins
    search = np.ceil(delta / bin_width - 1e-12).astype(np.int64)
    search = np.maximum(search, 1)
    # An open axis never needs to look further than its own bins.
    search = np.where(pbc, search, np.minimum(search, nbins - 1))
    return inv, fmin, span, nbins, search


def _build_into(xp, pos, cell, pbc, rc, idx, shifts, counts, kmax):
    n = pos.shape[0]
    box = binning_box(cell, pbc)
    inv, fmin, span, nbins, search = _bins(xp, pos, box, pbc, rc)
    periodic = xp.asarray(pbc.astype(np.int64))
    wrap = xp.zeros((n, 3), dtype=np.int64)
    cell_of = xp.zeros(n, dtype=np.int64)
    _launch(_bin_atoms, n, pos, xp.asarray(inv), xp.asarray(fmin), xp.asarray(span),
            xp.asarray(nbins), periodic, wrap, cell_of)
    order = xp.argsort(cell_of)
    cell_start = xp.searchsorted(cell_of[order], xp.arange(int(nbins.prod()) + 1))
    _launch(_build, n, pos, xp.asarray(box), wrap, cell_of, order.astype(np.int64),
            cell_start.astype(np.int64), xp.asarray(nbins), xp.asarray(search), periodic,
            float(rc * rc), int(kmax), idx, shifts, counts)


def _as_positions(positions):
    xp = array_module(positions)
    pos = xp.ascontiguousarray(xp.asarray(positions, dtype=np.float64))
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {pos.shape}")
    return xp, pos


def _geometry(xp, pos, cell, pbc):
    """Validate cell/pbc on the host with the CPU list's rules (positions checked on device)."""
    probe = np.zeros((1, 3))
    _, cell, pbc = validate_geometry(probe, cell, pbc)
    return cell, pbc


# -- the public functions --------------------------------------------------------------

def allocate(positions, cell, pbc, cutoff: float, skin: float = 1.0,
             capacity_factor: float = 1.25) -> DeviceNeighbors:
    """Count neighbours within cutoff + skin, size buffers (K = ceil(capacity_factor x max
    count)) and fill them. positions (N, 3) A, numpy or CuPy; cell (3, 3) A or None."""
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0 A (got {cutoff})")
    if not skin >= 0:
        raise ValueError(f"skin must be >= 0 A (got {skin})")
    if not capacity_factor >= 1.0:
        raise ValueError(f"capacity_factor must be >= 1 (got {capacity_factor})")
    xp, pos = _as_positions(positions)
    cell, pbc = _geometry(xp, pos, cell, pbc)
    n = pos.shape[0]
    rc = float(cutoff) + float(skin)
    counts = xp.zeros(n, dtype=np.int64)
    dummy_i = xp.zeros((n, 1), dtype=np.int64)
    dummy_s = xp.zeros((n, 1, 3), dtype=np.int64)
    if n:
        _build_into(xp, pos, cell, pbc, rc, dummy_i, dummy_s, counts, 0)  # count only
    k = max(1, int(math.ceil(capacity_factor * (int(counts.max()) if n else 0))))
    idx = xp.zeros((n, k), dtype=np.int64)
    shifts = xp.zeros((n, k, 3), dtype=np.int64)
    cap = n * k
    nbrs = DeviceNeighbors(
        idx=idx, shifts=shifts, counts=counts, ref_positions=pos.copy(), ref_cell=cell.copy(),
        pbc=pbc, cutoff=float(cutoff), skin=float(skin), capacity_factor=float(capacity_factor),
        max_neighbors=k, overflow=False, n_builds=0, max_shift=np.zeros(3, dtype=np.int64),
        out_i=xp.zeros(cap, dtype=np.int64), out_j=xp.zeros(cap, dtype=np.int64),
        out_shifts=xp.zeros((cap, 3), dtype=np.int64), out_vectors=xp.zeros((cap, 3)),
        out_within=xp.zeros(n, dtype=np.int64), out_offsets=xp.zeros(n + 1, dtype=np.int64))
    return _rebuild(nbrs, xp, pos, cell)


def _rebuild(nbrs: DeviceNeighbors, xp, pos, cell) -> DeviceNeighbors:
    n = pos.shape[0]
    if n:
        _build_into(xp, pos, cell, nbrs.pbc, nbrs.cutoff + nbrs.skin, nbrs.idx, nbrs.shifts,
                    nbrs.counts, nbrs.max_neighbors)
        overflow = int(nbrs.counts.max()) > nbrs.max_neighbors
        smax = xp.abs(nbrs.shifts).max(axis=(0, 1))
        max_shift = np.asarray([int(v) for v in smax])
    else:
        overflow, max_shift = False, np.zeros(3, dtype=np.int64)
    nbrs.ref_positions[...] = pos
    return replace(nbrs, ref_cell=np.array(cell, dtype=np.float64), overflow=overflow,
                   n_builds=nbrs.n_builds + 1, max_shift=max_shift)


def needs_rebuild(nbrs: DeviceNeighbors, positions, cell) -> bool:
    """Some atom moved more than skin/2 since the last build (plus the cell's strain bound)."""
    xp, pos = _as_positions(positions)
    if pos.shape != nbrs.ref_positions.shape:
        return True
    if nbrs.skin == 0.0:
        return True
    n = pos.shape[0]
    disp = math.sqrt(float(((pos - nbrs.ref_positions) ** 2).sum(axis=1).max())) if n else 0.0
    strain = 0.0
    if nbrs.pbc.any() and not np.array_equal(cell, nbrs.ref_cell):
        dh = np.asarray(cell, dtype=np.float64) - nbrs.ref_cell
        strain = float(np.linalg.norm((1 + nbrs.max_shift) @ np.abs(dh)))
    return 2.0 * disp + strain > nbrs.skin


def update(nbrs: DeviceNeighbors, positions, cell=None) -> DeviceNeighbors:
    """Rebuild into the same buffers when needed (never reallocates). Check `overflow`
    afterwards: when True the list is incomplete and the caller must `allocate` again."""
    xp, pos = _as_positions(positions)
    if pos.shape != nbrs.ref_positions.shape:
        raise ValueError(f"update: {pos.shape[0]} atoms, but the list was allocated for "
                         f"{nbrs.n_atoms}; call allocate for a new system")
    cell, _ = _geometry(xp, pos, cell if nbrs.pbc.any() else None, nbrs.pbc)
    if nbrs.overflow or needs_rebuild(nbrs, pos, cell):
        return _rebuild(nbrs, xp, pos, cell)
    return nbrs


def pairs(nbrs: DeviceNeighbors, positions, cell=None, cutoff: float | None = None) -> DevicePairs:
    """The pairs within `cutoff` (default nbrs.cutoff) at these positions, CSR by centre.

    Views of nbrs' output buffers: valid until the next `pairs` call on this list."""
    if nbrs.overflow:
        raise RuntimeError(f"neighbour list overflow: an atom has more than {nbrs.max_neighbors} "
                           "neighbours; call allocate again (a larger capacity_factor avoids it)")
    xp, pos = _as_positions(positions)
    cell, _ = _geometry(xp, pos, cell if nbrs.pbc.any() else None, nbrs.pbc)
    rc = nbrs.cutoff if cutoff is None else float(cutoff)
    if rc > nbrs.cutoff + nbrs.skin:
        raise ValueError(f"cutoff {rc} exceeds the list's cutoff + skin {nbrs.cutoff + nbrs.skin}")
    n = pos.shape[0]
    d_cell = xp.asarray(binning_box(cell, nbrs.pbc))
    if n:
        _launch(_count_within, n, pos, d_cell, nbrs.idx, nbrs.shifts, nbrs.counts, rc * rc,
                nbrs.out_within)
    off = nbrs.out_offsets
    off[0] = 0
    xp.cumsum(nbrs.out_within, out=off[1:])
    if n:
        _launch(_fill_within, n, pos, d_cell, nbrs.idx, nbrs.shifts, nbrs.counts, rc * rc, off,
                nbrs.out_i, nbrs.out_j, nbrs.out_shifts, nbrs.out_vectors)
    total = int(off[n])
    return DevicePairs(nbrs.out_i[:total], nbrs.out_j[:total], nbrs.out_shifts[:total],
                       nbrs.out_vectors[:total], off)


def neighbor_pairs(positions, cell, pbc, cutoff: float) -> DevicePairs:
    """One-shot list (skin 0): the device counterpart of neighbors.neighbor_pairs."""
    nbrs = allocate(positions, cell, pbc, cutoff, skin=0.0, capacity_factor=1.0)
    return pairs(nbrs, positions, cell if nbrs.pbc.any() else None)


class DeviceNeighborList:
    """Stateful wrapper for force functions: update, re-allocate on overflow, give pairs.

    n_builds counts builds, n_allocations allocations (1 + overflows)."""

    def __init__(self, cutoff: float, skin: float = 1.0, capacity_factor: float = 1.25):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be > 0 A (got {cutoff})")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.capacity_factor = float(capacity_factor)
        self.state: DeviceNeighbors | None = None
        self.n_allocations = 0
        self._builds_before = 0

    @property
    def n_builds(self) -> int:
        return self._builds_before + (self.state.n_builds if self.state is not None else 0)

    def update(self, positions, cell, pbc) -> DevicePairs:
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
        cell = cell if pbc.any() else None
        s = self.state
        if s is not None and (s.n_atoms != positions.shape[0] or not np.array_equal(s.pbc, pbc)):
            s = None
        if s is None and self.state is not None:
            self._builds_before += self.state.n_builds
        if s is not None:
            s = update(s, positions, cell)
        if s is None or s.overflow:
            if s is not None:
                self._builds_before += s.n_builds
            s = allocate(positions, cell, pbc, self.cutoff, self.skin, self.capacity_factor)
            self.n_allocations += 1
        self.state = s
        return pairs(s, positions, cell)
