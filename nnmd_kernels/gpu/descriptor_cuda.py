"""CUDA kernels for the Chebyshev descriptor, its VJP and its JVP (numba.cuda).

Same pair-space contract as descriptor_ref / descriptor_numba: pairs grouped by
centre, r_ij vectors, neighbour types. One thread per centre atom: it owns its
row of G and its slice of pairs, so there are no write races and no atomics;
the Chebyshev recurrences run in registers (no local arrays), and dG/dR is never
formed. Written so that numba's CUDA simulator runs them unchanged
(NUMBA_ENABLE_CUDASIM=1): CI tests them there against the numpy reference.

Inputs may be numpy arrays (copied to the device and back) or device arrays
(CuPy arrays or numba device arrays, used in place; results stay on the device).

This is the first GPU building block (issue 8): correctness first; a
warp-per-centre layout and fused network evaluation are the next steps.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

from ..descriptor import SIN_THETA_MIN, ChebyshevDescriptor
from ..descriptor_numba import _sparse_angular_weights

# The simulator runs one Python thread per CUDA thread: small blocks waste fewer on idle threads.
THREADS = 32 if config.ENABLE_CUDASIM else 128


@cuda.jit(device=True, inline=True)
def _fc(r, rc, kind):
    if r >= rc:
        return 0.0, 0.0
    if kind == 0:
        t = math.tanh(1.0 - r / rc)
        return t * t * t, -3.0 * t * t * (1.0 - t * t) / rc
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0), -0.5 * math.pi / rc * math.sin(math.pi * r / rc)


@cuda.jit(device=True, inline=True)
def _angle(c, kind):
    if c > 1.0:
        c = 1.0
    if c < -1.0:
        c = -1.0
    if kind == 1:
        return c, 1.0
    s = math.sqrt(max(1.0 - c * c, 0.0))
    if s < SIN_THETA_MIN:
        s = SIN_THETA_MIN
    return 2.0 * math.acos(c) / math.pi - 1.0, -2.0 / (math.pi * s)


@cuda.jit(device=True, inline=True)
def _cheb_next(n, x, t0, t1, d0, d1):
    """T_n(x), T_n'(x) and the recurrence state advanced; start from (1, x, 0, 1)."""
    if n == 0:
        return 1.0, 0.0, t0, t1, d0, d1
    if n == 1:
        return x, 1.0, t0, t1, d0, d1
    tn = 2.0 * x * t1 - t0
    dn = 2.0 * t1 + 2.0 * x * d1 - d0
    return tn, dn, t1, tn, d1, dn


@cuda.jit(device=True, inline=True)
def _norm(rij, p):
    return math.sqrt(rij[p, 0] * rij[p, 0] + rij[p, 1] * rij[p, 1] + rij[p, 2] * rij[p, 2])


@cuda.jit
def _forward(rij, offsets, type_j, nr, na, rr, ra, ckind, akind, w_rad, wa_cnt, wa_idx, wa_val, G):
    i = cuda.grid(1)
    if i >= offsets.shape[0] - 1:
        return
    cr = w_rad.shape[0]
    off = cr * nr
    p0 = offsets[i]
    p1 = offsets[i + 1]
    for p in range(p0, p1):
        d = _norm(rij, p)
        if d < rr:
            fc, _ = _fc(d, rr, ckind)
            s = 2.0 * d / rr - 1.0
            tj = type_j[p]
            t0 = 1.0
            t1 = s
            d0 = 0.0
            d1 = 1.0
            for n in range(nr):
                tn, _, t0, t1, d0, d1 = _cheb_next(n, s, t0, t1, d0, d1)
                for c in range(cr):
                    G[i, c * nr + n] += w_rad[c, tj] * fc * tn
    if na == 0:
        return
    for a in range(p0, p1):
        da = _norm(rij, a)
        if da >= ra:
            continue
        fa, _ = _fc(da, ra, ckind)
        ta = type_j[a]
        for b in range(a + 1, p1):
            db = _norm(rij, b)
            if db >= ra:
                continue
            fb, _ = _fc(db, ra, ckind)
            tb = type_j[b]
            cos = (rij[a, 0] * rij[b, 0] + rij[a, 1] * rij[b, 1] + rij[a, 2] * rij[b, 2]) / (da * db)
            x, _ = _angle(cos, akind)
            ff = fa * fb
            t0 = 1.0
            t1 = x
            d0 = 0.0
            d1 = 1.0
            for n in range(na):
                tn, _, t0, t1, d0, d1 = _cheb_next(n, x, t0, t1, d0, d1)
                for k in range(wa_cnt[ta, tb]):
                    G[i, off + wa_idx[ta, tb, k] * na + n] += wa_val[ta, tb, k] * ff * tn


