"""ProposalEngine: chains' proposals from threads, batched, each the chain's own."""

import threading

import numpy as np
import pytest
from ase.data import atomic_masses

from nnmd_kernels import slhmc
from nnmd_kernels.md.forces import potential_force_fn
from nnmd_kernels.potential import Potential
from services.md.proposals import ProposalEngine


@pytest.fixture(scope="module")
def pots():
    return {v: Potential.random(("Li", "O"), seed=v, hidden=(6,), n_radial=5, n_angular=3,
                                r_radial=4.0, r_angular=3.5) for v in (1, 2)}


def _chain(c):
    rng = np.random.default_rng(c)
    n = 6 + c % 5
    a = (n / 0.06) ** (1 / 3)
    grid = np.stack(np.meshgrid(*(np.arange(3),) * 3, indexing="ij"), -1).reshape(-1, 3)
    x = (grid[rng.permutation(27)[:n]] + 0.5) / 3 * a + rng.normal(0, 0.05, (n, 3))
    z = rng.choice([3, 8], size=n)
    conf = slhmc.SLHMCConfig(temperature=800.0, dt=0.5, n_md=2 + c % 7, n_md_min=1,
                             n_md_jitter=0.3, delayed_acceptance=c % 2 == 0)
    return slhmc.init_chain(x, z, atomic_masses[z], a * np.eye(3), True, 0.0, conf,
                            seed=(4, c)), conf


def test_many_threads_many_versions(pots):
    loads = []

    def model(v):
        loads.append(v)
        return pots[v]

    eng = ProposalEngine(model)
    chains = [_chain(c) for c in range(24)]
    results = {}

    def ask(c):  # each chain makes three steps, alternating model versions
        s, conf = chains[c]
        for k in range(3):
            v = 1 + (c + k) % 2
            p = eng.submit(f"c{c}", v, s, conf).result(timeout=60)
            ref = slhmc.screen(slhmc.propose(s, conf, potential_force_fn(pots[v], s.numbers,
                                                                          s.pbc)), conf)
            results[(c, k)] = (p, ref)
            s, _ = slhmc.finish(s, p, p.e_nnp_new, conf)

    threads = [threading.Thread(target=ask, args=(c,)) for c in range(len(chains))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    eng.close()
    assert len(results) == 3 * len(chains)
    for p, ref in results.values():
        assert p.n_md == ref.n_md and p.rng_state == ref.rng_state
        assert p.screened_out == ref.screened_out
        np.testing.assert_allclose(p.positions, ref.positions, rtol=0, atol=1e-9)
        assert abs(p.log_q - ref.log_q) <= 1e-8
    assert eng.proposals == 3 * len(chains)
    assert eng.evaluations < sum(p.n_md + 1 for p, _ in results.values())  # batched
    assert sorted(set(loads)) == [1, 2]


def test_errors_go_to_their_own_chain(pots):
    def model(v):
        if v == 9:
            raise FileNotFoundError("model v9 is not in the store")
        return pots[v]

    eng = ProposalEngine(model)
    s, conf = _chain(3)
    x = s.positions.copy()
    x[1] = x[0]
    bad = eng.submit("bad", 1, s.replace(positions=x), conf)
    missing = eng.submit("missing", 9, s, conf)
    good = eng.submit("good", 1, s, conf)
    with pytest.raises(ValueError, match="overlapping"):
        bad.result(timeout=60)
    with pytest.raises(FileNotFoundError, match="v9"):
        missing.result(timeout=60)
    assert good.result(timeout=60).kind == "hmc"
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit("late", 1, s, conf)
