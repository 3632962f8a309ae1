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

# reassoc lets LLVM vectorise the reductions over neighbours; results change at the 1e-16 level.
# error_model="numpy": a float division is a plain IEEE division (no ZeroDivisionError
# branch), which is what lets LLVM vectorise the per-triplet angle loops (acos, 1/sin,
# 1/|r|); their divisors are never zero (pairs are checked for a minimum distance, and
# sin(theta) is floored at SIN_THETA_MIN).
_NUMBA_OPTS = dict(cache=True, fastmath={"reassoc", "contract"}, nogil=True, error_model="numpy")


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


def _separable(desc: ChebyshevDescriptor):
    """(w_rad, vfac) when the angular weights factorise, w_ang[c, a, b] = vfac[c, a] vfac[c, b]
    ("z": sqrt(Z); "typespin": 1 and s), else None ("blocks").

    Separable weights need no sorting of neighbours into element segments: one
    weighted sum over all neighbours per channel, with full-length vector loops."""
    cache = desc.__dict__.get("_numba_sep", 0)
    if cache != 0:
        return cache
    out = None
    if desc.weighting != "blocks":
        w_rad, w_ang = desc.channel_weights
        if desc.weighting == "z":
            vfac = np.sqrt(w_rad.copy())
        else:
            vfac = w_rad.copy()
        assert np.allclose(np.einsum("ca,cb->cab", vfac, vfac), w_ang)
        out = (desc.n_radial, desc.n_angular, desc.r_radial, desc.r_angular,
               0 if desc.cutoff_fn == "tanh" else 1, 0 if desc.angle == "theta" else 1,
               np.ascontiguousarray(w_rad, dtype=np.float64), np.ascontiguousarray(vfac, dtype=np.float64),
               desc.n_radial_channels, desc.n_features)
    desc.__dict__["_numba_sep"] = out
    return out


@njit(inline="always", **_NUMBA_OPTS)
def _fc(r, rc, kind):
    """(fc, dfc/dr); 0 beyond rc."""
    if r >= rc:
        return 0.0, 0.0
    if kind == 0:
        t = math.tanh(1.0 - r / rc)
        return t * t * t, -3.0 * t * t * (1.0 - t * t) / rc
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0), -0.5 * math.pi / rc * math.sin(math.pi * r / rc)


# Rational minimax approximation of asin on [0, 0.5] (the classic fdlibm/Cephes
# constants): asin(x) = x + x R(x^2). Branch-free, so loops over neighbours stay
# vectorisable; libm's acos is a scalar call and cost a third of the angular time.
_PS = (1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01,
       -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05)
_QS = (-2.40339491173441421878e00, 2.02094576023350569471e00, -6.88283971605453293030e-01,
       7.70381505559019352791e-02)


@njit(inline="always", **_NUMBA_OPTS)
def acos_fast(x):
    """arccos(x) for x in [-1, 1], within 2 ulp of libm (tested)."""
    ax = abs(x)
    small = ax <= 0.5
    z = x * x if small else 0.5 * (1.0 - ax)
    p = z * (_PS[0] + z * (_PS[1] + z * (_PS[2] + z * (_PS[3] + z * (_PS[4] + z * _PS[5])))))
    q = 1.0 + z * (_QS[0] + z * (_QS[1] + z * (_QS[2] + z * _QS[3])))
    r = p / q
    if small:
        return 0.5 * math.pi - (x + x * r)
    s = math.sqrt(z)
    a = 2.0 * (s + s * r)
    return a if x > 0.0 else math.pi - a


@njit(inline="always", **_NUMBA_OPTS)
def _angle(cos, kind):
    """(x, dx/dcos) of the angular Chebyshev argument."""
    cos = min(max(cos, -1.0), 1.0)
    if kind == 1:
        return cos, 1.0
    s = max(math.sqrt(max(1.0 - cos * cos, 0.0)), SIN_THETA_MIN)
    return 2.0 * acos_fast(cos) / math.pi - 1.0, -2.0 / (math.pi * s)


