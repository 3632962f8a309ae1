"""Metropolis with analytic energies reproduces exact answers (tests that can fail)."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from scipy import integrate, stats

from nnmd_kernels import mc

from .mc_models import DoubleWell, RingLattice, blocking_error, kelvin

KT = 0.05  # eV


def test_translate_double_well_reproduces_quadrature():
    """Independent atoms in E = h((x/a)^2 - 1)^2 + k(y^2+z^2)/2: <x^2> by quadrature,
    <y^2 + z^2> = 2 kT / k exactly; the chain's means within 3 blocked standard errors."""
    well = DoubleWell(h=1.5 * KT, a=1.0, k=1.0)
    w = lambda x: np.exp(-well.h * ((x / well.a) ** 2 - 1) ** 2 / KT)  # noqa: E731
    x2_exact = integrate.quad(lambda x: x * x * w(x), -6, 6)[0] / integrate.quad(w, -6, 6)[0]
    n = 4
    cfg = mc.MCConfig(temperature=kelvin(KT), max_displacement=0.6)
    st = mc.init(np.zeros((n, 3)), [29] * n, None, False, cfg, well, seed=11)
    ws = mc.workspace_for(st, cfg, well)
    x2, r2 = [], []
    for _ in range(2500):
        st = mc.run(st, cfg, well, n, ws)  # one sweep
        x2.append(np.mean(st.positions[:, 0] ** 2))
        r2.append(np.mean(st.positions[:, 1] ** 2 + st.positions[:, 2] ** 2))
    x2, r2 = np.array(x2[200:]), np.array(r2[200:])
    for series, exact in ((x2, x2_exact), (r2, 2 * KT / well.k)):
        se = blocking_error(series)
        assert abs(series.mean() - exact) < 3 * se, (series.mean(), exact, se)
        assert se < 0.05 * exact  # the test has power: a 15% error would fail
    assert 0.2 < st.acceptance()["translate"] < 0.9


def _exact_distribution(model, numbers, kt):
    configs = sorted(set(permutations(numbers)))
    e = np.array([model.exact_energy(c) for c in configs])
    p = np.exp(-(e - e.min()) / kt)
    return configs, p / p.sum()


def _sample(model, numbers, cfg, n_samples, thin, seed):
    st = mc.init(*model.structure(numbers), cfg, model, seed=seed)
    ws = mc.workspace_for(st, cfg, model)
    st = mc.run(st, cfg, model, 50, ws)
    seen = []
    for _ in range(n_samples):
        st = mc.run(st, cfg, model, thin, ws)
        seen.append(tuple(int(z) for z in st.numbers))
        # the running energy stays the exact energy of the occupation
    assert st.energy == pytest.approx(model.exact_energy(seen[-1]), abs=1e-12)
    return seen, st


def _chi2(seen, configs, p):
    index = {c: k for k, c in enumerate(configs)}
    counts = np.bincount([index[c] for c in seen], minlength=len(configs))
    return stats.chisquare(counts, len(seen) * p).pvalue


# Energies of order kT: every occupation is visited often enough for a chi-square test.
RING = dict(species=[0, 29, 47], field=[0.0, 0.6 * KT, -0.4 * KT],
            coupling=[[0, 0, 0], [0, 0.0, 0.5 * KT], [0, 0.5 * KT, -0.3 * KT]])


def test_swap_moves_sample_the_exact_occupation_distribution():
    """Ising-like ring, 3 Cu + 3 Ag (20 occupations), swap moves only, at their own
    temperature (the default one is 4x lower): empirical vs exact Boltzmann by chi-square;
    the same samples are rejected against the distribution at 3 kT and at kT/4."""
    model = RingLattice(6, **RING)
    numbers = [29, 29, 29, 47, 47, 47]
    cfg = mc.MCConfig(temperature=kelvin(KT / 4), translate=0, swap=1,
                      move_temperatures={"swap": kelvin(KT)})
    seen, st = _sample(model, numbers, cfg, 600, 6, seed=4)
    configs, p = _exact_distribution(model, numbers, KT)
    assert _chi2(seen, configs, p) > 1e-3
    for wrong in (3 * KT, KT / 4):
        assert _chi2(seen, configs, _exact_distribution(model, numbers, wrong)[1]) < 1e-6
    assert 0.1 < st.acceptance()["swap"] < 0.95


@pytest.mark.parametrize("weights", [dict(vacancy=1.0), dict(swap=1.0, vacancy=1.0)])
def test_vacancy_moves_sample_the_exact_occupation_distribution(weights):
    """5 sites, 2 Cu + 1 Ag + 2 vacancies (30 occupations): vacancies carry no energy and are
    nobody's neighbour (the exact energy is written out without them)."""
    model = RingLattice(5, **RING)
    numbers = [29, 29, 47, 0, 0]
    cfg = mc.MCConfig(temperature=kelvin(KT), translate=0, **weights)
    seen, st = _sample(model, numbers, cfg, 800, 6, seed=9)
    configs, p = _exact_distribution(model, numbers, KT)
    assert _chi2(seen, configs, p) > 1e-3
    assert _chi2(seen, configs, _exact_distribution(model, numbers, 3 * KT)[1]) < 1e-6
