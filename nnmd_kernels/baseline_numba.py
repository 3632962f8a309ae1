"""The Delta baseline's pair sum in one compiled pass (numba); baseline.pair_terms is the
reference. Per pair: phi(r) and phi'(r) of the shifted-force form (baseline.py), half of phi
to the centre's energy and 1/2 phi'(r) r_hat to the pair gradient, without the (P, 4)
temporaries of the numpy path (at 21,600 LGPS atoms that path cost 9 us per atom, a fifth
of an energy + forces evaluation)."""

from __future__ import annotations

import numba
import numpy as np

from .baseline import PairBaseline

# baseline.POWERS (12, 10, 8, 6) are unrolled below; tests compare with baseline.pair_terms


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _baseline_pairs(coef, R, rij, pair_i, ti, tj, n_centers, grad, with_grad):
    e = np.zeros(n_centers)
    Rp = np.empty(4)
    Rp1 = np.empty(4)
    for k in range(4):
        p = 12.0 - 2.0 * k
        Rp[k] = R ** (-p)
        Rp1[k] = p * R ** (-(p + 1.0))
    for q in range(len(pair_i)):
        x, y, z = rij[q, 0], rij[q, 1], rij[q, 2]
        r2 = x * x + y * y + z * z
        r = np.sqrt(r2)
        if r >= R:
            continue
        a, b = ti[q], tj[q]
        i2 = 1.0 / r2
        i6 = i2 * i2 * i2
        i8 = i6 * i2
        i10 = i8 * i2
        i12 = i10 * i2
        c0, c1, c2, c3 = coef[a, b, 0], coef[a, b, 1], coef[a, b, 2], coef[a, b, 3]
        dr = r - R
        phi = (c0 * (i12 - Rp[0] + Rp1[0] * dr) + c1 * (i10 - Rp[1] + Rp1[1] * dr)
               + c2 * (i8 - Rp[2] + Rp1[2] * dr) + c3 * (i6 - Rp[3] + Rp1[3] * dr))
        e[pair_i[q]] += 0.5 * phi
        if with_grad:
            dphi = (c0 * (-12.0 * i12 / r + Rp1[0]) + c1 * (-10.0 * i10 / r + Rp1[1])
                    + c2 * (-8.0 * i8 / r + Rp1[2]) + c3 * (-6.0 * i6 / r + Rp1[3]))
            s = 0.5 * dphi / r
            grad[q, 0] += s * x
            grad[q, 1] += s * y
            grad[q, 2] += s * z
    return e


def baseline_pairs(baseline: PairBaseline, rij, pair_i, ti, tj, n_centers: int, grad=None) -> np.ndarray:
    """Per-centre baseline energies (n_centers,) = 1/2 sum over the centre's pairs of phi(r);
    with `grad` (P, 3), adds 1/2 phi'(r) r_hat of each pair to it in place."""
    with_grad = grad is not None
    g = grad if with_grad else np.zeros((1, 3))
    return _baseline_pairs(np.ascontiguousarray(baseline.coefficients, dtype=np.float64), float(baseline.cutoff),
                           np.ascontiguousarray(rij, dtype=np.float64), np.asarray(pair_i, dtype=np.int64),
                           np.asarray(ti, dtype=np.int64), np.asarray(tj, dtype=np.int64), int(n_centers), g,
                           with_grad)