@njit(**_NUMBA_OPTS)
def _gather(rij, p0, p1, type_j, rc, ckind, ne):
    """The centre's pairs with |r| < rc, sorted by neighbour type (counting sort).

    Returns pair index, unit vectors (3, m), |r|, fc, dfc, type-segment starts (ne + 1,) and types.
    Sorting by type makes the chemistry channel constant over a segment, so the inner
    loops run over contiguous vectors with one weight (SIMD-friendly).
    """
    starts = np.zeros(ne + 1, dtype=np.int64)
    for p in range(p0, p1):
        d2 = rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2
        if d2 < rc * rc:
            starts[type_j[p] + 1] += 1
    for t in range(ne):
        starts[t + 1] += starts[t]
    m = starts[ne]
    fill = starts[:ne].copy()
    pidx = np.empty(m, dtype=np.int64)
    u = np.empty((3, m))  # unit vectors by component: contiguous over neighbours (SIMD loads)
    dd = np.empty(m)
    fc = np.empty(m)
    dfc = np.empty(m)
    ty = np.empty(m, dtype=np.int64)
    for p in range(p0, p1):
        d2 = rij[p, 0] ** 2 + rij[p, 1] ** 2 + rij[p, 2] ** 2
        if d2 < rc * rc:
            q = fill[type_j[p]]
            fill[type_j[p]] += 1
            d = math.sqrt(d2)
            pidx[q] = p
            u[0, q] = rij[p, 0] / d
            u[1, q] = rij[p, 1] / d
            u[2, q] = rij[p, 2] / d
            dd[q] = d
            fc[q], dfc[q] = _fc(d, rc, ckind)
            ty[q] = type_j[p]
    return pidx, u, dd, fc, dfc, starts, ty


@njit(inline="always", **_NUMBA_OPTS)
def _gather_direction(drij, pidx, u, m):
    """The centre's slice of a pair-space direction, by component (3, m) like u (contiguous
    in the triplet loops), and its projection on each pair's unit vector (m,)."""
    dv = np.empty((3, m))
    vr = np.empty(m)
    for a in range(m):
        p = pidx[a]
        dv[0, a] = drij[p, 0]
        dv[1, a] = drij[p, 1]
        dv[2, a] = drij[p, 2]
        vr[a] = u[0, a] * dv[0, a] + u[1, a] * dv[1, a] + u[2, a] * dv[2, a]
    return dv, vr


# The three recurrences below advance four Chebyshev orders per pass over the
# neighbours: each pass loads and stores the running T_{k-1}, T_k (and T') once for
# four orders instead of once per order, which halves the time of these loops
# (loads and stores, not arithmetic, bound them; 30 orders over 35-70 neighbours).
@njit(inline="always", **_NUMBA_OPTS)
def _cheb_sums(x, w, nb, n, t0, t1, out):
    """out[k] = sum_b w[b] T_k(x[b]) for k < n, recurrence vectorised over b."""
    s0 = 0.0
    s1 = 0.0
    for b in range(nb):
        t0[b] = 1.0
        t1[b] = x[b]
        s0 += w[b]
        s1 += w[b] * x[b]
    out[0] = s0
    if n > 1:
        out[1] = s1
    k = 2
    while k + 3 < n:
        o0 = 0.0
        o1 = 0.0
        o2 = 0.0
        o3 = 0.0
        for b in range(nb):
            x2 = 2.0 * x[b]
            wb = w[b]
            ta = x2 * t1[b] - t0[b]
            tb = x2 * ta - t1[b]
            tc = x2 * tb - ta
            td = x2 * tc - tb
            t0[b] = tc
            t1[b] = td
            o0 += wb * ta
            o1 += wb * tb
            o2 += wb * tc
            o3 += wb * td
        out[k] = o0
        out[k + 1] = o1
        out[k + 2] = o2
        out[k + 3] = o3
        k += 4
    while k < n:
        acc = 0.0
        for b in range(nb):
            tk = 2.0 * x[b] * t1[b] - t0[b]
            t0[b] = t1[b]
            t1[b] = tk
            acc += w[b] * tk
        out[k] = acc
        k += 1


