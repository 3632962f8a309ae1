"""Radial distribution function g(r) with periodic images (triclinic cells)."""

from __future__ import annotations

import itertools

import numpy as np

_MAX_PAIR_BLOCK = 2_000_000  # distances held in memory at once


def _image_shifts(cell, pbc, r_max):
    """Integer image shifts (S, 3) reaching r_max: ceil(r_max / width) per periodic axis."""
    volume = abs(np.linalg.det(cell))
    reach = []
    for a in range(3):
        if not pbc[a]:
            reach.append(0)
            continue
        b, c = cell[(a + 1) % 3], cell[(a + 2) % 3]
        width = volume / np.linalg.norm(np.cross(b, c))  # distance between lattice planes
        reach.append(int(np.ceil(r_max / width)))
    return np.array(list(itertools.product(*(range(-n, n + 1) for n in reach))), dtype=float)


def rdf(positions, cell, pbc=(True, True, True), r_max=6.0, n_bins=120, select_a=None,
        select_b=None):
    """g(r) between atoms of selection a and b, averaged over frames.

    Every periodic image within r_max counts (so r_max may exceed half the cell), and the
    normalisation is by the ideal-gas pair count: g = hist / (n_pairs / V * shell volume),
    with n_pairs the number of ordered a-b pairs of distinct atoms.

    positions: (T, N, 3) or (N, 3) A; cell: (3, 3) or (T, 3, 3) A, rows = lattice vectors;
    select_a, select_b: (N,) bool masks (default all atoms).
    Returns (r (n_bins,) A at bin centres, g (n_bins,)).
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (frames, atoms, 3), got {x.shape}")
    n_frames, n_atoms = x.shape[:2]
    h = np.asarray(cell, dtype=float)
    if h.shape == (3, 3):
        h = np.broadcast_to(h, (n_frames, 3, 3))
    if h.shape != (n_frames, 3, 3):
        raise ValueError(f"cell must have shape (3, 3) or ({n_frames}, 3, 3), got {h.shape}")
    if r_max <= 0 or n_bins < 1:
        raise ValueError(f"need r_max > 0 and n_bins >= 1, got {r_max}, {n_bins}")
    a_mask = np.ones(n_atoms, bool) if select_a is None else np.asarray(select_a, bool)
    b_mask = np.ones(n_atoms, bool) if select_b is None else np.asarray(select_b, bool)
    if not a_mask.any() or not b_mask.any():
        raise ValueError("the RDF selection is empty: check the species names")
    periodic = np.asarray(pbc, dtype=bool)
    edges = np.linspace(0.0, r_max, n_bins + 1)
    hist = np.zeros(n_bins)
    ia, ib = np.flatnonzero(a_mask), np.flatnonzero(b_mask)
    n_pairs = len(ia) * len(ib) - int((a_mask & b_mask).sum())
    volumes = np.abs(np.linalg.det(h))
    rows = max(1, _MAX_PAIR_BLOCK // max(len(ib), 1))
    for t in range(n_frames):
        shifts = _image_shifts(h[t], periodic, r_max) @ h[t]  # (S, 3) A
        xb = x[t, ib]
        for start in range(0, len(ia), rows):
            chunk = ia[start:start + rows]
            same = chunk[:, None] == ib[None, :]  # (a, b) the same atom
            for s in shifts:
                d = np.linalg.norm(xb[None, :, :] + s - x[t, chunk][:, None, :], axis=2)
                if not s.any():
                    d = d[~same]
                hist += np.histogram(d[d < r_max], bins=edges)[0]
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = n_pairs / volumes.mean() * shell * n_frames
    return 0.5 * (edges[1:] + edges[:-1]), hist / ideal
