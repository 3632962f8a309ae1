"""Mean-squared displacement, diffusion coefficient and Nernst-Einstein conductivity.

Positions in Angstrom, cells as rows of lattice vectors (3, 3) in Angstrom, times in ps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# 1 A^2/ps = 1e-16 cm^2 / 1e-12 s
A2_PER_PS_TO_CM2_PER_S = 1.0e-4
ELEMENTARY_CHARGE_C = 1.602176634e-19
BOLTZMANN_J_PER_K = 1.380649e-23
A3_TO_CM3 = 1.0e-24


def unwrap(positions, cells, pbc=(True, True, True)):
    """Continuous (unwrapped) coordinates from wrapped frames.

    Each frame-to-frame displacement is replaced by its minimum image in the cell of the
    later frame (triclinic cells are fine), then the displacements are summed. This is
    exact as long as no atom moves more than half a cell width between two frames.

    positions: (T, N, 3) A; cells: (T, 3, 3) or (3, 3) A, rows = lattice vectors;
    pbc: (3,) bool. Returns (T, N, 3) A, equal to positions[0] at t = 0.
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (frames, atoms, 3), got {x.shape}")
    h = np.asarray(cells, dtype=float)
    if h.shape == (3, 3):
        h = np.broadcast_to(h, (x.shape[0], 3, 3))
    if h.shape != (x.shape[0], 3, 3):
        raise ValueError(f"cells must have shape (3, 3) or ({x.shape[0]}, 3, 3), got {h.shape}")
    periodic = np.asarray(pbc, dtype=bool)
    d = np.diff(x, axis=0)  # (T-1, N, 3)
    if periodic.any():
        h_inv = np.linalg.inv(h[1:])  # (T-1, 3, 3)
        s = np.einsum("tia,tab->tib", d, h_inv)  # fractional displacements
        s[..., periodic] -= np.round(s[..., periodic])
        d = np.einsum("tib,tba->tia", s, h[1:])
    out = np.empty_like(x)
    out[0] = x[0]
    np.cumsum(d, axis=0, out=out[1:])
    out[1:] += x[0]
    return out


def remove_drift(unwrapped, masses):
    """Subtract the displacement of the centre of mass of the whole system.

    unwrapped: (T, N, 3) A; masses: (N,) amu. Returns (T, N, 3) A with a fixed centre of
    mass, so that a drifting box does not appear as diffusion.
    """
    x = np.asarray(unwrapped, dtype=float)
    m = np.asarray(masses, dtype=float)
    if m.shape != (x.shape[1],):
        raise ValueError(f"masses must have shape ({x.shape[1]},), got {m.shape}")
    com = np.einsum("tia,i->ta", x, m) / m.sum()  # (T, 3)
    return x - (com - com[0])[:, None, :]


def msd(unwrapped, max_lag=None):
    """Mean-squared displacement averaged over atoms and over every time origin.

    MSD(m) = < |x(t + m) - x(t)|^2 >_{t, i}, computed for all origins at once with the
    FFT algorithm (Calandrini et al., Collection SFN 12, 201 (2011)): O(T log T) per atom.

    unwrapped: (T, N, 3) A, already unwrapped (and drift-corrected if wanted).
    Returns (max_lag + 1,) A^2, lag in frames; max_lag defaults to T - 1.
    """
    x = np.asarray(unwrapped, dtype=float)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (frames, atoms, 3), got {x.shape}")
    n_frames = x.shape[0]
    if n_frames < 2:
        raise ValueError("the trajectory needs at least 2 frames for an MSD")
    if x.shape[1] == 0:
        raise ValueError("no atoms selected for the MSD")
    if max_lag is None:
        max_lag = n_frames - 1
    if not 0 < max_lag < n_frames:
        raise ValueError(f"max_lag must be in 1..{n_frames - 1}, got {max_lag}")
    counts = n_frames - np.arange(n_frames)  # (T,) number of origins per lag
    # S2(m) = sum_k x_k . x_{k+m} / (T - m), by zero-padded FFT autocorrelation
    f = np.fft.rfft(x, n=2 * n_frames, axis=0)
    acf = np.fft.irfft(f * f.conj(), axis=0)[:n_frames].sum(axis=2)  # (T, N)
    s2 = acf / counts[:, None]
    # S1(m) = sum_k (x_k^2 + x_{k+m}^2) / (T - m), by the running recursion
    d = np.einsum("tia,tia->ti", x, x)  # (T, N)
    d_pad = np.concatenate([d, np.zeros((1, d.shape[1]))])
    q = 2.0 * d.sum(axis=0)
    s1 = np.empty_like(d)
    for m in range(n_frames):
        q = q - d_pad[m - 1] - d_pad[n_frames - m]
        s1[m] = q / (n_frames - m)
    result = (s1 - 2.0 * s2).mean(axis=1)
    result[0] = 0.0
    return result[: max_lag + 1]


