"""Error bars of means of correlated series: block averaging.

Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989): average neighbouring pairs of a
series again and again; the naive standard error of the blocked series grows while the
blocks are shorter than the correlation time and levels off once they are longer. The
error is read at the plateau; here, conservatively, as the largest estimate over the
levels that still have at least `min_blocks` blocks (the last levels are noisy, so that
maximum tends to err on the large side, never the small one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockedMean:
    """mean +- error of a series; n: samples; n_eff: about how many independent ones
    (n x (naive error / blocked error)^2); converged: whether the estimate levelled off
    (the last two levels within their own statistical error)."""

    mean: float
    error: float
    n: int
    n_eff: float
    converged: bool


def blocked_mean(x, min_blocks: int = 16) -> BlockedMean:
    """The mean of series x and its standard error by block averaging.

    Fewer than 2 samples: error NaN. Fewer than 2 x min_blocks: the naive error, with
    converged False (too short to see the correlation time).
    """
    x = np.asarray(x, dtype=float).ravel()
    n = len(x)
    if n == 0:
        return BlockedMean(float("nan"), float("nan"), 0, 0.0, False)
    mean = float(x.mean())
    if n < 2:
        return BlockedMean(mean, float("nan"), n, float(n), False)
    naive = float(np.std(x, ddof=1) / np.sqrt(n))
    errs = []
    y = x
    while len(y) >= min_blocks:
        errs.append(float(np.std(y, ddof=1) / np.sqrt(len(y))) if len(y) > 1 else 0.0)
        m = len(y) // 2
        y = 0.5 * (y[0:2 * m:2] + y[1:2 * m:2])
    if len(errs) < 2:
        return BlockedMean(mean, naive, n, float(n), False)
    err = max(errs)
    # the plateau: the last level agrees with the one before within its own error
    # (the relative error of a standard error from m blocks is 1/sqrt(2 (m - 1)))
    m_last = n // 2 ** (len(errs) - 1)
    converged = abs(errs[-1] - errs[-2]) <= errs[-1] / np.sqrt(2.0 * max(m_last - 1, 1)) * 2
    n_eff = float(n * (naive / err) ** 2) if err > 0 else float(n)
    return BlockedMean(mean, err, n, n_eff, bool(converged))
