"""Fast CPU kernels for the Chebyshev descriptor (numba, parallel over centre atoms).

Same signatures and results as descriptor_ref (tested against it to 1e-10), but
each centre's pairs and triplets are visited in a fused loop with no temporary
per-triplet arrays. Parallel over centres: every centre owns its own row of G
and its own slice of pairs, so there are no write races.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .descriptor import SIN_THETA_MIN, ChebyshevDescriptor

_NUMBA_OPTS = dict(cache=True, fastmath=False, nogil=True)


def _sparse_angular_weights(w_ang: np.ndarray):
    """w_ang (C, ne, ne) -> per element pair the list of non-zero (channel, weight)."""
    ne = w_ang.shape[1]
    nz = (w_ang != 0.0).sum(axis=0)
    kmax = max(1, int(nz.max()) if nz.size else 1)
    cnt = np.zeros((ne, ne), dtype=np.int64)
    idx = np.zeros((ne, ne, kmax), dtype=np.int64)
    val = np.zeros((ne, ne, kmax), dtype=np.float64)
    for a in range(ne):
        for b in range(ne):
            cs = np.flatnonzero(w_ang[:, a, b])
            cnt[a, b] = len(cs)
            idx[a, b, : len(cs)] = cs
            val[a, b, : len(cs)] = w_ang[cs, a, b]
    return cnt, idx, val


def _params(desc: ChebyshevDescriptor):
    cache = desc.__dict__.setdefault("_numba_params", None)
    if cache is not None:
        return cache
    w_rad, w_ang = desc.channel_weights
    cnt, idx, val = _sparse_angular_weights(w_ang)
    p = (
        desc.n_radial,
        desc.n_angular,
        desc.r_radial,
        desc.r_angular,
        0 if desc.cutoff_fn == "tanh" else 1,
        0 if desc.angle == "theta" else 1,
        np.ascontiguousarray(w_rad, dtype=np.float64),
        cnt,
        idx,
        val,
        desc.n_radial_channels,
        desc.n_features,
    )
    desc.__dict__["_numba_params"] = p
    return p


@njit(inline="always", **_NUMBA_OPTS)
def _fc(r, rc, kind):
    """(fc, dfc/dr); 0 beyond rc."""
    if r >= rc:
        return 0.0, 0.0
    if kind == 0:
        t = math.tanh(1.0 - r / rc)
        return t * t * t, -3.0 * t * t * (1.0 - t * t) / rc
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0), -0.5 * math.pi / rc * math.sin(math.pi * r / rc)


@njit(inline="always", **_NUMBA_OPTS)
def _cheb(x, n, t, dt):
    """Fill t[k] = T_k(x), dt[k] = T_k'(x), k < n."""
    if n == 0:
        return
    t[0] = 1.0
    dt[0] = 0.0
    if n > 1:
        t[1] = x
        dt[1] = 1.0
    for k in range(2, n):
        t[k] = 2.0 * x * t[k - 1] - t[k - 2]
        dt[k] = 2.0 * t[k - 1] + 2.0 * x * dt[k - 1] - dt[k - 2]


@njit(inline="always", **_NUMBA_OPTS)
def _angle(cos, kind):
    """(x, dx/dcos) of the angular Chebyshev argument."""
    if cos > 1.0:
        cos = 1.0
    elif cos < -1.0:
        cos = -1.0
    if kind == 1:
        return cos, 1.0
    s = math.sqrt(max(1.0 - cos * cos, 0.0))
    if s < SIN_THETA_MIN:
        s = SIN_THETA_MIN
    return 2.0 * math.acos(cos) / math.pi - 1.0, -2.0 / (math.pi * s)


@njit(**_NUMBA_OPTS)
def _gather_angular(rij, p0, p1, type_j, ra, ckind):
    """Per-centre arrays of the pairs within R_a: pair index, unit vector, |r|, fc, dfc, type."""
    m = 0
    for p in range(p0, p1):
        d2 = rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2
        if d2 < ra * ra:
            m += 1
    pidx = np.empty(m, dtype=np.int64)
    u = np.empty((m, 3))
    dd = np.empty(m)
    fc = np.empty(m)
    dfc = np.empty(m)
    ty = np.empty(m, dtype=np.int64)
    q = 0
    for p in range(p0, p1):
        d = math.sqrt(rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2)
        if d < ra:
            pidx[q] = p
            u[q, 0] = rij[p, 0] / d
            u[q, 1] = rij[p, 1] / d
            u[q, 2] = rij[p, 2] / d
            dd[q] = d
            fc[q], dfc[q] = _fc(d, ra, ckind)
            ty[q] = type_j[p]
            q += 1
    return pidx, u, dd, fc, dfc, ty