@njit(inline="always", **_NUMBA_OPTS)
def _cheb_dsums(x, w, wd, nb, n, t0, t1, d0, d1, out):
    """out[k] = sum_b (w[b] T_k(x[b]) + wd[b] T_k'(x[b])) for k < n."""
    s0 = 0.0
    s1 = 0.0
    for b in range(nb):
        t0[b] = 1.0
        t1[b] = x[b]
        d0[b] = 0.0
        d1[b] = 1.0
        s0 += w[b]
        s1 += w[b] * x[b] + wd[b]
    out[0] = s0
    if n > 1:
        out[1] = s1
    k = 2
    while k + 3 < n:
        o0 = 0.0
        o1 = 0.0
        o2 = 0.0
        o3 = 0.0
        for b in range(nb):
            x2 = 2.0 * x[b]
            wb = w[b]
            wdb = wd[b]
            a0 = t0[b]
            a1 = t1[b]
            e0 = d0[b]
            e1 = d1[b]
            ta = x2 * a1 - a0
            da = 2.0 * a1 + x2 * e1 - e0
            tb = x2 * ta - a1
            db = 2.0 * ta + x2 * da - e1
            tc = x2 * tb - ta
            dc = 2.0 * tb + x2 * db - da
            td = x2 * tc - tb
            dk3 = 2.0 * tc + x2 * dc - db
            t0[b] = tc
            t1[b] = td
            d0[b] = dc
            d1[b] = dk3
            o0 += wb * ta + wdb * da
            o1 += wb * tb + wdb * db
            o2 += wb * tc + wdb * dc
            o3 += wb * td + wdb * dk3
        out[k] = o0
        out[k + 1] = o1
        out[k + 2] = o2
        out[k + 3] = o3
        k += 4
    while k < n:
        acc = 0.0
        for b in range(nb):
            tk = 2.0 * x[b] * t1[b] - t0[b]
            dk = 2.0 * t1[b] + 2.0 * x[b] * d1[b] - d0[b]
            t0[b] = t1[b]
            t1[b] = tk
            d0[b] = d1[b]
            d1[b] = dk
            acc += w[b] * tk + wd[b] * dk
        out[k] = acc
        k += 1


@njit(inline="always", **_NUMBA_OPTS)
def _cheb_eval(x, h, nb, n, t0, t1, d0, d1, hT, hdT):
    """hT[b] = sum_k h[k] T_k(x[b]),  hdT[b] = sum_k h[k] T_k'(x[b])."""
    for b in range(nb):
        t0[b] = 1.0
        t1[b] = x[b]
        d0[b] = 0.0
        d1[b] = 1.0
        hT[b] = h[0] + (h[1] * x[b] if n > 1 else 0.0)
        hdT[b] = h[1] if n > 1 else 0.0
    k = 2
    while k + 3 < n:
        h0 = h[k]
        h1 = h[k + 1]
        h2 = h[k + 2]
        h3 = h[k + 3]
        for b in range(nb):
            x2 = 2.0 * x[b]
            a0 = t0[b]
            a1 = t1[b]
            e0 = d0[b]
            e1 = d1[b]
            ta = x2 * a1 - a0
            da = 2.0 * a1 + x2 * e1 - e0
            tb = x2 * ta - a1
            db = 2.0 * ta + x2 * da - e1
            tc = x2 * tb - ta
            dc = 2.0 * tb + x2 * db - da
            td = x2 * tc - tb
            dk3 = 2.0 * tc + x2 * dc - db
            t0[b] = tc
            t1[b] = td
            d0[b] = dc
            d1[b] = dk3
            hT[b] += h0 * ta + h1 * tb + h2 * tc + h3 * td
            hdT[b] += h0 * da + h1 * db + h2 * dc + h3 * dk3
        k += 4
    while k < n:
        hk = h[k]
        for b in range(nb):
            tk = 2.0 * x[b] * t1[b] - t0[b]
            dk = 2.0 * t1[b] + 2.0 * x[b] * d1[b] - d0[b]
            t0[b] = t1[b]
            t1[b] = tk
            d0[b] = d1[b]
            d1[b] = dk
            hT[b] += hk * tk
            hdT[b] += hk * dk
        k += 1


@njit(inline="always", **_NUMBA_OPTS)
def _angles(u, a, b0, b1, akind, fca, fcb_arr, xs, dxs, cs, ws):
    """For b in [b0, b1): cos, x(theta), dx/dcos and fc_a fc_b into scratch vectors."""
    for q in range(b1 - b0):
        b = b0 + q
        c = u[0, a] * u[0, b] + u[1, a] * u[1, b] + u[2, a] * u[2, b]
        x, dx = _angle(c, akind)
        cs[q] = c
        xs[q] = x
        dxs[q] = dx
        ws[q] = fca * fcb_arr[b]


