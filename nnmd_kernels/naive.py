"""The naive oracle: energies by explicit loops over atoms, images and triplets.

O(N^2 x images) with scalar Python arithmetic straight from the formulas in
descriptor.py and baseline.py, sharing no code with the pair-space kernels but
the network. For tests of tiny systems only (forces by finite differences).
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

from .network import forward


def _fc(r, rc, kind):
    if r >= rc:
        return 0.0
    if kind == "tanh":
        return math.tanh(1.0 - r / rc) ** 3
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0)


def _cheb(x, n):
    return [math.cos(k * math.acos(max(-1.0, min(1.0, x)))) for k in range(n)]


def _images(pos, cell, pbc, cutoff):
    """All (j, R_j + S cell) needed around any atom, by brute force over image boxes."""
    reps = []
    for k in range(3):
        if not pbc[k]:
            reps.append(0)
            continue
        recip = np.linalg.inv(cell).T[k]
        height = 1.0 / np.linalg.norm(recip)
        reps.append(int(math.ceil(cutoff / height)) + 1)
    out = []
    for s in product(*(range(-r, r + 1) for r in reps)):
        shift = np.array(s, dtype=np.float64) @ cell
        for j in range(len(pos)):
            out.append((j, pos[j] + shift, s == (0, 0, 0)))
    return out


def naive_energies(pot, pos, types, cell, pbc) -> np.ndarray:
    desc = pot.descriptor
    w_rad, w_ang = desc.channel_weights
    rmax = pot.cutoff
    imgs = _images(pos, cell, pbc, rmax)
    n = len(pos)
    G = np.zeros((n, desc.n_features))
    e_base = np.zeros(n)
    off = desc.n_radial_channels * desc.n_radial
    for i in range(n):
        neigh = []
        for j, rj, home in imgs:
            if home and j == i:
                continue
            v = rj - pos[i]
            r = math.sqrt(float(v @ v))
            if r < rmax:
                neigh.append((j, v, r))
        for j, _v, r in neigh:
            if r < desc.r_radial:
                t = _cheb(2.0 * r / desc.r_radial - 1.0, desc.n_radial)
                fc = _fc(r, desc.r_radial, desc.cutoff_fn)
                for c in range(desc.n_radial_channels):
                    for k in range(desc.n_radial):
                        G[i, c * desc.n_radial + k] += w_rad[c, types[j]] * t[k] * fc
            if pot.baseline is not None and r < pot.baseline.cutoff:
                R = pot.baseline.cutoff
                A = pot.baseline.coefficients[types[i], types[j]]
                phi = sum(a * (r**-p - R**-p + p * R ** (-p - 1) * (r - R)) for a, p in zip(A, (12, 10, 8, 6)))
                e_base[i] += 0.5 * phi
        if desc.n_angular:
            ang = [x for x in neigh if x[2] < desc.r_angular]
            for a in range(len(ang)):
                for b in range(a + 1, len(ang)):
                    ja, va, ra = ang[a]
                    jb, vb, rb = ang[b]
                    cos = float(va @ vb) / (ra * rb)
                    cos = max(-1.0, min(1.0, cos))
                    x = cos if desc.angle == "cos" else 2.0 * math.acos(cos) / math.pi - 1.0
                    t = _cheb(x, desc.n_angular)
                    ff = _fc(ra, desc.r_angular, desc.cutoff_fn) * _fc(rb, desc.r_angular, desc.cutoff_fn)
                    for c in range(desc.n_angular_channels):
                        w = w_ang[c, types[ja], types[jb]]
                        for k in range(desc.n_angular):
                            G[i, off + c * desc.n_angular + k] += w * t[k] * ff
    energies = e_base.copy()
    for e, net in enumerate(pot.networks):
        idx = np.flatnonzero(types == e)
        if idx.size:
            y, _ = forward(net, (G[idx] - pot.feature_mean[e]) / pot.feature_std[e])
            energies[idx] += y.mean(axis=0) + pot.energy_shift[e]
    return energies