@njit(parallel=True, **_NUMBA_OPTS)
def _forward(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
             w_rad, wa_cnt, wa_idx, wa_val, cr, nf):
    G = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        t = np.empty(max(nr, na))
        dt = np.empty(max(nr, na))
        for p in range(p0, p1):
            d = math.sqrt(rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2)
            if d >= rr:
                continue
            fc, _ = _fc(d, rr, ckind)
            s = 2.0 * d / rr - 1.0
            _cheb(s, nr, t, dt)
            tj = type_j[p]
            for c in range(cr):
                w = w_rad[c, tj] * fc
                if w != 0.0:
                    base = c * nr
                    for n in range(nr):
                        G[i, base + n] += w * t[n]
        if na == 0:
            continue
        pidx, u, dd, fca, dfca, ty = _gather_angular(rij, p0, p1, type_j, ra, ckind)
        m = len(pidx)
        off_ang = cr * nr
        for a in range(m):
            for b in range(a + 1, m):
                cos = u[a, 0] * u[b, 0] + u[a, 1] * u[b, 1] + u[a, 2] * u[b, 2]
                x, _ = _angle(cos, akind)
                _cheb(x, na, t, dt)
                ff = fca[a] * fca[b]
                ta, tb = ty[a], ty[b]
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k] * ff
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        G[i, base + n] += w * t[n]
    return G


@njit(parallel=True, **_NUMBA_OPTS)
def _vjp(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
         w_rad, wa_cnt, wa_idx, wa_val, cr, dG):
    P = rij.shape[0]
    grad = np.zeros((P, 3))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        t = np.empty(max(nr, na))
        dt = np.empty(max(nr, na))
        for p in range(p0, p1):
            d = math.sqrt(rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2)
            if d >= rr:
                continue
            fc, dfc = _fc(d, rr, ckind)
            s = 2.0 * d / rr - 1.0
            _cheb(s, nr, t, dt)
            tj = type_j[p]
            acc = 0.0
            for c in range(cr):
                w = w_rad[c, tj]
                if w != 0.0:
                    base = c * nr
                    sub = 0.0
                    for n in range(nr):
                        sub += dG[i, base + n] * (dt[n] * (2.0 / rr) * fc + t[n] * dfc)
                    acc += w * sub
            scale = acc / d
            grad[p, 0] += scale * rij[p, 0]
            grad[p, 1] += scale * rij[p, 1]
            grad[p, 2] += scale * rij[p, 2]
        if na == 0:
            continue
        pidx, u, dd, fca, dfca, ty = _gather_angular(rij, p0, p1, type_j, ra, ckind)
        m = len(pidx)
        off_ang = cr * nr
        h = np.empty(na)
        for a in range(m):
            for b in range(a + 1, m):
                cos = u[a, 0] * u[b, 0] + u[a, 1] * u[b, 1] + u[a, 2] * u[b, 2]
                x, dxdc = _angle(cos, akind)
                _cheb(x, na, t, dt)
                ta, tb = ty[a], ty[b]
                for n in range(na):
                    h[n] = 0.0
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k]
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        h[n] += w * dG[i, base + n]
                hT = 0.0
                hdT = 0.0
                for n in range(na):
                    hT += h[n] * t[n]
                    hdT += h[n] * dt[n]
                # dE/dcos, and dE/d|r_a|, dE/d|r_b| through the cutoff functions
                e_cos = hdT * dxdc * fca[a] * fca[b]
                e_ra = hT * dfca[a] * fca[b]
                e_rb = hT * fca[a] * dfca[b]
                inv_a = 1.0 / dd[a]
                inv_b = 1.0 / dd[b]
                pa, pb = pidx[a], pidx[b]
                for x3 in range(3):
                    # d cos/d r_a = (u_b - cos u_a)/|r_a|
                    grad[pa, x3] += e_cos * (u[b, x3] - cos * u[a, x3]) * inv_a + e_ra * u[a, x3]
                    grad[pb, x3] += e_cos * (u[a, x3] - cos * u[b, x3]) * inv_b + e_rb * u[b, x3]
    return grad