@njit(inline="always", **_NUMBA_OPTS)
def _triplet_grad(u, idd, fc, dfc, a, b0, nb, cs, dxs, ws, hT, hdT, gl):
    """Accumulate dE/dr for pair a and pairs b0..b0+nb of one centre into gl (m, 3).

    hT[q] = sum_n h_n T_n(x), hdT[q] = sum_n h_n T_n'(x) for triplet (a, b0 + q);
    ws = fc_a fc_b, dxs = dx/dcos, cs = cos(theta). d cos/d r_a = (u_b - cos u_a)/|r_a|.
    """
    inv_a = idd[a]
    ga0 = 0.0
    ga1 = 0.0
    ga2 = 0.0
    for q in range(nb):
        b = b0 + q
        cos = cs[q]
        e_cos = hdT[q] * dxs[q] * ws[q]
        e_ra = hT[q] * dfc[a] * fc[b]
        e_rb = hT[q] * fc[a] * dfc[b]
        inv_b = idd[b]
        ga0 += e_cos * (u[0, b] - cos * u[0, a]) * inv_a + e_ra * u[0, a]
        ga1 += e_cos * (u[1, b] - cos * u[1, a]) * inv_a + e_ra * u[1, a]
        ga2 += e_cos * (u[2, b] - cos * u[2, a]) * inv_a + e_ra * u[2, a]
        gl[0, b] += e_cos * (u[0, a] - cos * u[0, b]) * inv_b + e_rb * u[0, b]
        gl[1, b] += e_cos * (u[1, a] - cos * u[1, b]) * inv_b + e_rb * u[1, b]
        gl[2, b] += e_cos * (u[2, a] - cos * u[2, b]) * inv_b + e_rb * u[2, b]
    gl[0, a] += ga0
    gl[1, a] += ga1
    gl[2, a] += ga2


@njit(parallel=True, **_NUMBA_OPTS)
def _forward(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
             w_rad, wa_cnt, wa_idx, wa_val, cr, nf):
    ne = w_rad.shape[1]
    G = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        S = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        xs = np.empty(npair)
        ws = np.empty(npair)
        # radial, by neighbour type
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        for t in range(ne):
            nb = st[t + 1] - st[t]
            if nb == 0:
                continue
            for q in range(nb):
                xs[q] = 2.0 * dd[st[t] + q] / rr - 1.0
                ws[q] = fc[st[t] + q]
            _cheb_sums(xs, ws, nb, nr, t0, t1, S)
            for c in range(cr):
                w = w_rad[c, t]
                if w != 0.0:
                    for n in range(nr):
                        G[i, c * nr + n] += w * S[n]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        off_ang = cr * nr
        ta = 0
        for a in range(m):
            while a >= st[ta + 1]:
                ta += 1
            for tb in range(ta, ne):
                b0 = max(a + 1, st[tb])
                b1 = st[tb + 1]
                if b1 <= b0:
                    continue
                _angles(u, a, b0, b1, akind, fc[a], fc, xs, dxs, cs, ws)
                _cheb_sums(xs, ws, b1 - b0, na, t0, t1, S)
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k]
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        G[i, base + n] += w * S[n]
    return G