@dataclass(frozen=True)
class DiffusionFit:
    """A linear fit MSD(t) = slope * t + intercept over a window, with D = slope / (2 dim)."""

    diffusion_a2_per_ps: float
    diffusion_cm2_per_s: float
    slope_a2_per_ps: float
    intercept_a2: float
    window_ps: tuple[float, float]
    # standard error of the slope from the fit residuals; MSD points are correlated, so
    # this underestimates the true statistical error (use independent runs for that)
    stderr_cm2_per_s: float
    dim: int

    def as_dict(self):
        return {
            "D_A2_per_ps": self.diffusion_a2_per_ps,
            "D_cm2_per_s": self.diffusion_cm2_per_s,
            "slope_A2_per_ps": self.slope_a2_per_ps,
            "intercept_A2": self.intercept_a2,
            "window_ps": list(self.window_ps),
            "D_fit_stderr_cm2_per_s": self.stderr_cm2_per_s,
            "dim": self.dim,
        }


def diffusion_coefficient(times_ps, msd_a2, window=None, dim=3):
    """Einstein relation: D = slope / (2 dim) of MSD(t) fitted linearly over a window.

    times_ps: (L,) lag times in ps; msd_a2: (L,) A^2; window: (t0, t1) ps, default the
    middle of the data, (0.1, 0.5) x the longest lag (skips the ballistic start and the
    noisy tail with few origins). Returns a DiffusionFit (D in A^2/ps and cm^2/s).
    """
    t = np.asarray(times_ps, dtype=float)
    y = np.asarray(msd_a2, dtype=float)
    if t.shape != y.shape or t.ndim != 1:
        raise ValueError(f"times and msd must be 1-D of equal length, got {t.shape} and {y.shape}")
    if window is None:
        window = (0.1 * t[-1], 0.5 * t[-1])
    t0, t1 = float(window[0]), float(window[1])
    if not t1 > t0:
        raise ValueError(f"window must be (t0, t1) with t1 > t0 in ps, got {window}")
    sel = (t >= t0) & (t <= t1)
    if sel.sum() < 3:
        raise ValueError(
            f"window {window} ps holds {int(sel.sum())} MSD points; widen it (data span "
            f"{t[0]:g}..{t[-1]:g} ps) or write frames more often"
        )
    a = np.stack([t[sel], np.ones(sel.sum())], axis=1)
    coef, *_ = np.linalg.lstsq(a, y[sel], rcond=None)
    slope, intercept = float(coef[0]), float(coef[1])
    resid = y[sel] - a @ coef
    n = int(sel.sum())
    sxx = float(((t[sel] - t[sel].mean()) ** 2).sum())
    stderr_slope = float(np.sqrt((resid @ resid) / max(n - 2, 1) / sxx)) if sxx > 0 else 0.0
    d = slope / (2.0 * dim)
    return DiffusionFit(
        diffusion_a2_per_ps=d,
        diffusion_cm2_per_s=d * A2_PER_PS_TO_CM2_PER_S,
        slope_a2_per_ps=slope,
        intercept_a2=intercept,
        window_ps=(t0, t1),
        stderr_cm2_per_s=stderr_slope / (2.0 * dim) * A2_PER_PS_TO_CM2_PER_S,
        dim=dim,
    )


def nernst_einstein_conductivity(
    diffusion_cm2_per_s, n_ions, volume_a3, temperature_k, charge=1.0, haven_ratio=1.0
):
    """Nernst-Einstein ionic conductivity sigma = n q^2 e^2 D / (kB T H_R), in S/cm.

    n = n_ions / volume is the number density of the mobile species, q its charge in units
    of e. Assumptions: the tracer D stands for the charge diffusion, i.e. ion-ion cross
    correlations are neglected (Haven ratio H_R = 1 unless given) and only this species
    carries current.
    """
    if temperature_k <= 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature_k}")
    if volume_a3 <= 0:
        raise ValueError(f"volume must be > 0 A^3, got {volume_a3}")
    if haven_ratio <= 0:
        raise ValueError(f"haven_ratio must be > 0, got {haven_ratio}")
    n_per_cm3 = n_ions / (volume_a3 * A3_TO_CM3)
    q = charge * ELEMENTARY_CHARGE_C
    return n_per_cm3 * q * q * diffusion_cm2_per_s / (
        BOLTZMANN_J_PER_K * temperature_k * haven_ratio
    )


