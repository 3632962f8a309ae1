"""Readable numpy reference of the Chebyshev descriptor and its derivatives.

Kept forever as the oracle for the fast kernels (descriptor_numba, GPU). It builds
the local Jacobian of every pair and triplet explicitly, so it is memory hungry
and meant for test-sized systems.

Index names: p = directed pair (i -> j), t = triplet (i; j, k) with j < k in
pair order, n = Chebyshev order, c = chemistry channel.

All functions share one signature:
    rij      (P, 3)  pair vectors R_j - R_i (+ shift), Angstrom, sorted by pair_i
    pair_i   (P,)    centre atom of each pair, in [0, n_centers)
    type_j   (P,)    species index (position in desc.species) of the neighbour
    n_centers        number of centre atoms (rows of G)
"""

from __future__ import annotations

import numpy as np

from .descriptor import ChebyshevDescriptor, angle_variable, chebyshev, cutoff_function


def _radial_terms(desc: ChebyshevDescriptor, d: np.ndarray):
    """val (P, N_r) = T_n(s) fc(r) and its r-derivative, zero beyond R_r."""
    rc = desc.r_radial
    fc, dfc = cutoff_function(d, rc, desc.cutoff_fn)
    s = np.clip(2.0 * d / rc - 1.0, -1.0, 1.0)
    t, dt = chebyshev(s, desc.n_radial)
    val = t * fc[:, None]
    dval = dt * (2.0 / rc) * fc[:, None] + t * dfc[:, None]
    return val, dval


def _triplets(desc: ChebyshevDescriptor, d: np.ndarray, pair_i: np.ndarray, n_centers: int):
    """Pairs of pair indices (pa, pb), pa < pb, sharing a centre, both within R_a."""
    ra = desc.r_angular
    ok = np.flatnonzero(d < ra)
    centers = pair_i[ok]
    pa_list, pb_list = [], []
    bounds = np.searchsorted(centers, np.arange(n_centers + 1))
    for i in range(n_centers):
        idx = ok[bounds[i] : bounds[i + 1]]
        if len(idx) < 2:
            continue
        a, b = np.triu_indices(len(idx), 1)
        pa_list.append(idx[a])
        pb_list.append(idx[b])
    if not pa_list:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(pa_list), np.concatenate(pb_list)


def _angular_terms(desc: ChebyshevDescriptor, rij, d, pa, pb):
    """val (T, N_a) and its derivatives w.r.t. r_a and r_b, (T, N_a, 3) each."""
    ra = desc.r_angular
    fc, dfc = cutoff_function(d, ra, desc.cutoff_fn)
    ua = rij[pa] / d[pa, None]
    ub = rij[pb] / d[pb, None]
    cos = np.einsum("tx,tx->t", ua, ub)
    x, dx_dcos = angle_variable(cos, desc.angle)
    t, dt = chebyshev(x, desc.n_angular)
    fa, fb = fc[pa], fc[pb]
    val = t * (fa * fb)[:, None]
    # d cos / d r_a = (u_b - cos u_a) / |r_a|
    dcos_da = (ub - cos[:, None] * ua) / d[pa, None]
    dcos_db = (ua - cos[:, None] * ub) / d[pb, None]
    k = dt * (dx_dcos * fa * fb)[:, None]  # (T, N_a): dval/dcos
    dval_da = k[:, :, None] * dcos_da[:, None, :] + (t * (dfc[pa] * fb)[:, None])[:, :, None] * ua[:, None, :]
    dval_db = k[:, :, None] * dcos_db[:, None, :] + (t * (fa * dfc[pb])[:, None])[:, :, None] * ub[:, None, :]
    return val, dval_da, dval_db


def _split(desc: ChebyshevDescriptor, G: np.ndarray):
    cr, ca = desc.n_radial_channels, desc.n_angular_channels
    nr, na = desc.n_radial, desc.n_angular
    n = G.shape[0]
    rad = G[:, : cr * nr].reshape(n, cr, nr)
    ang = G[:, cr * nr :].reshape(n, ca, na)
    return rad, ang


def descriptors(desc, rij, pair_i, type_j, n_centers):
    """G (n_centers, n_features)."""
    rij = np.asarray(rij, dtype=np.float64)
    d = np.linalg.norm(rij, axis=1)
    w_rad, w_ang = desc.channel_weights
    G = np.zeros((n_centers, desc.n_features))
    g_rad, g_ang = _split(desc, G)
    val, _ = _radial_terms(desc, d)
    # (P, C_r, N_r) contributions scattered onto their centre
    np.add.at(g_rad, pair_i, w_rad[:, type_j].T[:, :, None] * val[:, None, :])
    if desc.n_angular:
        pa, pb = _triplets(desc, d, pair_i, n_centers)
        if len(pa):
            aval, _, _ = _angular_terms(desc, rij, d, pa, pb)
            w = w_ang[:, type_j[pa], type_j[pb]].T  # (T, C_a)
            np.add.at(g_ang, pair_i[pa], w[:, :, None] * aval[:, None, :])
    return G