@njit(parallel=True, **_NUMBA_OPTS)
def _jvp(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
         w_rad, wa_cnt, wa_idx, wa_val, cr, nf, drij):
    out = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        t = np.empty(max(nr, na))
        dt = np.empty(max(nr, na))
        for p in range(p0, p1):
            d = math.sqrt(rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2)
            if d >= rr:
                continue
            fc, dfc = _fc(d, rr, ckind)
            s = 2.0 * d / rr - 1.0
            _cheb(s, nr, t, dt)
            proj = (rij[p, 0] * drij[p, 0] + rij[p, 1] * drij[p, 1] + rij[p, 2] * drij[p, 2]) / d
            tj = type_j[p]
            for c in range(cr):
                w = w_rad[c, tj] * proj
                if w != 0.0:
                    base = c * nr
                    for n in range(nr):
                        out[i, base + n] += w * (dt[n] * (2.0 / rr) * fc + t[n] * dfc)
        if na == 0:
            continue
        pidx, u, dd, fca, dfca, ty = _gather_angular(rij, p0, p1, type_j, ra, ckind)
        m = len(pidx)
        off_ang = cr * nr
        for a in range(m):
            pa = pidx[a]
            va0, va1, va2 = drij[pa, 0], drij[pa, 1], drij[pa, 2]
            for b in range(a + 1, m):
                pb = pidx[b]
                cos = u[a, 0] * u[b, 0] + u[a, 1] * u[b, 1] + u[a, 2] * u[b, 2]
                x, dxdc = _angle(cos, akind)
                _cheb(x, na, t, dt)
                dcos = 0.0
                dcos += ((u[b, 0] - cos * u[a, 0]) * va0 + (u[b, 1] - cos * u[a, 1]) * va1
                         + (u[b, 2] - cos * u[a, 2]) * va2) / dd[a]
                dcos += ((u[a, 0] - cos * u[b, 0]) * drij[pb, 0] + (u[a, 1] - cos * u[b, 1]) * drij[pb, 1]
                         + (u[a, 2] - cos * u[b, 2]) * drij[pb, 2]) / dd[b]
                dra = u[a, 0] * va0 + u[a, 1] * va1 + u[a, 2] * va2
                drb = u[b, 0] * drij[pb, 0] + u[b, 1] * drij[pb, 1] + u[b, 2] * drij[pb, 2]
                ff = fca[a] * fca[b]
                k_t = dfca[a] * dra * fca[b] + fca[a] * dfca[b] * drb  # d(fc_a fc_b)
                k_dt = ff * dxdc * dcos
                ta, tb = ty[a], ty[b]
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k]
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        out[i, base + n] += w * (dt[n] * k_dt + t[n] * k_t)
    return out


def _offsets(pair_i: np.ndarray, n_centers: int) -> np.ndarray:
    return np.searchsorted(pair_i, np.arange(n_centers + 1)).astype(np.int64)


def descriptors(desc, rij, pair_i, type_j, n_centers):
    p = _params(desc)
    return _forward(np.ascontiguousarray(rij, dtype=np.float64), _offsets(pair_i, n_centers),
                    np.ascontiguousarray(type_j, dtype=np.int64), int(n_centers), *p)


def descriptors_vjp(desc, rij, pair_i, type_j, n_centers, dG):
    p = _params(desc)
    return _vjp(np.ascontiguousarray(rij, dtype=np.float64), _offsets(pair_i, n_centers),
                np.ascontiguousarray(type_j, dtype=np.int64), int(n_centers), *p[:-1],
                np.ascontiguousarray(dG, dtype=np.float64))


def descriptors_jvp(desc, rij, pair_i, type_j, n_centers, drij):
    p = _params(desc)
    return _jvp(np.ascontiguousarray(rij, dtype=np.float64), _offsets(pair_i, n_centers),
                np.ascontiguousarray(type_j, dtype=np.int64), int(n_centers), *p,
                np.ascontiguousarray(drij, dtype=np.float64))


def num_threads() -> int:
    return numba.get_num_threads()