# A species whose diffusive MSD over the whole run, 6 D t, stays below this is "not
# diffusive": its ions have not made one hop each on average (ionic hops are ~2-4 A; in
# LLZO 1.6-2.5 A between Li sites, so 5 A^2 is about one hop; 1 A^2, the earlier floor,
# let 3 ps runs with a few hops pass as diffusive).
NOT_DIFFUSIVE_MSD_A2 = 5.0


@dataclass(frozen=True)
class BlockDiffusion:
    """D with a block-averaging error.

    The trajectory is cut into n_blocks contiguous blocks of equal length; in each block
    the MSD (every time origin inside the block) is fitted over the same lag window
    (diffusion_coefficient), giving D_b. D is the mean of the D_b and its error the
    standard error of that mean (analysis.blocking.blocked_mean; blocks longer than the
    fit window are close to independent). diffusive: D > 2 x error and the diffusive
    MSD over the run, 2 dim D duration, above NOT_DIFFUSIVE_MSD_A2 (5 A^2).
    """

    diffusion_a2_per_ps: float
    error_a2_per_ps: float
    block_values_a2_per_ps: tuple[float, ...]
    window_ps: tuple[float, float]
    block_duration_ps: float
    duration_ps: float
    dim: int
    diffusive: bool
    note: str

    @property
    def diffusion_cm2_per_s(self) -> float:
        return self.diffusion_a2_per_ps * A2_PER_PS_TO_CM2_PER_S

    @property
    def error_cm2_per_s(self) -> float:
        return self.error_a2_per_ps * A2_PER_PS_TO_CM2_PER_S

    def as_dict(self):
        return {
            "D_A2_per_ps": self.diffusion_a2_per_ps,
            "D_cm2_per_s": self.diffusion_cm2_per_s,
            "D_err_A2_per_ps": self.error_a2_per_ps,
            "D_err_cm2_per_s": self.error_cm2_per_s,
            "D_method": f"block average: mean and standard error of D fitted in each of "
                        f"{len(self.block_values_a2_per_ps)} contiguous blocks of "
                        f"{self.block_duration_ps:g} ps (lag window {self.window_ps[0]:g}-"
                        f"{self.window_ps[1]:g} ps)",
            "D_blocks_A2_per_ps": list(self.block_values_a2_per_ps),
            "n_blocks": len(self.block_values_a2_per_ps),
            "block_duration_ps": self.block_duration_ps,
            "window_ps": list(self.window_ps),
            "diffusive": self.diffusive,
            "diffusive_note": self.note,
        }


def block_diffusion(times_ps, unwrapped, n_blocks: int = 5, window=None, dim: int = 3,
                    min_msd_a2: float = NOT_DIFFUSIVE_MSD_A2) -> BlockDiffusion:
    """D and its error by block averaging (see BlockDiffusion).

    times_ps: (T,) evenly spaced frame times; unwrapped: (T, N, 3) A of the species
    (unwrapped, drift removed). window: (t0, t1) lag window in ps, default (0.1, 0.5) x
    the block duration; it must fit inside a block (ValueError naming --blocks).
    """
    from nnmd_kernels.analysis.blocking import blocked_mean

    t = np.asarray(times_ps, dtype=float)
    x = np.asarray(unwrapped, dtype=float)
    n_blocks = int(n_blocks)
    if n_blocks < 2:
        raise ValueError(f"--blocks must be >= 2 for an error bar, got {n_blocks}")
    length = len(t) // n_blocks
    if length < 4:
        raise ValueError(f"{len(t)} frames make {n_blocks} blocks of {length} frames; an "
                         "MSD needs at least 4 per block: use fewer --blocks or a longer run")
    block_duration = float(t[length - 1] - t[0])
    if window is None:
        window = (0.1 * block_duration, 0.5 * block_duration)
    t0, t1 = float(window[0]), float(window[1])
    if t1 > block_duration:
        raise ValueError(
            f"the fit window {t0:g}-{t1:g} ps is longer than a block ({block_duration:g} ps, "
            f"{n_blocks} blocks): use a window ending below {block_duration:g} ps or fewer "
            f"--blocks")
    lags = t[:length] - t[0]
    values = []
    for b in range(n_blocks):
        seg = x[b * length:(b + 1) * length]
        fit = diffusion_coefficient(lags, msd(seg), (t0, t1), dim)
        values.append(fit.diffusion_a2_per_ps)
    stats = blocked_mean(values)
    d, err = float(stats.mean), float(stats.error)
    duration = float(t[-1] - t[0])
    diffusive, note = _verdict(d, err, duration, dim, min_msd_a2, "the")
    return BlockDiffusion(d, err, tuple(float(v) for v in values), (t0, t1), block_duration,
                          duration, dim, diffusive, note)