def descriptors_vjp(desc, rij, pair_i, type_j, n_centers, dG):
    """grad (P, 3) = sum_{i,f} dG[i, f] dG_if / d r_p  (vector-Jacobian product)."""
    rij = np.asarray(rij, dtype=np.float64)
    d = np.linalg.norm(rij, axis=1)
    u = rij / d[:, None]
    w_rad, w_ang = desc.channel_weights
    g_rad, g_ang = _split(desc, np.asarray(dG, dtype=np.float64))
    _, dval = _radial_terms(desc, d)
    # h[p, n] = sum_c g_rad[i_p, c, n] w_rad[c, t_p]
    h = np.einsum("pcn,cp->pn", g_rad[pair_i], w_rad[:, type_j])
    grad = np.sum(h * dval, axis=1)[:, None] * u
    if desc.n_angular:
        pa, pb = _triplets(desc, d, pair_i, n_centers)
        if len(pa):
            _, dva, dvb = _angular_terms(desc, rij, d, pa, pb)
            ha = np.einsum("tcn,ct->tn", g_ang[pair_i[pa]], w_ang[:, type_j[pa], type_j[pb]])
            np.add.at(grad, pa, np.einsum("tn,tnx->tx", ha, dva))
            np.add.at(grad, pb, np.einsum("tn,tnx->tx", ha, dvb))
    return grad


def descriptors_jvp(desc, rij, pair_i, type_j, n_centers, drij):
    """dG (n_centers, n_features) = sum_p dG/d r_p . drij_p  (Jacobian-vector product)."""
    rij = np.asarray(rij, dtype=np.float64)
    drij = np.asarray(drij, dtype=np.float64)
    d = np.linalg.norm(rij, axis=1)
    u = rij / d[:, None]
    w_rad, w_ang = desc.channel_weights
    out = np.zeros((n_centers, desc.n_features))
    o_rad, o_ang = _split(desc, out)
    _, dval = _radial_terms(desc, d)
    proj = np.einsum("px,px->p", u, drij)
    np.add.at(o_rad, pair_i, w_rad[:, type_j].T[:, :, None] * (dval * proj[:, None])[:, None, :])
    if desc.n_angular:
        pa, pb = _triplets(desc, d, pair_i, n_centers)
        if len(pa):
            _, dva, dvb = _angular_terms(desc, rij, d, pa, pb)
            dv = np.einsum("tnx,tx->tn", dva, drij[pa]) + np.einsum("tnx,tx->tn", dvb, drij[pb])
            w = w_ang[:, type_j[pa], type_j[pb]].T
            np.add.at(o_ang, pair_i[pa], w[:, :, None] * dv[:, None, :])
    return out


def pair_jacobian(desc, rij, pair_i, type_j, n_centers):
    """J (P, F, 3) = dG_{i(p)} / d r_p: the descriptor Jacobian in pair space.

    Dense per pair (not per atom pair), so JVP(v) = scatter_i sum_p J[p] v_p and
    VJP(g) = J[p] . g[i(p)]. Memory P x F x 3 doubles: the trainer caches it when
    it fits its budget.
    """
    rij = np.asarray(rij, dtype=np.float64)
    d = np.linalg.norm(rij, axis=1)
    u = rij / d[:, None]
    w_rad, w_ang = desc.channel_weights
    P = len(d)
    cr, nr, na = desc.n_radial_channels, desc.n_radial, desc.n_angular
    J = np.zeros((P, desc.n_features, 3))
    _, dval = _radial_terms(desc, d)
    jr = (w_rad[:, type_j].T[:, :, None] * dval[:, None, :]).reshape(P, cr * nr)
    J[:, : cr * nr, :] = jr[:, :, None] * u[:, None, :]
    if na:
        pa, pb = _triplets(desc, d, pair_i, n_centers)
        if len(pa):
            _, dva, dvb = _angular_terms(desc, rij, d, pa, pb)
            w = w_ang[:, type_j[pa], type_j[pb]].T  # (T, C_a)
            ca = w.shape[1]
            ja = (w[:, :, None, None] * dva[:, None, :, :]).reshape(len(pa), ca * na, 3)
            jb = (w[:, :, None, None] * dvb[:, None, :, :]).reshape(len(pa), ca * na, 3)
            ang = np.zeros((P, ca * na, 3))
            np.add.at(ang, pa, ja)
            np.add.at(ang, pb, jb)
            J[:, cr * nr :, :] = ang
    return J