@njit(parallel=True, **_NUMBA_OPTS)
def _vjp(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
         w_rad, wa_cnt, wa_idx, wa_val, cr, dG):
    ne = w_rad.shape[1]
    P = rij.shape[0]
    grad = np.zeros((P, 3))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        h = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        d0 = np.empty(npair)
        d1 = np.empty(npair)
        xs = np.empty(npair)
        hT = np.empty(npair)
        hdT = np.empty(npair)
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        for t in range(ne):
            nb = st[t + 1] - st[t]
            if nb == 0:
                continue
            for n in range(nr):
                acc = 0.0
                for c in range(cr):
                    acc += w_rad[c, t] * dG[i, c * nr + n]
                h[n] = acc
            for q in range(nb):
                xs[q] = 2.0 * dd[st[t] + q] / rr - 1.0
            _cheb_eval(xs, h, nb, nr, t0, t1, d0, d1, hT, hdT)
            for q in range(nb):
                r = st[t] + q
                e_r = hdT[q] * (2.0 / rr) * fc[r] + hT[q] * dfc[r]
                p = pidx[r]
                grad[p, 0] += e_r * u[0, r]
                grad[p, 1] += e_r * u[1, r]
                grad[p, 2] += e_r * u[2, r]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        idd = 1.0 / dd
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        ws = np.empty(m)
        gl = np.zeros((3, m))
        # H[ta, tb, n] = sum_k w_k dG[channel_k, n]
        H = np.zeros((ne, ne, na))
        off_ang = cr * nr
        for ta in range(ne):
            for tb in range(ne):
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k]
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        H[ta, tb, n] += w * dG[i, base + n]
        ta = 0
        for a in range(m):
            while a >= st[ta + 1]:
                ta += 1
            for tb in range(ta, ne):
                b0 = max(a + 1, st[tb])
                b1 = st[tb + 1]
                if b1 <= b0 or wa_cnt[ta, tb] == 0:
                    continue
                nb = b1 - b0
                _angles(u, a, b0, b1, akind, fc[a], fc, xs, dxs, cs, ws)
                _cheb_eval(xs, H[ta, tb], nb, na, t0, t1, d0, d1, hT, hdT)
                _triplet_grad(u, idd, fc, dfc, a, b0, nb, cs, dxs, ws, hT, hdT, gl)
        for a in range(m):
            p = pidx[a]
            grad[p, 0] += gl[0, a]
            grad[p, 1] += gl[1, a]
            grad[p, 2] += gl[2, a]
    return grad


@njit(parallel=True, **_NUMBA_OPTS)
def _jvp(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
         w_rad, wa_cnt, wa_idx, wa_val, cr, nf, drij):
    ne = w_rad.shape[1]
    out = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        S = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        d0 = np.empty(npair)
        d1 = np.empty(npair)
        xs = np.empty(npair)
        w1 = np.empty(npair)
        w2 = np.empty(npair)
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        for t in range(ne):
            nb = st[t + 1] - st[t]
            if nb == 0:
                continue
            for q in range(nb):
                r = st[t] + q
                p = pidx[r]
                proj = u[0, r] * drij[p, 0] + u[1, r] * drij[p, 1] + u[2, r] * drij[p, 2]
                xs[q] = 2.0 * dd[r] / rr - 1.0
                w1[q] = proj * dfc[r]
                w2[q] = proj * fc[r] * (2.0 / rr)
            _cheb_dsums(xs, w1, w2, nb, nr, t0, t1, d0, d1, S)
            for c in range(cr):
                w = w_rad[c, t]
                if w != 0.0:
                    for n in range(nr):
                        out[i, c * nr + n] += w * S[n]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        idd = 1.0 / dd
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        ws = np.empty(m)
        dv, vr = _gather_direction(drij, pidx, u, m)
        off_ang = cr * nr
        ta = 0
        for a in range(m):
            while a >= st[ta + 1]:
                ta += 1
            for tb in range(ta, ne):
                b0 = max(a + 1, st[tb])
                b1 = st[tb + 1]
                if b1 <= b0 or wa_cnt[ta, tb] == 0:
                    continue
                nb = b1 - b0
                _angles(u, a, b0, b1, akind, fc[a], fc, xs, dxs, cs, ws)
                for q in range(nb):
                    b = b0 + q
                    cos = cs[q]
                    # d cos = (u_b - cos u_a).v_a/|r_a| + (u_a - cos u_b).v_b/|r_b|
                    dcos = ((u[0, b] * dv[0, a] + u[1, b] * dv[1, a] + u[2, b] * dv[2, a])
                            - cos * vr[a]) * idd[a]
                    dcos += ((u[0, a] * dv[0, b] + u[1, a] * dv[1, b] + u[2, a] * dv[2, b])
                             - cos * vr[b]) * idd[b]
                    w1[q] = dfc[a] * vr[a] * fc[b] + fc[a] * dfc[b] * vr[b]
                    w2[q] = ws[q] * dxs[q] * dcos
                _cheb_dsums(xs, w1, w2, nb, na, t0, t1, d0, d1, S)
                for k in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, k]
                    base = off_ang + wa_idx[ta, tb, k] * na
                    for n in range(na):
                        out[i, base + n] += w * S[n]
    return out


