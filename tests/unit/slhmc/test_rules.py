"""Acceptance rules, state round trips and configuration checks of nnmd_kernels.slhmc."""

import itertools
import math

import numpy as np
import pytest

from nnmd_kernels.md.units import KB_EV_PER_K
from nnmd_kernels.slhmc import (
    ChainState,
    SLHMCConfig,
    accept,
    adapt_n_md,
    delayed_log_acceptance,
    finish,
    hmc_log_acceptance,
    init_chain,
    propose,
    volume_log_acceptance,
)


def test_delayed_acceptance_detailed_balance_on_a_discrete_chain():
    """Five states, symmetric proposal, arbitrary E_ref and a poor E_nnp: the two-stage
    kernel satisfies pi_i P_ij = pi_j P_ji for pi ~ exp(-beta E_ref), and pi is its
    stationary law; a single-stage kernel with the NNP alone is not."""
    rng = np.random.default_rng(0)
    beta = 2.0
    e_ref = rng.normal(size=5)
    e_nnp = e_ref + rng.normal(scale=1.0, size=5)
    q = 1.0 / 4.0  # propose any other state uniformly
    P = np.zeros((5, 5))
    for i, j in itertools.permutations(range(5), 2):
        log_a1, log_a2 = delayed_log_acceptance(-beta * (e_ref[j] - e_ref[i]),
                                                -beta * (e_nnp[j] - e_nnp[i]))
        P[i, j] = q * math.exp(log_a1) * math.exp(log_a2)
    P[np.diag_indices(5)] = 1.0 - P.sum(axis=1)
    pi = np.exp(-beta * e_ref)
    pi /= pi.sum()
    flux = pi[:, None] * P
    np.testing.assert_allclose(flux, flux.T, atol=1e-14)
    np.testing.assert_allclose(pi @ P, pi, atol=1e-14)
    P1 = np.array([[q * min(1, math.exp(-beta * (e_nnp[j] - e_nnp[i]))) if i != j else 0
                    for j in range(5)] for i in range(5)])
    P1[np.diag_indices(5)] = 1.0 - P1.sum(axis=1)
    assert np.abs(pi @ P1 - pi).max() > 1e-3


@pytest.mark.parametrize("proposal", ["lnV", "V"])
def test_volume_rule_balances_its_proposal_density(proposal):
    """pi(V) g(V -> V') a(V, V') = pi(V') g(V' -> V) a(V', V) with pi ~ V^N e^{-beta(E + PV)}
    and g the proposal density in V: 1/(2d) for uniform steps, 1/(2d V') for ln V steps."""
    rng = np.random.default_rng(1)
    n, beta, p = 7, 30.0, 0.01

    def e(v):
        return 0.3 * math.sin(v / 10.0)

    def log_pi(v):
        return n * math.log(v) - beta * (e(v) + p * v)

    def log_g(v_from, v_to):
        return -math.log(v_to) if proposal == "lnV" else 0.0

    for _ in range(50):
        v, w = rng.uniform(50, 150, size=2)
        a_vw = min(0.0, volume_log_acceptance(e(v), e(w), v, w, n, p, beta, proposal))
        a_wv = min(0.0, volume_log_acceptance(e(w), e(v), w, v, n, p, beta, proposal))
        assert log_pi(v) + log_g(v, w) + a_vw == pytest.approx(log_pi(w) + log_g(w, v) + a_wv)


def test_hmc_rule_and_metropolis():
    assert hmc_log_acceptance(1.0, 0.5, 0.2, 0.3, 2.0) == pytest.approx(-2.0 * (0.8 - 1.2))
    rng = np.random.default_rng(0)
    assert accept(0.0, rng) and accept(3.0, rng)
    assert not accept(-np.inf, rng) and not accept(np.nan, rng)
    hits = sum(accept(math.log(0.3), rng) for _ in range(20000))
    assert abs(hits / 20000 - 0.3) < 0.02


def test_adaptation_directions_and_bounds():
    cfg = SLHMCConfig(temperature=300, n_md=20, n_md_min=10, n_md_max=40)
    assert adapt_n_md(20, 0.20, cfg) == 30  # up at >= 0.20
    assert adapt_n_md(30, 0.9, cfg) == 40  # capped
    assert adapt_n_md(20, 0.05, cfg) == 13  # down at <= 0.05
    assert adapt_n_md(11, 0.0, cfg) == 10  # floored
    assert adapt_n_md(20, 0.1, cfg) == 20


def harmonic(x, cell):
    return 0.5 * float(np.sum(x * x)), -x, np.zeros((3, 3))


