"""Incremental descriptors for Metropolis MC with the NNP: pure numerics (numba), no I/O.

A move changes the sites M (one translated atom; two re-typed sites for a swap or a vacancy
jump). With the per-centre descriptors G_i, the baseline halves B_i and the atomic energies
E_i = NN_{e_i}((G_i - mu) / sigma) + e0 + B_i kept for every site:

  * a centre c outside M changes only through its terms that involve a site of M: the pair
    terms (c, m) and the triplet terms (c, m, k) for every other neighbour k of c. Those are
    computed for the old and the new state and dG_c = sum(new) - sum(old) is added to G_c
    (one local buffer per centre, so G_c takes a single rounding per move). Species
    weights enter through the channel tables w_rad[c, e], w_ang[c, e, e'] of the
    descriptor, so every weighting mode ("z", "typespin", "blocks") is handled by the same
    code: a swap or vacancy jump is a new term with the new species minus an old term
    with the old species (vacancies have no terms); the geometry is unchanged, so one
    Chebyshev evaluation per term serves both.
  * a site of M is recomputed from scratch (a translated atom: all its pairs changed; a
    re-typed site: its network and its baseline changed; a filled vacancy: it had none).

Then only the networks of those centres run. The changed rows (G, B, E) go to an undo log
first; a rejected move copies them back (no recomputation, no drift).

Neighbours come from a Verlet list of all sites (vacancies included) with radius
Rc + 2 h: each entry is (j, integer image shift S), so r_cj = x_j + S cell - x_c holds for
any later positions while every site stays within h of where the list was built. A translate
whose target is farther than h from its site's reference returns control to Python, which
rebuilds the list (O(N), rare: h >= 0.5 A and >= the largest single step) and resumes.

Random numbers are drawn in Python, 8 uniforms per step (mc.U_PER_STEP), and the
proposals are computed from them here exactly as mc._propose does (the chain is the same
as with the generic path, move for move).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .elements import atomic_number
from .neighbors import MIN_DISTANCE, neighbor_pairs

# No fastmath: terms are added and subtracted; keep IEEE rounding.
_OPTS = dict(cache=True, nogil=True)

# The networks are evaluated from scratch (nothing accumulates): let LLVM vectorise them
# (inlined into run_moves they take its flags; either way nothing drifts).
_OPTS_NET = dict(cache=True, nogil=True, fastmath={"reassoc", "contract"})

ACT_CODES = {"twisted_tanh": 0, "aenet_twist": 1, "tanh": 2, "sigmoid": 3, "linear": 4, "elu": 5}
MIN_HALF_SKIN = 0.5  # A


# ---------------------------------------------------------------- scalar helpers


@njit(inline="always", **_OPTS)
def _fc(r, rc, kind):
    if r >= rc:
        return 0.0
    if kind == 0:
        t = math.tanh(1.0 - r / rc)
        return t * t * t
    return 0.5 * (math.cos(math.pi * r / rc) + 1.0)


@njit(inline="always", **_OPTS)
def _cheb(x, n, T):
    T[0] = 1.0
    if n > 1:
        T[1] = x
    for k in range(2, n):
        T[k] = 2.0 * x * T[k - 1] - T[k - 2]


@njit(inline="always", **_OPTS)
def _angle_x(cos, kind):
    cos = min(max(cos, -1.0), 1.0)
    if kind == 1:
        return cos
    return 2.0 * math.acos(cos) / math.pi - 1.0


@njit(inline="always", **_OPTS_NET)
def _act(z, kind):
    if kind == 0:
        return math.tanh(z) + 0.16 * z
    if kind == 1:
        return 1.7159 * math.tanh(2.0 * z / 3.0) + 0.1 * z
    if kind == 2:
        return math.tanh(z)
    if kind == 3:
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    if kind == 4:
        return z
    return z if z > 0.0 else math.expm1(z)


@njit(inline="always", **_OPTS)
def _phi(d, ti, tj, bcoef, rb, rpow, rpow1):
    """Delta baseline pair energy (baseline.pair_terms), 0 beyond rb or without a species."""
    if d >= rb or ti < 0 or tj < 0:
        return 0.0
    i2 = 1.0 / (d * d)
    i6 = i2 * i2 * i2
    i8 = i6 * i2
    i10 = i8 * i2
    i12 = i10 * i2
    dr = d - rb
    return (bcoef[ti, tj, 0] * (i12 - rpow[0] + rpow1[0] * dr)
            + bcoef[ti, tj, 1] * (i10 - rpow[1] + rpow1[1] * dr)
            + bcoef[ti, tj, 2] * (i8 - rpow[2] + rpow1[2] * dr)
            + bcoef[ti, tj, 3] * (i6 - rpow[3] + rpow1[3] * dr))


# ---------------------------------------------------------------- per-centre kernels


@njit(inline="always", **_OPTS)
def _sv(sh, e):
    """The lattice translation of Verlet entry e: integer shifts (int16, small in memory)
    times the cell rows."""
    shi, box = sh
    s0, s1, s2 = shi[e, 0], shi[e, 1], shi[e, 2]
    return (s0 * box[0, 0] + s1 * box[1, 0] + s2 * box[2, 0],
            s0 * box[0, 1] + s1 * box[1, 1] + s2 * box[2, 1],
            s0 * box[0, 2] + s1 * box[1, 2] + s2 * box[2, 2])


@njit(inline="always", **_OPTS)
def _gather(c, off, nbr, sh, pos, typ, nM, Msites, oldpos, oldtyp, rcut, rkeep,
            un, dn, tn, uo, do, to, ch):
    """Entries of row c present (active, within the cutoff) in the new or the old state.

    Changed entries (sites Msites[:nM], old state at oldpos/oldtyp) within rcut; unchanged
    ones within rkeep (the same in both states). c itself must not have moved. Absent
    entries get type -1. Returns the count L."""
    L = 0
    cx, cy, cz = pos[c, 0], pos[c, 1], pos[c, 2]
    rc2 = rcut * rcut
    rk2 = rkeep * rkeep
    for e in range(off[c], off[c + 1]):
        j = nbr[e]
        k = -1
        if nM > 0 and Msites[0] == j:
            k = 0
        elif nM > 1 and Msites[1] == j:
            k = 1
        shx, shy, shz = _sv(sh, e)
        x = pos[j, 0] + shx - cx
        y = pos[j, 1] + shy - cy
        z = pos[j, 2] + shz - cz
        d2n = x * x + y * y + z * z
        if k < 0:
            if typ[j] < 0 or d2n >= rk2:
                continue
            d = math.sqrt(d2n)
            inv = 1.0 / d
            un[L, 0] = uo[L, 0] = x * inv
            un[L, 1] = uo[L, 1] = y * inv
            un[L, 2] = uo[L, 2] = z * inv
            dn[L] = do[L] = d
            tn[L] = to[L] = typ[j]
            ch[L] = False
            L += 1
            continue
        tnew = typ[j] if d2n < rc2 else -1
        xo = oldpos[k, 0] + shx - cx
        yo = oldpos[k, 1] + shy - cy
        zo = oldpos[k, 2] + shz - cz
        d2o = xo * xo + yo * yo + zo * zo
        told = oldtyp[k] if d2o < rc2 else -1
        if tnew < 0 and told < 0:
            continue
        dnew = math.sqrt(d2n)
        dold = math.sqrt(d2o)
        un[L, 0] = x / dnew
        un[L, 1] = y / dnew
        un[L, 2] = z / dnew
        dn[L] = dnew
        tn[L] = tnew
        uo[L, 0] = xo / dold
        uo[L, 1] = yo / dold
        uo[L, 2] = zo / dold
        do[L] = dold
        to[L] = told
        ch[L] = True
        L += 1
    return L


@njit(inline="always", **_OPTS)
def _radial(dG, sign, t, d, nr, rr, ckind, w_rad, T):
    if t < 0 or d >= rr:
        return
    f = sign * _fc(d, rr, ckind)
    _cheb(2.0 * d / rr - 1.0, nr, T)
    for c in range(w_rad.shape[0]):
        w = w_rad[c, t]
        if w != 0.0:
            w *= f
            for n in range(nr):
                dG[c * nr + n] += w * T[n]


@njit(inline="always", **_OPTS)
def _angular(dG, f, tp, up, p, tq, uq, q, na, akind, w_ang, off, T):
    """Add f T_n(x(theta)) w_ang[c, tp, tq] (f = sign fc_p fc_q); unit vectors up[p], uq[q]
    (rows passed by index: a row view would cost a reference count per triplet)."""
    cos = up[p, 0] * uq[q, 0] + up[p, 1] * uq[q, 1] + up[p, 2] * uq[q, 2]
    _cheb(_angle_x(cos, akind), na, T)
    for c in range(w_ang.shape[0]):
        w = w_ang[c, tp, tq]
        if w != 0.0:
            w *= f
            base = off + c * na
            for n in range(na):
                dG[base + n] += w * T[n]


@njit(inline="always", **_OPTS)
def _cutoffs(L, dn, tn, ra, ckind, fa):
    for p in range(L):
        fa[p] = _fc(dn[p], ra, ckind) if tn[p] >= 0 else 0.0


@njit(inline="always", **_OPTS)
def _full_centre(c, G, off, nbr, sh, pos, typ, P, S):
    """G[c] and the baseline half B_c of centre c from scratch (new state). Returns B_c."""
    (nr, na, rr, ra, rmax, ckind, akind, w_rad, w_ang, bcoef, rb, rpow, rpow1) = P
    (un, dn, tn, uo, do, to, ch, fan, fao, T, dG, Ms, Mp, Mt) = S
    L = _gather(c, off, nbr, sh, pos, typ, 0, Ms, Mp, Mt, rmax, rmax,
                un, dn, tn, uo, do, to, ch)
    F = G.shape[1]
    for f in range(F):
        dG[f] = 0.0
    tc = typ[c]
    b = 0.0
    for p in range(L):
        _radial(dG, 1.0, tn[p], dn[p], nr, rr, ckind, w_rad, T)
        b += _phi(dn[p], tc, tn[p], bcoef, rb, rpow, rpow1)
    if na > 0:
        _cutoffs(L, dn, tn, ra, ckind, fan)
        offa = w_rad.shape[0] * nr
        for p in range(L):
            if fan[p] == 0.0:
                continue
            for q in range(p + 1, L):
                if fan[q] != 0.0:
                    _angular(dG, fan[p] * fan[q], tn[p], un, p, tn[q], un, q, na, akind,
                             w_ang, offa, T)
    for f in range(F):
        G[c, f] = dG[f]
    return 0.5 * b


@njit(inline="always", **_OPTS)
def _angular2(dG, fo, to_p, to_q, fnew, tn_p, tn_q, u, p, q, na, akind, w_ang, off, T):
    """Re-typed entries, same geometry: (w_new fnew - w_old fo) T_n(x(theta)), one T."""
    cos = u[p, 0] * u[q, 0] + u[p, 1] * u[q, 1] + u[p, 2] * u[q, 2]
    _cheb(_angle_x(cos, akind), na, T)
    for c in range(w_ang.shape[0]):
        w = (w_ang[c, tn_p, tn_q] * fnew if tn_p >= 0 and tn_q >= 0 else 0.0) - (
            w_ang[c, to_p, to_q] * fo if to_p >= 0 and to_q >= 0 else 0.0)
        if w != 0.0:
            base = off + c * na
            for n in range(na):
                dG[base + n] += w * T[n]


@njit(inline="always", **_OPTS)
def _delta_centre(c, G, off, nbr, sh, pos, typ, nM, Msites, oldpos, oldtyp, moved, P, S):
    """Add the change of G[c] from the changed sites (c not among them). Returns dB_c.

    moved: the changed sites moved (translate); else they were only re-typed."""
    (nr, na, rr, ra, rmax, ckind, akind, w_rad, w_ang, bcoef, rb, rpow, rpow1) = P
    (un, dn, tn, uo, do, to, ch, fan, fao, T, dG, Ms, Mp, Mt) = S
    L = _gather(c, off, nbr, sh, pos, typ, nM, Msites, oldpos, oldtyp, rmax,
                ra if na > 0 else 0.0, un, dn, tn, uo, do, to, ch)
    F = G.shape[1]
    for f in range(F):
        dG[f] = 0.0
    tc = typ[c]
    db = 0.0
    for p in range(L):
        if ch[p]:
            _radial(dG, -1.0, to[p], do[p], nr, rr, ckind, w_rad, T)
            _radial(dG, 1.0, tn[p], dn[p], nr, rr, ckind, w_rad, T)
            db += (_phi(dn[p], tc, tn[p], bcoef, rb, rpow, rpow1)
                   - _phi(do[p], tc, to[p], bcoef, rb, rpow, rpow1))
    if na > 0:
        _cutoffs(L, dn, tn, ra, ckind, fan)
        for p in range(L):  # the old state differs only on changed entries
            fao[p] = (_fc(do[p], ra, ckind) if to[p] >= 0 else 0.0) if ch[p] else fan[p]
        offa = w_rad.shape[0] * nr
        for p in range(L):
            if not ch[p]:
                continue
            for q in range(L):
                if q == p or (ch[q] and q < p):
                    continue  # a triplet of two changed entries counts once
                fo = fao[p] * fao[q]
                fnew = fan[p] * fan[q]
                if not moved:
                    if fo != 0.0 or fnew != 0.0:
                        _angular2(dG, fo, to[p], to[q], fnew, tn[p], tn[q], un, p, q,
                                  na, akind, w_ang, offa, T)
                    continue
                if fo != 0.0:
                    _angular(dG, -fo, to[p], uo, p, to[q], uo, q, na, akind, w_ang, offa, T)
                if fnew != 0.0:
                    _angular(dG, fnew, tn[p], un, p, tn[q], un, q, na, akind, w_ang, offa, T)
    for f in range(F):
        G[c, f] += dG[f]
    return 0.5 * db


@njit(inline="always", **_OPTS_NET)
def _network(x, e, N, a, b):
    """Ensemble-mean network energy + e0 of element e for standardised input x (F,)."""
    (nl, dout, Wp, Bp, act, n_models, e0) = N
    tot = 0.0
    F = x.shape[0]
    kind = act[e]
    for m in range(n_models):
        for i in range(F):
            a[i] = x[i]
        n_in = F
        for l in range(nl[e]):
            o = dout[e, l]
            for k in range(o):
                b[k] = Bp[e, m, l, k]
            for i in range(n_in):  # Wp[e, m, l]: (in, out), padded; no views (refcounts)
                ai = a[i]
                for k in range(o):
                    b[k] += Wp[e, m, l, i, k] * ai
            if l < nl[e] - 1:
                if kind == 0:  # the default, in a loop of its own (no branch per node)
                    for k in range(o):
                        a[k] = math.tanh(b[k]) + 0.16 * b[k]
                else:
                    for k in range(o):
                        a[k] = _act(b[k], kind)
            else:
                for k in range(o):
                    a[k] = b[k]
            n_in = o
        tot += a[0]
    return tot / n_models + e0[e]


@njit(inline="always", **_OPTS_NET)
def _energy(c, G, typ, B, mean, istd, N, xb, a, b):
    e = typ[c]
    if e < 0:
        return 0.0
    for f in range(G.shape[1]):
        xb[f] = (G[c, f] - mean[e, f]) * istd[e, f]
    return _network(xb, e, N, a, b) + B[c]


@njit(**_OPTS)
def full_all(G, B, E, off, nbr, sh, pos, typ, mean, istd, P, S, N, xb, a, b):
    """Every site from scratch."""
    for c in range(len(typ)):
        if typ[c] < 0:
            for f in range(G.shape[1]):
                G[c, f] = 0.0
            B[c] = 0.0
            E[c] = 0.0
        else:
            B[c] = _full_centre(c, G, off, nbr, sh, pos, typ, P, S)
            E[c] = _energy(c, G, typ, B, mean, istd, N, xb, a, b)


# ---------------------------------------------------------------- proposals


@njit(inline="always", **_OPTS)
def _index(u, n):
    k = int(u * n)
    return n - 1 if k >= n else k


@njit(inline="always", **_OPTS)
def _pick_real(u, gsites, gcount, greal):
    """The k-th site (k = floor(u n)) of the real groups concatenated in group order."""
    n = 0
    for g in greal:
        n += gcount[g]
    k = _index(u, n)
    for g in greal:
        if k < gcount[g]:
            return gsites[g, k]
        k -= gcount[g]
    return -1


@njit(inline="always", **_OPTS)
def _lower_bound(gsites, g, n, i):
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if gsites[g, mid] < i:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(inline="always", **_OPTS)
def _group_move(gsites, gcount, ga, gb, i):
    """Site i leaves sorted group ga and joins sorted group gb."""
    na = gcount[ga]
    k = _lower_bound(gsites, ga, na, i)
    for q in range(k, na - 1):
        gsites[ga, q] = gsites[ga, q + 1]
    gcount[ga] = na - 1
    nb = gcount[gb]
    k = _lower_bound(gsites, gb, nb, i)
    for q in range(nb, k, -1):
        gsites[gb, q] = gsites[gb, q - 1]
    gsites[gb, k] = i
    gcount[gb] = nb + 1


# ---------------------------------------------------------------- the Metropolis loop


# Without the reference counting of arrays (NRT): every array comes from the caller, and
# the counting around inlined helpers cost a third of a move.
@njit(_nrt=False, **_OPTS)
def run_moves(U, s0, cp, betas, dmax, window, n_real, energy0, estate,
              pos, ref, typ, gof, gsites, gcount, greal, gvac, half_skin,
              G, B, E, off, nbr, sh, mean, istd, P, S, N, xb, a, b,
              logc, logG, logB, logE, flag, tried, accepted, Ms, Mp, Mt, u):
    """Moves U[s0:] (rows of 8 uniforms). Returns (next step, 1 if the Verlet list must be
    rebuilt before that step else 0). estate[0]: the running total energy (eV).
    Ms (2,) int, Mp (2, 3), Mt (2,) int, u (8,): scratch."""
    rmax = P[4]
    n_steps = U.shape[0]
    F = G.shape[1]
    for s in range(s0, n_steps):
        for k in range(U.shape[1]):
            u[k] = U[s, k]
        x = u[0] * cp[2]
        kind = 0
        while kind < 2 and x >= cp[kind]:
            kind += 1
        log_u = math.log(u[7]) if u[7] > 0.0 else -np.inf
        # -- proposal
        if kind == 0:
            if len(greal) == 0:
                tried[kind] += 1
                continue
            m = _pick_real(u[1], gsites, gcount, greal)
            nx = pos[m, 0] + dmax * (2.0 * u[2] - 1.0)
            ny = pos[m, 1] + dmax * (2.0 * u[3] - 1.0)
            nz = pos[m, 2] + dmax * (2.0 * u[4] - 1.0)
            dx, dy, dz = nx - ref[m, 0], ny - ref[m, 1], nz - ref[m, 2]
            if dx * dx + dy * dy + dz * dz >= half_skin * half_skin:
                return s, 1
            nM = 1
            Ms[0] = m
            Mt[0] = typ[m]
            Mp[0, 0], Mp[0, 1], Mp[0, 2] = pos[m, 0], pos[m, 1], pos[m, 2]
            pos[m, 0], pos[m, 1], pos[m, 2] = nx, ny, nz
        elif kind == 1:
            nr_ = len(greal)
            if nr_ < 2:
                tried[kind] += 1
                continue
            W = 0.0
            for ia in range(nr_):
                for ib in range(nr_):
                    if ia != ib:
                        W += gcount[greal[ia]] * gcount[greal[ib]]
            target = u[1] * W
            acc_w = 0.0
            ga = greal[nr_ - 1]
            gb = greal[nr_ - 2]
            found = False
            for ia in range(nr_):
                for ib in range(nr_):
                    if ia != ib and not found:
                        acc_w += gcount[greal[ia]] * gcount[greal[ib]]
                        if acc_w > target:
                            ga, gb = greal[ia], greal[ib]
                            found = True
            i = gsites[ga, _index(u[2], gcount[ga])]
            j = gsites[gb, _index(u[3], gcount[gb])]
            nM = 2
            Ms[0], Ms[1] = i, j
            Mt[0], Mt[1] = typ[i], typ[j]
            for q in range(2):
                for k in range(3):
                    Mp[q, k] = pos[Ms[q], k]
            typ[i], typ[j] = Mt[1], Mt[0]
        else:
            if len(greal) == 0 or gvac < 0 or gcount[gvac] == 0:
                tried[kind] += 1
                continue
            i = _pick_real(u[1], gsites, gcount, greal)
            j = gsites[gvac, _index(u[2], gcount[gvac])]
            nM = 2
            Ms[0], Ms[1] = i, j
            Mt[0], Mt[1] = typ[i], typ[j]
            for q in range(2):
                for k in range(3):
                    Mp[q, k] = pos[Ms[q], k]
            typ[j] = Mt[0]
            typ[i] = -1
        tried[kind] += 1
        # -- overlap check: the moved or filled site against its neighbours
        chk = Ms[0] if kind == 0 else (Ms[1] if kind == 2 else -1)
        bad = False
        if chk >= 0:
            for e in range(off[chk], off[chk + 1]):
                jj = nbr[e]
                if typ[jj] < 0 or jj == chk:
                    continue
                shx, shy, shz = _sv(sh, e)
                ddx = pos[jj, 0] + shx - pos[chk, 0]
                ddy = pos[jj, 1] + shy - pos[chk, 1]
                ddz = pos[jj, 2] + shz - pos[chk, 2]
                if ddx * ddx + ddy * ddy + ddz * ddz < MIN_DISTANCE * MIN_DISTANCE:
                    bad = True
                    break
        if bad:
            for q in range(nM - 1, -1, -1):
                typ[Ms[q]] = Mt[q]
                for k in range(3):
                    pos[Ms[q], k] = Mp[q, k]
            continue
        # -- affected centres: the changed sites, and every active site with an image of a
        #    changed site within rmax in the old or the new state
        nc = 0
        for q in range(nM):
            c = Ms[q]
            if flag[c] == 0:
                flag[c] = 2
                logc[nc] = c
                nc += 1
        for q in range(nM):
            sm = Ms[q]
            for e in range(off[sm], off[sm + 1]):
                c = nbr[e]
                if flag[c] != 0 or typ[c] < 0:
                    continue
                shx, shy, shz = _sv(sh, e)
                ddx = pos[c, 0] + shx - pos[sm, 0]
                ddy = pos[c, 1] + shy - pos[sm, 1]
                ddz = pos[c, 2] + shz - pos[sm, 2]
                near = typ[sm] >= 0 and ddx * ddx + ddy * ddy + ddz * ddz < rmax * rmax
                if not near and Mt[q] >= 0:
                    ddx = pos[c, 0] + shx - Mp[q, 0]
                    ddy = pos[c, 1] + shy - Mp[q, 1]
                    ddz = pos[c, 2] + shz - Mp[q, 2]
                    near = ddx * ddx + ddy * ddy + ddz * ddz < rmax * rmax
                if near:
                    flag[c] = 1
                    logc[nc] = c
                    nc += 1
        # -- update them, keeping the old rows
        de = 0.0
        for r in range(nc):
            c = logc[r]
            for f in range(F):
                logG[r, f] = G[c, f]
            logB[r] = B[c]
            logE[r] = E[c]
            if flag[c] == 2:
                if typ[c] >= 0:
                    B[c] = _full_centre(c, G, off, nbr, sh, pos, typ, P, S)
                else:
                    B[c] = 0.0
            else:
                B[c] += _delta_centre(c, G, off, nbr, sh, pos, typ, nM, Ms, Mp, Mt, kind == 0,
                                       P, S)
            E[c] = _energy(c, G, typ, B, mean, istd, N, xb, a, b)
            de += E[c] - logE[r]
        for r in range(nc):
            flag[logc[r]] = 0
        # -- Metropolis
        ok = math.isfinite(de)
        if ok and window[2] > 0:
            rel = (estate[0] + de) / n_real - energy0
            ok = window[0] <= rel <= window[1]
        ok = ok and (de <= 0.0 or log_u < -betas[kind] * de)
        if ok:
            estate[0] += de
            accepted[kind] += 1
            if kind == 1:
                _group_move(gsites, gcount, gof[Ms[0]], gof[Ms[1]], Ms[0])
                _group_move(gsites, gcount, gof[Ms[1]], gof[Ms[0]], Ms[1])
                gof[Ms[0]], gof[Ms[1]] = gof[Ms[1]], gof[Ms[0]]
            elif kind == 2:
                _group_move(gsites, gcount, gof[Ms[0]], gof[Ms[1]], Ms[0])
                _group_move(gsites, gcount, gof[Ms[1]], gof[Ms[0]], Ms[1])
                gof[Ms[0]], gof[Ms[1]] = gof[Ms[1]], gof[Ms[0]]
        else:
            for r in range(nc):
                c = logc[r]
                for f in range(F):
                    G[c, f] = logG[r, f]
                B[c] = logB[r]
                E[c] = logE[r]
            for q in range(nM - 1, -1, -1):
                typ[Ms[q]] = Mt[q]
                for k in range(3):
                    pos[Ms[q], k] = Mp[q, k]
    return n_steps, 0


# ---------------------------------------------------------------- the Python side


class Tables:
    """The potential as flat arrays for the kernels."""

    def __init__(self, potential):
        desc = potential.descriptor
        self.species_z = np.array([atomic_number(s) for s in desc.species], dtype=np.int64)
        w_rad, w_ang = desc.channel_weights
        na = desc.n_angular
        if na == 0:
            w_ang = np.zeros((0, desc.n_species, desc.n_species))
        bl = potential.baseline
        if bl is not None:
            bcoef = np.ascontiguousarray(bl.coefficients, dtype=np.float64)
            rb = float(bl.cutoff)
        else:
            bcoef = np.zeros((desc.n_species, desc.n_species, 4))
            rb = 1.0
        powers = np.array([12.0, 10.0, 8.0, 6.0])
        self.cutoff = float(potential.cutoff)
        self.P = (int(desc.n_radial), int(na), float(desc.r_radial), float(desc.r_angular),
                  self.cutoff, 0 if desc.cutoff_fn == "tanh" else 1,
                  0 if desc.angle == "theta" else 1,
                  np.ascontiguousarray(w_rad, dtype=np.float64),
                  np.ascontiguousarray(w_ang, dtype=np.float64), bcoef, rb,
                  rb ** (-powers), powers * rb ** (-(powers + 1.0)))
        self.n_features = int(desc.n_features)
        self.mean = np.ascontiguousarray(potential.feature_mean, dtype=np.float64)
        self.istd = 1.0 / np.ascontiguousarray(potential.feature_std, dtype=np.float64)
        nets = potential.networks
        ne = len(nets)
        M = int(potential.n_models)
        lmax = max(len(n.weights) for n in nets)
        widest = max([self.n_features] + [w.shape[2] for n in nets for w in n.weights])
        nl = np.zeros(ne, dtype=np.int64)
        dout = np.zeros((ne, lmax), dtype=np.int64)
        act = np.zeros(ne, dtype=np.int64)
        Wp = np.zeros((ne, M, lmax, widest, widest))  # padded: fixed-stride 2-D layers
        Bp = np.zeros((ne, M, lmax, widest))
        for e, net in enumerate(nets):
            nl[e] = len(net.weights)
            act[e] = ACT_CODES[net.activation]
            for l, (w, bias) in enumerate(zip(net.weights, net.biases)):
                dout[e, l] = w.shape[2]
                Wp[e, :, l, :w.shape[1], :w.shape[2]] = w
                Bp[e, :, l, :w.shape[2]] = bias
        self.N = (nl, dout, Wp, Bp, act, M,
                  np.ascontiguousarray(potential.energy_shift, dtype=np.float64))
        self.widest = widest
        self._type_of_z = {int(z): e for e, z in enumerate(self.species_z)}

    def types(self, numbers) -> np.ndarray:
        """Species index per site, -1 on vacancies (atomic number 0)."""
        return np.array([-1 if int(z) == 0 else self._type_of_z[int(z)] for z in numbers],
                        dtype=np.int64)


class Engine:
    """Sites, Verlet list, descriptors and energies of one chain, kept in sync by run_moves."""

    def __init__(self, tables: Tables, positions, numbers, cell, pbc, half_skin: float):
        self.t = tables
        self.cell, self.pbc = np.asarray(cell, dtype=float), np.asarray(pbc, dtype=bool)
        self.pos = np.array(positions, dtype=np.float64)
        self.typ = tables.types(numbers)
        self.half_skin = float(half_skin)
        self.rebuilds = 0
        self.rebuild()
        n, F = len(self.typ), tables.n_features
        self.G = np.zeros((n, F))
        self.B = np.zeros(n)
        self.E = np.zeros(n)
        self.recompute()

    def rebuild(self):
        """The Verlet list (radius Rc + 2 h) at the current positions: O(N)."""
        pairs = neighbor_pairs(self.pos, self.cell, self.pbc, self.t.cutoff + 2 * self.half_skin)
        n = len(self.pos)
        i, j = pairs.i, pairs.j
        self.off = np.searchsorted(i, np.arange(n + 1)).astype(np.int64)
        self.nbr = np.ascontiguousarray(j, dtype=np.int32)
        if len(i) and np.abs(pairs.shifts).max() > np.iinfo(np.int16).max:
            raise ValueError("mc: the cell is too small for the cutoff (image shifts > 32767)")
        # r_ij = x_j + S_ij @ cell - x_i for any later positions (S: integer image shifts)
        self.sh = (np.ascontiguousarray(pairs.shifts, dtype=np.int16),
                   np.ascontiguousarray(self.cell, dtype=np.float64))
        self.ref = self.pos.copy()
        maxrow = int(np.diff(self.off).max()) if n else 0
        if getattr(self, "_maxrow", -1) < maxrow:
            self._alloc(n, maxrow)
        self.rebuilds += 1

    def _alloc(self, n, maxrow):
        L = maxrow + 1
        F = self.t.n_features
        nT = max(self.t.P[0], self.t.P[1], 2)
        self.S = (np.zeros((L, 3)), np.zeros(L), np.zeros(L, dtype=np.int64),
                  np.zeros((L, 3)), np.zeros(L), np.zeros(L, dtype=np.int64),
                  np.zeros(L, dtype=np.bool_), np.zeros(L), np.zeros(L), np.zeros(nT),
                  np.zeros(F), np.zeros(2, dtype=np.int64), np.zeros((2, 3)),
                  np.zeros(2, dtype=np.int64))
        nlog = 2 * L + 2
        self.logc = np.zeros(nlog, dtype=np.int64)
        self.logG = np.zeros((nlog, F))
        self.logB = np.zeros(nlog)
        self.logE = np.zeros(nlog)
        self.flag = np.zeros(n, dtype=np.int64)
        self.scratch = (np.zeros(2, dtype=np.int64), np.zeros((2, 3)), np.zeros(2, dtype=np.int64),
                        np.zeros(8))
        w = self.t.widest
        self.xb, self.a, self.b = np.zeros(F), np.zeros(w), np.zeros(w)
        self._maxrow = maxrow

    def recompute(self):
        """Every descriptor and energy from scratch: O(N)."""
        full_all(self.G, self.B, self.E, self.off, self.nbr, self.sh, self.pos, self.typ,
                 self.t.mean, self.t.istd, self.t.P, self.S, self.t.N, self.xb, self.a, self.b)

    def numbers(self) -> np.ndarray:
        z = np.zeros(len(self.typ), dtype=np.int64)
        real = self.typ >= 0
        z[real] = self.t.species_z[self.typ[real]]
        return z