@njit(parallel=True, **_NUMBA_OPTS)
def _forward_sep(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind, w_rad, vfac, cr, nf):
    ne = w_rad.shape[1]
    ca = vfac.shape[0]
    G = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        S = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        xs = np.empty(npair)
        ws = np.empty(npair)
        w2 = np.empty(npair)
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        m = st[ne]
        for q in range(m):
            xs[q] = 2.0 * dd[q] / rr - 1.0
        for c in range(cr):
            for q in range(m):
                w2[q] = w_rad[c, ty[q]] * fc[q]
            _cheb_sums(xs, w2, m, nr, t0, t1, S)
            for n in range(nr):
                G[i, c * nr + n] += S[n]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        off = cr * nr
        for a in range(m - 1):
            b0 = a + 1
            nb = m - b0
            _angles(u, a, b0, m, akind, fc[a], fc, xs, dxs, cs, ws)
            for c in range(ca):
                for q in range(nb):
                    w2[q] = vfac[c, ty[b0 + q]] * ws[q]
                _cheb_sums(xs, w2, nb, na, t0, t1, S)
                fa = vfac[c, ty[a]]
                for n in range(na):
                    G[i, off + c * na + n] += fa * S[n]
    return G


@njit(parallel=True, **_NUMBA_OPTS)
def _vjp_sep(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind, w_rad, vfac, cr, dG):
    ne = w_rad.shape[1]
    ca = vfac.shape[0]
    grad = np.zeros((rij.shape[0], 3))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        h = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        d0 = np.empty(npair)
        d1 = np.empty(npair)
        xs = np.empty(npair)
        hT = np.empty(npair)
        hdT = np.empty(npair)
        HT = np.empty(npair)
        HdT = np.empty(npair)
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        m = st[ne]
        for q in range(m):
            xs[q] = 2.0 * dd[q] / rr - 1.0
            HT[q] = 0.0
            HdT[q] = 0.0
        for c in range(cr):
            for n in range(nr):
                h[n] = dG[i, c * nr + n]
            _cheb_eval(xs, h, m, nr, t0, t1, d0, d1, hT, hdT)
            for q in range(m):
                w = w_rad[c, ty[q]]
                HT[q] += w * hT[q]
                HdT[q] += w * hdT[q]
        for q in range(m):
            e_r = HdT[q] * (2.0 / rr) * fc[q] + HT[q] * dfc[q]
            p = pidx[q]
            grad[p, 0] += e_r * u[0, q]
            grad[p, 1] += e_r * u[1, q]
            grad[p, 2] += e_r * u[2, q]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        idd = 1.0 / dd
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        ws = np.empty(m)
        gl = np.zeros((3, m))
        off = cr * nr
        for a in range(m - 1):
            b0 = a + 1
            nb = m - b0
            _angles(u, a, b0, m, akind, fc[a], fc, xs, dxs, cs, ws)
            for q in range(nb):
                HT[q] = 0.0
                HdT[q] = 0.0
            for c in range(ca):
                fa = vfac[c, ty[a]]
                for n in range(na):
                    h[n] = fa * dG[i, off + c * na + n]
                _cheb_eval(xs, h, nb, na, t0, t1, d0, d1, hT, hdT)
                for q in range(nb):
                    vb = vfac[c, ty[b0 + q]]
                    HT[q] += vb * hT[q]
                    HdT[q] += vb * hdT[q]
            _triplet_grad(u, idd, fc, dfc, a, b0, nb, cs, dxs, ws, HT, HdT, gl)
        for a in range(m):
            p = pidx[a]
            grad[p, 0] += gl[0, a]
            grad[p, 1] += gl[1, a]
            grad[p, 2] += gl[2, a]
    return grad