@cuda.jit
def _vjp(rij, offsets, type_j, nr, na, rr, ra, ckind, akind, w_rad, wa_cnt, wa_idx, wa_val, dG, grad):
    i = cuda.grid(1)
    if i >= offsets.shape[0] - 1:
        return
    cr = w_rad.shape[0]
    off = cr * nr
    p0 = offsets[i]
    p1 = offsets[i + 1]
    for p in range(p0, p1):
        d = _norm(rij, p)
        if d >= rr:
            continue
        fc, dfc = _fc(d, rr, ckind)
        s = 2.0 * d / rr - 1.0
        tj = type_j[p]
        hT = 0.0
        hdT = 0.0
        t0 = 1.0
        t1 = s
        d0 = 0.0
        d1 = 1.0
        for n in range(nr):
            tn, dn, t0, t1, d0, d1 = _cheb_next(n, s, t0, t1, d0, d1)
            h = 0.0
            for c in range(cr):
                h += w_rad[c, tj] * dG[i, c * nr + n]
            hT += h * tn
            hdT += h * dn
        e_r = (hdT * (2.0 / rr) * fc + hT * dfc) / d
        grad[p, 0] += e_r * rij[p, 0]
        grad[p, 1] += e_r * rij[p, 1]
        grad[p, 2] += e_r * rij[p, 2]
    if na == 0:
        return
    for a in range(p0, p1):
        da = _norm(rij, a)
        if da >= ra:
            continue
        fa, dfa = _fc(da, ra, ckind)
        ta = type_j[a]
        for b in range(a + 1, p1):
            db = _norm(rij, b)
            if db >= ra:
                continue
            fb, dfb = _fc(db, ra, ckind)
            tb = type_j[b]
            cos = (rij[a, 0] * rij[b, 0] + rij[a, 1] * rij[b, 1] + rij[a, 2] * rij[b, 2]) / (da * db)
            x, dxdc = _angle(cos, akind)
            hT = 0.0
            hdT = 0.0
            t0 = 1.0
            t1 = x
            d0 = 0.0
            d1 = 1.0
            for n in range(na):
                tn, dn, t0, t1, d0, d1 = _cheb_next(n, x, t0, t1, d0, d1)
                h = 0.0
                for k in range(wa_cnt[ta, tb]):
                    h += wa_val[ta, tb, k] * dG[i, off + wa_idx[ta, tb, k] * na + n]
                hT += h * tn
                hdT += h * dn
            e_cos = hdT * dxdc * fa * fb
            e_ra = hT * dfa * fb
            e_rb = hT * fa * dfb
            for k in range(3):
                ua = rij[a, k] / da
                ub = rij[b, k] / db
                grad[a, k] += e_cos * (ub - cos * ua) / da + e_ra * ua
                grad[b, k] += e_cos * (ua - cos * ub) / db + e_rb * ub