def test_hmc_proposal_is_reversible_and_replayable():
    cfg = SLHMCConfig(temperature=300, dt=0.5, n_md=10)
    s = init_chain(np.random.default_rng(0).normal(size=(3, 3)), [29] * 3, [63.5] * 3,
                   10 * np.eye(3), True, 1.0, cfg, seed=5)
    a, b = propose(s, cfg, harmonic), propose(s, cfg, harmonic)
    np.testing.assert_array_equal(a.positions, b.positions)  # same stream, same proposal
    # reversibility of the NVE map: integrate back from the end with flipped momenta
    from nnmd_kernels.md import init, nve

    rng = np.random.default_rng()
    rng.bit_generator.state = s.rng_state
    from nnmd_kernels.md.state import maxwell_boltzmann

    v0 = maxwell_boltzmann(s.masses, 300, rng, zero_momentum=False)
    _, step_fn = nve(harmonic, 0.5)
    st = init(harmonic, s.positions, s.masses, s.numbers, s.cell, velocities=v0)
    for _ in range(10):
        st = step_fn(st)
    np.testing.assert_allclose(st.positions, a.positions, atol=1e-12)
    back = init(harmonic, st.positions, s.masses, s.numbers, s.cell, velocities=-st.velocities)
    for _ in range(10):
        back = step_fn(back)
    np.testing.assert_allclose(back.positions, s.positions, atol=1e-10)
    assert a.log_q == pytest.approx(-cfg.beta * (a.kinetic_new - a.kinetic_old))


def test_finish_counts_and_state_round_trip():
    cfg = SLHMCConfig(temperature=300, n_md=10, adapt_window=2)
    s = init_chain(np.zeros((2, 3)) + [[0, 0, 0], [1, 1, 1]], [29, 29], [63.5, 63.5],
                   5 * np.eye(3), True, 0.0, cfg, seed=1)
    p = propose(s, cfg, harmonic)
    s1, acc = finish(s, p, None, cfg)  # failed reference
    assert not acc and s1.failed == 1 and s1.step == 1 and s1.hmc_tried == 1
    np.testing.assert_array_equal(s1.positions, s.positions)
    p = propose(s1, cfg, harmonic)
    s2, acc = finish(s1, p, -10.0, cfg)  # much lower energy: accepted
    assert acc and s2.energy_ref == -10.0 and s2.hmc_accepted == 1
    assert s2.window_tried == 0 and s2.n_md == 15  # window of 2 with rate 0.5 -> up
    import json

    back = ChainState.from_dict(json.loads(json.dumps(s2.to_dict())))
    np.testing.assert_array_equal(back.positions, s2.positions)
    assert back.rng_state == s2.rng_state and back.n_md == 15 and back.step == 2
    assert back.to_dict() == s2.to_dict()


@pytest.mark.parametrize("kw, word", [
    ({"temperature": 0}, "temperature"), ({"temperature": 300, "dt": -1}, "dt"),
    ({"temperature": 300, "n_md": 5}, "n_md"), ({"temperature": 300, "ensemble": "nve"}, "ensemble"),
    ({"temperature": 300, "ensemble": "npt", "volume_every": 1}, "volume_every"),
    ({"temperature": 300, "volume_proposal": "logV"}, "volume_proposal"),
])
def test_bad_config_names_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        SLHMCConfig(**kw)


def test_beta_units():
    assert SLHMCConfig(temperature=1000).beta == pytest.approx(1 / (KB_EV_PER_K * 1000))


def test_n_md_adapts_in_the_burn_in_only():
    """A full adaptation window with a high acceptance rate lengthens n in the burn-in,
    and changes nothing in production (the kernel is frozen)."""
    from nnmd_kernels.slhmc import Proposal, phase

    cfg = SLHMCConfig(temperature=300.0, n_md=20, n_md_min=5, n_md_max=100, adapt_window=2,
                      burn_in=4)
    s = init_chain(np.zeros((1, 3)), [1], [1.0], 5 * np.eye(3), True, 0.0, cfg, seed=1)

    def good_move(state):
        return Proposal("hmc", state.positions, state.cell, 0.0, 0.0, 0.0, state.n_md,
                        state.rng_state, beta=cfg.beta)

    seen = []
    for _ in range(8):
        seen.append((phase(s, cfg), s.n_md))
        s, acc = finish(s, good_move(s), 0.0, cfg)
        assert acc
    assert [p for p, _ in seen] == ["burn_in"] * 4 + ["production"] * 4
    assert [n for _, n in seen] == [20, 20, 30, 30, 45, 45, 45, 45]
    assert s.n_md == 45 and s.accepted_step == 8