def _verdict(d: float, err: float, duration: float, dim: int, min_msd_a2: float,
             article: str) -> tuple[bool, str]:
    """Diffusive when D > 2 x its error and the diffusive MSD over `duration` (one run),
    2 dim D duration, is above min_msd_a2; the note says which test failed."""
    floor = min_msd_a2 / (2.0 * dim * duration) if duration > 0 else np.inf
    reasons = []
    if not d > 2.0 * err:
        reasons.append(f"D = {d:.3g} +- {err:.3g} A^2/ps is not above 2 x its error")
    if not d > floor:
        reasons.append(f"D = {d:.3g} A^2/ps is below {floor:.3g} A^2/ps, a diffusive MSD "
                       f"of {min_msd_a2:g} A^2 over {article} {duration:g} ps run")
    return not reasons, ("not diffusive: " + "; ".join(reasons)) if reasons else "diffusive"


def pooled_diffusion(runs, min_msd_a2: float = NOT_DIFFUSIVE_MSD_A2) -> BlockDiffusion:
    """D of independent runs of one system at one temperature (different velocity seeds),
    each already block-averaged with the same lag window (block_diffusion).

    D is the mean of the runs' D (runs of equal length count equally; otherwise weighted by
    duration). Its error is the larger of two estimates: the standard error of the runs'
    D about that mean (the scatter that one long run's blocks can hide when the ions'
    configuration persists longer than a block), and the runs' own block errors combined
    (which is what is left when two or three runs agree by chance). Verdict as
    block_diffusion's, with the 5 A^2 floor over one run's duration (the shortest).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("pooled_diffusion needs at least one run")
    if len(runs) == 1:
        return runs[0]
    windows = {tuple(round(v, 9) for v in r.window_ps) for r in runs}
    if len(windows) > 1 or len({r.dim for r in runs}) > 1:
        raise ValueError(f"runs fitted over different lag windows {sorted(windows)}: analyse "
                         "them with the same --window and --blocks")
    w = np.array([r.duration_ps for r in runs], dtype=float)
    w = w / w.sum()
    d_r = np.array([r.diffusion_a2_per_ps for r in runs])
    e_r = np.array([r.error_a2_per_ps for r in runs])
    d = float(w @ d_r)
    n = len(runs)
    between = float(np.sqrt((w * (d_r - d) ** 2).sum() * n / (n - 1) / n))
    within = float(np.sqrt((w ** 2 * e_r ** 2).sum()))
    err = max(between, within)
    duration = min(r.duration_ps for r in runs)
    dim = runs[0].dim
    diffusive, note = _verdict(d, err, duration, dim, min_msd_a2, "a")
    values = tuple(v for r in runs for v in r.block_values_a2_per_ps)
    return PooledDiffusion(d, err, values, runs[0].window_ps, runs[0].block_duration_ps,
                           float(sum(r.duration_ps for r in runs)), dim, diffusive, note,
                           tuple(float(v) for v in d_r), tuple(float(v) for v in e_r),
                           between, within)


@dataclass(frozen=True)
class PooledDiffusion(BlockDiffusion):
    """BlockDiffusion of several independent runs (pooled_diffusion): duration_ps is their
    total; run_values / run_errors are each run's D and block error (A^2/ps)."""

    run_values_a2_per_ps: tuple[float, ...] = ()
    run_errors_a2_per_ps: tuple[float, ...] = ()
    between_error_a2_per_ps: float = float("nan")
    within_error_a2_per_ps: float = float("nan")

    def as_dict(self):
        k = len(self.run_values_a2_per_ps)
        out = super().as_dict()
        out.update(
            D_method=(f"{k} independent runs, each a block average ({len(self.block_values_a2_per_ps) // k} "
                      f"blocks of {self.block_duration_ps:g} ps, lag window {self.window_ps[0]:g}-"
                      f"{self.window_ps[1]:g} ps): D their mean; error the larger of the "
                      "runs' scatter (standard error of the mean) and their block errors "
                      "combined"),
            n_runs=k,
            D_runs_A2_per_ps=list(self.run_values_a2_per_ps),
            D_runs_err_A2_per_ps=list(self.run_errors_a2_per_ps),
            D_err_between_runs_A2_per_ps=self.between_error_a2_per_ps,
            D_err_within_runs_A2_per_ps=self.within_error_a2_per_ps,
        )
        return out
