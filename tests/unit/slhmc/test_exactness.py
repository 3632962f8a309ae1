"""The chain samples the reference's distribution however poor the proposal potential.

Reference: an Einstein crystal (independent 3-D harmonic oscillators, spring constants
k_i), whose mean potential energy is exactly (3N/2) kT. Proposal "NNP": springs 0.3 k_i
with displaced centres, so the NVE trajectories are far from the reference dynamics.
NPT: an ideal gas (E_ref = 0) has V ~ Gamma(N + 1, kT/P), <V> = (N + 1) kT / P, which
separates the N (uniform in V) and N + 1 (random walk in ln V) acceptance factors.
The sampled means are compared with the exact ones within 3 standard errors, the error
estimated by blocking (Flyvbjerg & Petersen, J. Chem. Phys. 91, 461 (1989)).
"""

import numpy as np
import pytest

from nnmd_kernels.md.units import KB_EV_PER_K
from nnmd_kernels.slhmc import SLHMCConfig, init_chain, step

T = 300.0
KT = KB_EV_PER_K * T


def blocking_error(x) -> float:
    """Standard error of the mean of a correlated series: the plateau of block averages."""
    x = np.asarray(x, dtype=float)
    errs = []
    while len(x) >= 32:
        errs.append(np.std(x, ddof=1) / np.sqrt(len(x)))
        x = 0.5 * (x[0::2][: len(x) // 2] + x[1::2][: len(x) // 2])
    return float(max(errs))


def einstein(n=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(2.0, 8.0, size=(n, 3))
    k = rng.uniform(1.0, 4.0, size=n)  # eV/A^2

    def e_ref(x, cell):
        return float(0.5 * np.sum(k[:, None] * (x - centres) ** 2))

    shift = rng.normal(0.0, 0.15, size=(n, 3))  # A: the poor model's wrong centres

    def poor_force_fn(x, cell):
        d = x - centres - shift
        kk = 0.3 * k[:, None]
        return 0.5 * float(np.sum(kk * d * d)), -kk * d, np.zeros((3, 3))

    return centres, k, e_ref, poor_force_fn


@pytest.mark.parametrize("delayed", [False, True])
def test_einstein_crystal_mean_energy_is_exact(delayed):
    n = 4
    centres, k, e_ref, poor = einstein(n)
    cfg = SLHMCConfig(temperature=T, dt=2.0, n_md=10, n_md_min=3, n_md_max=40, n_md_jitter=0.5,
                      delayed_acceptance=delayed)
    masses = np.full(n, 10.0)
    s = init_chain(centres, np.full(n, 29), masses, 10.0 * np.eye(3), True,
                   e_ref(centres, None), cfg, seed=(7, int(delayed)))
    energies, accepted = [], 0
    for _ in range(4000):
        s, _, _, acc = step(s, cfg, poor, e_ref)
        energies.append(s.energy_ref)
        accepted += acc
    e = np.array(energies[500:])
    exact = 1.5 * n * KT
    err = blocking_error(e)
    assert 0.05 < accepted / 4000 < 0.98  # the test must exercise rejections
    assert abs(e.mean() - exact) < 3 * err, (e.mean(), exact, err)
    # and the test has power: the poor model's own canonical mean is 10/3 x off
    assert err < 0.1 * exact


@pytest.mark.parametrize("proposal, volume_step", [("lnV", 1.0), ("V", 150.0)])
@pytest.mark.parametrize("delayed", [False, True])
def test_ideal_gas_npt_volume_is_exact(proposal, volume_step, delayed):
    n = 1  # the N vs N + 1 factor then changes <V> by a factor 2 or 1.5
    p = 2.0 * KT / 100.0  # eV/A^3: <V> = (N + 1) kT / P = 100 A^3
    cfg = SLHMCConfig(temperature=T, dt=1.0, n_md=2, n_md_min=1, adapt=False, ensemble="npt", pressure=p,
                      volume_every=2, volume_proposal=proposal, volume_step=volume_step,
                      delayed_acceptance=delayed)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(0, 5, size=(n, 3))
    s0 = x0 / 5.0

    def zero(x, cell):
        return 0.0

    def poor(x, cell):
        # pulls V towards 50 A^3 (its pressure is wrong), plus springs in scaled
        # coordinates (a volume move leaves them unchanged)
        v = abs(np.linalg.det(cell))
        inv = np.linalg.inv(cell)
        d = x @ inv - s0  # (N, 3) fractional
        e = 0.5 * 5e-6 * (v - 50.0) ** 2 + 0.5 * float(np.sum(d * d))
        return e, -d @ inv.T, np.zeros((3, 3))

    s = init_chain(x0, np.full(n, 18), np.full(n, 40.0), 5.0 * np.eye(3), True, 0.0, cfg,
                   seed=(3, int(delayed)))
    vols = []
    for _ in range(25000):
        s, _, _, _ = step(s, cfg, poor, zero)
        vols.append(s.volume)
    v = np.array(vols[500:])
    exact = (n + 1) * KT / p
    err = blocking_error(v)
    assert abs(v.mean() - exact) < 3 * err, (v.mean(), exact, err)
    # a wrong Jacobian factor (N vs N + 1) would move <V> by 50%: the test can tell
    assert 3 * err < 0.25 * exact


# ------------------------------------------------------------------ flexible cells
#
# Closed-form references for the anisotropic and triclinic cell moves. The reference
# energy depends on the cell only, through the variables the move walks in, plus -P V so
# that the pressure term must be applied for the answer to come out:
#   anisotropic: E = sum_i a_i L_i - P V  ->  pi(L) ~ V^N exp(-beta sum a_i L_i) dL
#     V = c L1 L2 L3 at fixed angles, so the L_i are independent Gamma(N + 1, kT/a_i):
#     <L_i> = (N + 1) kT / a_i.
#   triclinic: E = sum_i (a_i L_ii - m kT ln L_ii) + (b/2) sum_{i>j} L_ij^2 - P V (L:
#     lower-triangular form, computed here by Cholesky of H H^T, independently of the
#     kernel's QR), so L_ii ~ Gamma(N + m + 1, kT/a_i) and L_ij ~ Normal(0, kT/b); the
#     m ln L term narrows the diagonal's law, so that a random walk mixes in a test's time.
# A wrong Jacobian (k ln V off by one) gives Gamma(shape -+ 1, .): the means move by
# 1/shape (50% anisotropic, 1/8 triclinic), far outside the error bars (checked both
# analytically and, for the triclinic walk, by running the wrong kernel).

def _lower(cell):
    return np.linalg.cholesky(np.asarray(cell) @ np.asarray(cell).T)


def _cell_chain(cell_moves, e_cell, cell0, steps, delayed, volume_step, seed, pressure):
    n = 1
    cfg = SLHMCConfig(temperature=T, dt=1.0, n_md=2, n_md_min=1, adapt=False, ensemble="npt",
                      pressure=pressure, volume_every=2, cell_moves=cell_moves,
                      volume_step=volume_step, delayed_acceptance=delayed)
    s0 = np.array([[0.3, 0.2, 0.1]])
    x0 = s0 @ cell0

    # the atoms: a spring in scaled coordinates, whose normalisation does not depend on
    # the cell (so the cell's marginal is the closed form above) and which keeps the
    # positions' law proper (an unconfined ideal-gas atom would wander off for ever)
    def e_ref(x, cell):
        d = x @ np.linalg.inv(cell) - s0
        return e_cell(cell) + 0.5 * float(np.sum(d * d))

    def poor(x, cell):  # half the cell energy; a softer spring with the wrong centre
        inv = np.linalg.inv(cell)
        d = x @ inv - s0 - 0.05
        return (0.5 * e_cell(cell) + 0.5 * 0.3 * float(np.sum(d * d)), -0.3 * d @ inv.T,
                np.zeros((3, 3)))

    s = init_chain(x0, np.full(n, 18), np.full(n, 40.0), cell0, True, e_ref(x0, cell0), cfg,
                   seed=seed)
    cells = []
    for _ in range(steps):
        s, _, _, _ = step(s, cfg, poor, e_ref)
        cells.append(s.cell.copy())
    return np.array(cells), n


ANISO_MEANS = np.array([4.0, 5.0, 6.0])  # A, the exact <L_i> chosen


def _aniso_energy(pressure, n=1):
    a = (n + 1) * KT / ANISO_MEANS  # eV/A

    def e_cell(cell):
        lengths = np.linalg.norm(cell, axis=1)
        return float(a @ lengths) - pressure * abs(np.linalg.det(cell))
    return e_cell


def _monoclinic(lengths, beta_deg=105.0):
    b = np.radians(beta_deg)
    return np.array([[lengths[0], 0, 0], [0, lengths[1], 0],
                     [lengths[2] * np.cos(b), 0, lengths[2] * np.sin(b)]])


@pytest.mark.parametrize("delayed", [False, True])
def test_anisotropic_cell_lengths_are_exact(delayed):
    p = 2.0 * KT / np.prod(ANISO_MEANS)  # eV/A^3: P V ~ 2 kT, cancelled by the -P V in E,
    # so a missing P dV term would show (a much larger P V makes the poor model's stage 1
    # screen out every move back from large cells: exact, but too slow to mix)
    cell0 = _monoclinic(ANISO_MEANS)
    cells, n = _cell_chain("anisotropic", _aniso_energy(p), cell0, 30000, delayed, 0.5,
                           (11, int(delayed)), p)
    lengths = np.linalg.norm(cells[1000:], axis=2)
    # angles are never changed by an anisotropic move
    cos_b = np.einsum("ij,ij->i", cells[1000:, 0], cells[1000:, 2]) / (
        lengths[:, 0] * lengths[:, 2])
    np.testing.assert_allclose(cos_b, np.cos(np.radians(105.0)), atol=1e-12)
    for i in range(3):
        err = blocking_error(lengths[:, i])
        assert abs(lengths[:, i].mean() - ANISO_MEANS[i]) < 3 * err, (i, lengths[:, i].mean(),
                                                                        err)
        # power: a Jacobian off by one ln V power gives N/(N+1) or (N+2)/(N+1) x the mean
        wrong = ANISO_MEANS[i] * n / (n + 1)
        assert abs(wrong - ANISO_MEANS[i]) > 6 * err


TRI_DIAG = np.array([5.0, 4.5, 6.0])  # exact <L_ii>, A
TRI_OFF_VAR = 1.0  # exact <L_ij^2>, A^2
TRI_M = 2  # the m of m kT ln L_ii: Gamma shape N + m + 1 = 4


def _tri_energy(pressure, n=1):
    a = (n + TRI_M + 1) * KT / TRI_DIAG
    b = KT / TRI_OFF_VAR

    def e_cell(cell):
        low = _lower(cell)
        off = low[np.tril_indices(3, -1)]
        diag = np.diag(low)
        return float(a @ diag) - TRI_M * KT * float(np.sum(np.log(diag))) + \
            0.5 * b * float(off @ off) - pressure * abs(np.linalg.det(cell))
    return e_cell


def _rotated(cell, seed=5):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return cell @ q.T


def _tri_stats(cells):
    lows = np.array([_lower(c) for c in cells])
    diag = lows[:, [0, 1, 2], [0, 1, 2]]
    off = lows[:, [1, 2, 2], [0, 0, 1]]
    return diag, off


@pytest.mark.parametrize("delayed", [False, True])
def test_triclinic_cell_is_exact(delayed):
    p = 2.0 * KT / np.prod(TRI_DIAG)
    cell0 = _rotated(np.array([[5.0, 0, 0], [0.3, 4.5, 0], [-0.2, 0.4, 6.0]]))
    cells, n = _cell_chain("triclinic", _tri_energy(p), cell0, 40000, delayed, 0.3,
                           (13, int(delayed)), p)
    cells = cells[1000:]
    # the orientation is kept: H H0^-1 ... the rotation of every cell equals the start's
    from nnmd_kernels.slhmc import lower_triangular_form

    rot0 = lower_triangular_form(cell0)[1]
    np.testing.assert_allclose(lower_triangular_form(cells[-1])[1], rot0, atol=1e-9)
    diag, off = _tri_stats(cells)
    for i in range(3):
        err = blocking_error(diag[:, i])
        assert abs(diag[:, i].mean() - TRI_DIAG[i]) < 3 * err, (i, diag[:, i].mean(), err)
        # power: Gamma(n + m, .) instead of Gamma(n + m + 1, .) moves the mean by 1/8
        assert TRI_DIAG[i] / (n + TRI_M + 1) > 6 * err
    for j in range(3):
        sq = off[:, j] ** 2
        err = blocking_error(sq)
        assert abs(sq.mean() - TRI_OFF_VAR) < 3 * err, (j, sq.mean(), err)
        assert err < 0.1 * TRI_OFF_VAR


def test_triclinic_with_a_wrong_jacobian_fails(monkeypatch):
    """The power check run for real: the anisotropic walk's N + 1 used for the triclinic
    walk (a plausible bug) moves <L_ii> by 50%, far outside the test's 3 sigma."""
    import nnmd_kernels.slhmc as k

    right = k.cell_jacobian_power
    monkeypatch.setattr(k, "cell_jacobian_power",
                        lambda n, moves="isotropic", prop="lnV": right(n, "anisotropic", prop))
    p = 2.0 * KT / np.prod(TRI_DIAG)
    cell0 = np.array([[5.0, 0, 0], [0.3, 4.5, 0], [-0.2, 0.4, 6.0]])
    cells, n = _cell_chain("triclinic", _tri_energy(p), cell0, 20000, False, 0.3, (17,), p)
    diag, _ = _tri_stats(cells[1000:])
    failed = [abs(diag[:, i].mean() - TRI_DIAG[i]) > 3 * blocking_error(diag[:, i])
              for i in range(3)]
    assert all(failed), (diag.mean(axis=0), TRI_DIAG)
    for i in range(3):  # it samples what the wrong measure gives: Gamma(N + m + 2, .)
        assert diag[:, i].mean() == pytest.approx(
            TRI_DIAG[i] * (n + TRI_M + 2) / (n + TRI_M + 1), rel=0.1)