@njit(parallel=True, **_NUMBA_OPTS)
def _jvp_sep(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind, w_rad, vfac, cr, nf, drij):
    ne = w_rad.shape[1]
    ca = vfac.shape[0]
    out = np.zeros((n_centers, nf))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        npair = p1 - p0
        S = np.empty(max(nr, na))
        t0 = np.empty(npair)
        t1 = np.empty(npair)
        d0 = np.empty(npair)
        d1 = np.empty(npair)
        xs = np.empty(npair)
        k1 = np.empty(npair)
        k2 = np.empty(npair)
        w1 = np.empty(npair)
        w2 = np.empty(npair)
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        m = st[ne]
        for q in range(m):
            p = pidx[q]
            proj = u[0, q] * drij[p, 0] + u[1, q] * drij[p, 1] + u[2, q] * drij[p, 2]
            xs[q] = 2.0 * dd[q] / rr - 1.0
            k1[q] = proj * dfc[q]
            k2[q] = proj * fc[q] * (2.0 / rr)
        for c in range(cr):
            for q in range(m):
                w = w_rad[c, ty[q]]
                w1[q] = w * k1[q]
                w2[q] = w * k2[q]
            _cheb_dsums(xs, w1, w2, m, nr, t0, t1, d0, d1, S)
            for n in range(nr):
                out[i, c * nr + n] += S[n]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        idd = 1.0 / dd
        m = st[ne]
        dxs = np.empty(m)
        cs = np.empty(m)
        ws = np.empty(m)
        dv, vr = _gather_direction(drij, pidx, u, m)
        off = cr * nr
        for a in range(m - 1):
            b0 = a + 1
            nb = m - b0
            _angles(u, a, b0, m, akind, fc[a], fc, xs, dxs, cs, ws)
            for q in range(nb):
                b = b0 + q
                cos = cs[q]
                dcos = ((u[0, b] * dv[0, a] + u[1, b] * dv[1, a] + u[2, b] * dv[2, a])
                        - cos * vr[a]) * idd[a]
                dcos += ((u[0, a] * dv[0, b] + u[1, a] * dv[1, b] + u[2, a] * dv[2, b])
                         - cos * vr[b]) * idd[b]
                k1[q] = dfc[a] * vr[a] * fc[b] + fc[a] * dfc[b] * vr[b]
                k2[q] = ws[q] * dxs[q] * dcos
            for c in range(ca):
                for q in range(nb):
                    vb = vfac[c, ty[b0 + q]]
                    w1[q] = vb * k1[q]
                    w2[q] = vb * k2[q]
                _cheb_dsums(xs, w1, w2, nb, na, t0, t1, d0, d1, S)
                fa = vfac[c, ty[a]]
                for n in range(na):
                    out[i, off + c * na + n] += fa * S[n]
    return out


@njit(parallel=True, **_NUMBA_OPTS)
def _pair_jacobian(rij, offsets, type_j, n_centers, nr, na, rr, ra, ckind, akind,
                   w_rad, wa_cnt, wa_idx, wa_val, cr, nf):
    ne = w_rad.shape[1]
    P = rij.shape[0]
    J = np.zeros((P, nf, 3))
    for i in prange(n_centers):
        p0, p1 = offsets[i], offsets[i + 1]
        t = np.empty(max(nr, na, 2))
        dt = np.empty(max(nr, na, 2))
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, rr, ckind, ne)
        for r in range(st[ne]):
            tj = type_j[pidx[r]]
            _cheb1(2.0 * dd[r] / rr - 1.0, nr, t, dt)
            for c in range(cr):
                w = w_rad[c, tj]
                if w != 0.0:
                    for n in range(nr):
                        e = w * (dt[n] * (2.0 / rr) * fc[r] + t[n] * dfc[r])
                        for k in range(3):
                            J[pidx[r], c * nr + n, k] += e * u[k, r]
        if na == 0:
            continue
        pidx, u, dd, fc, dfc, st, _ty = _gather(rij, p0, p1, type_j, ra, ckind, ne)
        m = st[ne]
        ta = 0
        off = cr * nr
        for a in range(m):
            while a >= st[ta + 1]:
                ta += 1
            tb = ta
            for b in range(a + 1, m):
                while b >= st[tb + 1]:
                    tb += 1
                cos = u[0, a] * u[0, b] + u[1, a] * u[1, b] + u[2, a] * u[2, b]
                x, dxdc = _angle(cos, akind)
                _cheb1(x, na, t, dt)
                for kk in range(wa_cnt[ta, tb]):
                    w = wa_val[ta, tb, kk]
                    base = off + wa_idx[ta, tb, kk] * na
                    for n in range(na):
                        e_cos = w * dt[n] * dxdc * fc[a] * fc[b]
                        for k in range(3):
                            J[pidx[a], base + n, k] += (e_cos * (u[k, b] - cos * u[k, a]) / dd[a]
                                                        + w * t[n] * dfc[a] * fc[b] * u[k, a])
                            J[pidx[b], base + n, k] += (e_cos * (u[k, a] - cos * u[k, b]) / dd[b]
                                                        + w * t[n] * fc[a] * dfc[b] * u[k, b])
    return J


