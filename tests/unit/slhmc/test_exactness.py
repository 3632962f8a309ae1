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