@cuda.jit
def _jvp(rij, offsets, type_j, nr, na, rr, ra, ckind, akind, w_rad, wa_cnt, wa_idx, wa_val, v, out):
    i = cuda.grid(1)
    if i >= offsets.shape[0] - 1:
        return
    cr = w_rad.shape[0]
    off = cr * nr
    p0 = offsets[i]
    p1 = offsets[i + 1]
    for p in range(p0, p1):
        d = _norm(rij, p)
        if d >= rr:
            continue
        fc, dfc = _fc(d, rr, ckind)
        s = 2.0 * d / rr - 1.0
        tj = type_j[p]
        proj = (rij[p, 0] * v[p, 0] + rij[p, 1] * v[p, 1] + rij[p, 2] * v[p, 2]) / d
        t0 = 1.0
        t1 = s
        d0 = 0.0
        d1 = 1.0
        for n in range(nr):
            tn, dn, t0, t1, d0, d1 = _cheb_next(n, s, t0, t1, d0, d1)
            val = proj * (dn * (2.0 / rr) * fc + tn * dfc)
            for c in range(cr):
                out[i, c * nr + n] += w_rad[c, tj] * val
    if na == 0:
        return
    for a in range(p0, p1):
        da = _norm(rij, a)
        if da >= ra:
            continue
        fa, dfa = _fc(da, ra, ckind)
        ta = type_j[a]
        va = (rij[a, 0] * v[a, 0] + rij[a, 1] * v[a, 1] + rij[a, 2] * v[a, 2]) / da
        for b in range(a + 1, p1):
            db = _norm(rij, b)
            if db >= ra:
                continue
            fb, dfb = _fc(db, ra, ckind)
            tb = type_j[b]
            cos = (rij[a, 0] * rij[b, 0] + rij[a, 1] * rij[b, 1] + rij[a, 2] * rij[b, 2]) / (da * db)
            x, dxdc = _angle(cos, akind)
            vb = (rij[b, 0] * v[b, 0] + rij[b, 1] * v[b, 1] + rij[b, 2] * v[b, 2]) / db
            dcos = 0.0
            for k in range(3):
                ua = rij[a, k] / da
                ub = rij[b, k] / db
                dcos += (ub - cos * ua) * v[a, k] / da + (ua - cos * ub) * v[b, k] / db
            k_t = dfa * va * fb + fa * dfb * vb
            k_dt = fa * fb * dxdc * dcos
            t0 = 1.0
            t1 = x
            d0 = 0.0
            d1 = 1.0
            for n in range(na):
                tn, dn, t0, t1, d0, d1 = _cheb_next(n, x, t0, t1, d0, d1)
                val = dn * k_dt + tn * k_t
                for k in range(wa_cnt[ta, tb]):
                    out[i, off + wa_idx[ta, tb, k] * na + n] += wa_val[ta, tb, k] * val


def _is_device(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def _to_device(a, dtype):
    if _is_device(a):
        return a
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def _params(desc: ChebyshevDescriptor):
    cache = desc.__dict__.get("_cuda_params")
    if cache is None:
        w_rad, w_ang = desc.channel_weights
        cnt, idx, val = _sparse_angular_weights(w_ang)
        cache = (desc.n_radial, desc.n_angular, desc.r_radial, desc.r_angular,
                 0 if desc.cutoff_fn == "tanh" else 1, 0 if desc.angle == "theta" else 1,
                 cuda.to_device(np.ascontiguousarray(w_rad)), cuda.to_device(cnt), cuda.to_device(idx),
                 cuda.to_device(val))
        desc.__dict__["_cuda_params"] = cache
    return cache


def _prepare(rij, pair_i, type_j, n_centers):
    host = not _is_device(rij)
    if host:
        offsets = np.searchsorted(np.asarray(pair_i), np.arange(n_centers + 1)).astype(np.int64)
    else:
        import cupy as cp

        offsets = cp.searchsorted(cp.asarray(pair_i), cp.arange(n_centers + 1)).astype(cp.int64)
    return host, _to_device(rij, np.float64), _to_device(offsets, np.int64), _to_device(type_j, np.int64)


def _zeros(shape, like_host: bool):
    if like_host:
        return cuda.to_device(np.zeros(shape))
    import cupy as cp

    return cp.zeros(shape)


def _launch(kernel, n_centers, *args):
    blocks = max(1, (n_centers + THREADS - 1) // THREADS)
    kernel[blocks, THREADS](*args)


def _out(arr, host):
    return arr.copy_to_host() if host else arr


def descriptors(desc, rij, pair_i, type_j, n_centers):
    host, d_rij, d_off, d_tj = _prepare(rij, pair_i, type_j, n_centers)
    G = _zeros((n_centers, desc.n_features), host)
    _launch(_forward, n_centers, d_rij, d_off, d_tj, *_params(desc), G)
    return _out(G, host)


def descriptors_vjp(desc, rij, pair_i, type_j, n_centers, dG):
    host, d_rij, d_off, d_tj = _prepare(rij, pair_i, type_j, n_centers)
    grad = _zeros((len(pair_i), 3), host)
    _launch(_vjp, n_centers, d_rij, d_off, d_tj, *_params(desc), _to_device(dG, np.float64), grad)
    return _out(grad, host)


def descriptors_jvp(desc, rij, pair_i, type_j, n_centers, drij):
    host, d_rij, d_off, d_tj = _prepare(rij, pair_i, type_j, n_centers)
    out = _zeros((n_centers, desc.n_features), host)
    _launch(_jvp, n_centers, d_rij, d_off, d_tj, *_params(desc), _to_device(drij, np.float64), out)
    return _out(out, host)
