"""The Delta-NNP baseline: an LJ-like two-body potential (docs/source.md, "Delta-NNP").

For a pair of elements (a, b), with p in (12, 10, 8, 6) and coefficients
(A_12, A_10, A_8, A_6) = (A, B, C, D) in eV A^p:

    phi(r) = sum_p A_p [ r^-p - R^-p + p R^-(p+1) (r - R) ]      r < R, else 0

the "shifted-force" form, so phi(R) = phi'(R) = 0 (docs/sannp_format.md). The total
is E_C = 1/2 sum_i sum_j phi(r_ij) over the full neighbour list; each atom gets
half of each of its pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POWERS = np.array([12, 10, 8, 6], dtype=np.float64)


@dataclass(frozen=True)
class PairBaseline:
    """coefficients (n_species, n_species, 4): symmetric, eV A^p; cutoff R in Angstrom."""

    coefficients: np.ndarray
    cutoff: float

    def __post_init__(self):
        c = np.asarray(self.coefficients, dtype=np.float64)
        if c.ndim != 3 or c.shape[0] != c.shape[1] or c.shape[2] != 4:
            raise ValueError(f"baseline coefficients must have shape (ne, ne, 4), got {c.shape}")
        if not np.all(np.isfinite(c)):
            raise ValueError("baseline coefficients contain NaN or inf")
        if not np.allclose(c, np.swapaxes(c, 0, 1)):
            raise ValueError("baseline coefficients must be symmetric in the element pair")
        if not (np.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"baseline cutoff must be > 0 (got {self.cutoff})")
        object.__setattr__(self, "coefficients", c)
        object.__setattr__(self, "cutoff", float(self.cutoff))

    @classmethod
    def zeros(cls, n_species: int, cutoff: float) -> PairBaseline:
        return cls(np.zeros((n_species, n_species, 4)), cutoff)


def pair_terms(baseline: PairBaseline, d: np.ndarray, type_i: np.ndarray, type_j: np.ndarray):
    """phi(r) and dphi/dr for every pair, shapes (P,)."""
    R = baseline.cutoff
    A = baseline.coefficients[type_i, type_j]  # (P, 4)
    inside = d < R
    r = np.where(inside, d, R)[:, None]
    rp = _inverse_powers(r[:, 0])  # (P, 4); integer powers by multiplication, not pow()
    Rp = R ** (-POWERS)
    Rp1 = POWERS * R ** (-(POWERS + 1.0))
    phi = np.sum(A * (rp - Rp + Rp1 * (r - R)), axis=1)
    dphi = np.sum(A * (-POWERS * rp / r + Rp1), axis=1)
    return np.where(inside, phi, 0.0), np.where(inside, dphi, 0.0)


def baseline_pairs(baseline: PairBaseline, rij, pair_i, ti, tj, n_centers: int, grad=None) -> np.ndarray:
    """Per-centre energies (n_centers,) = 1/2 sum over the centre's pairs of phi(r); with `grad`
    (P, 3), adds 1/2 phi'(r) r_hat of each pair to it in place. The numpy reference of
    baseline_numba.baseline_pairs (same signature; Potential.compute_pairs picks one)."""
    d = np.linalg.norm(rij, axis=1)
    phi, dphi = pair_terms(baseline, d, ti, tj)
    if grad is not None:
        grad += (0.5 * dphi / d)[:, None] * rij
    return 0.5 * np.bincount(pair_i, weights=phi, minlength=n_centers)


def _inverse_powers(r: np.ndarray) -> np.ndarray:
    """[r^-12, r^-10, r^-8, r^-6] as (P, 4)."""
    i2 = 1.0 / (r * r)
    i6 = i2 * i2 * i2
    i8 = i6 * i2
    i10 = i8 * i2
    return np.stack([i10 * i2, i10, i8, i6], axis=1)


def design_matrix_row(d: np.ndarray, R: float) -> np.ndarray:
    """The four basis terms [r^-p - R^-p + p R^-(p+1)(r - R)] per pair, (P, 4); 0 beyond R.

    E_C is linear in the coefficients, so fitting the baseline is a linear least
    squares problem over these columns (used by the trainer)."""
    inside = d < R
    r = np.where(inside, d, R)[:, None]
    cols = r ** (-POWERS) - R ** (-POWERS) + POWERS * R ** (-(POWERS + 1.0)) * (r - R)
    return np.where(inside[:, None], cols, 0.0)