@njit(inline="always", **_NUMBA_OPTS)
def _cheb1(x, n, t, dt):
    """T_k(x), T_k'(x) for k < n at one point."""
    t[0] = 1.0
    dt[0] = 0.0
    t[1] = x
    dt[1] = 1.0
    for k in range(2, n):
        t[k] = 2.0 * x * t[k - 1] - t[k - 2]
        dt[k] = 2.0 * t[k - 1] + 2.0 * x * dt[k - 1] - dt[k - 2]


def _offsets(pair_i: np.ndarray, n_centers: int) -> np.ndarray:
    return np.searchsorted(pair_i, np.arange(n_centers + 1)).astype(np.int64)


def _args(rij, pair_i, type_j, n_centers):
    return (np.ascontiguousarray(rij, dtype=np.float64), _offsets(pair_i, n_centers),
            np.ascontiguousarray(type_j, dtype=np.int64), int(n_centers))


def descriptors(desc, rij, pair_i, type_j, n_centers):
    sep = _separable(desc)
    if sep is not None:
        return _forward_sep(*_args(rij, pair_i, type_j, n_centers), *sep)
    return _forward(*_args(rij, pair_i, type_j, n_centers), *_params(desc))


def descriptors_vjp(desc, rij, pair_i, type_j, n_centers, dG):
    dG = np.ascontiguousarray(dG, dtype=np.float64)
    sep = _separable(desc)
    if sep is not None:
        return _vjp_sep(*_args(rij, pair_i, type_j, n_centers), *sep[:-1], dG)
    return _vjp(*_args(rij, pair_i, type_j, n_centers), *_params(desc)[:-1], dG)


def descriptors_jvp(desc, rij, pair_i, type_j, n_centers, drij):
    drij = np.ascontiguousarray(drij, dtype=np.float64)
    sep = _separable(desc)
    if sep is not None:
        return _jvp_sep(*_args(rij, pair_i, type_j, n_centers), *sep, drij)
    return _jvp(*_args(rij, pair_i, type_j, n_centers), *_params(desc), drij)


def num_threads() -> int:
    return numba.get_num_threads()


def pair_jacobian(desc, rij, pair_i, type_j, n_centers):
    """J (P, F, 3) = dG_{i(p)}/d r_p (see descriptor_ref.pair_jacobian)."""
    p = _params(desc)
    return _pair_jacobian(np.ascontiguousarray(rij, dtype=np.float64), _offsets(pair_i, n_centers),
                          np.ascontiguousarray(type_j, dtype=np.int64), int(n_centers), *p)


@njit(parallel=True, **_NUMBA_OPTS)
def _jac_vjp(J, offsets, g):
    P, F = J.shape[0], J.shape[1]
    out = np.zeros((P, 3))
    for i in prange(len(offsets) - 1):
        for p in range(offsets[i], offsets[i + 1]):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            for f in range(F):
                gf = g[i, f]
                a0 += J[p, f, 0] * gf
                a1 += J[p, f, 1] * gf
                a2 += J[p, f, 2] * gf
            out[p, 0] = a0
            out[p, 1] = a1
            out[p, 2] = a2
    return out


@njit(parallel=True, **_NUMBA_OPTS)
def _jac_jvp(J, offsets, v):
    F = J.shape[1]
    n = len(offsets) - 1
    out = np.zeros((n, F))
    for i in prange(n):
        for p in range(offsets[i], offsets[i + 1]):
            v0, v1, v2 = v[p, 0], v[p, 1], v[p, 2]
            for f in range(F):
                out[i, f] += J[p, f, 0] * v0 + J[p, f, 1] * v1 + J[p, f, 2] * v2
    return out


def jacobian_vjp(J, pair_i, n_centers, g):
    """With a cached pair Jacobian J (P, F, 3): dE/dr_p = J[p]^T g[i(p)], (P, 3)."""
    return _jac_vjp(J, _offsets(pair_i, n_centers), np.ascontiguousarray(g, dtype=np.float64))


def jacobian_jvp(J, pair_i, n_centers, v):
    """With a cached pair Jacobian J (P, F, 3): dG_i = sum_{p of i} J[p] v_p, (N, F)."""
    return _jac_jvp(J, _offsets(pair_i, n_centers), np.ascontiguousarray(v, dtype=np.float64))
