"""ProposalBatch: many chains' proposals batched are each chain's own `propose`."""

import numpy as np
import pytest
from ase.data import atomic_masses

from nnmd_kernels import slhmc
from nnmd_kernels.md.forces import potential_force_fn
from nnmd_kernels.potential import Potential


@pytest.fixture(scope="module")
def pot():
    return Potential.random(("Li", "O"), seed=5, hidden=(8, 8), n_radial=6, n_angular=4,
                            r_radial=4.0, r_angular=3.5)


def _chains(pot, n_chains=6, seed=0, **cfg):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n_chains):
        n = 4 + 3 * c
        a = (n / 0.06) ** (1 / 3)
        k = int(np.ceil(n ** (1 / 3))) + 1
        grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
        x = (grid[rng.permutation(len(grid))[:n]] + 0.5) / k * a + rng.normal(0, 0.05, (n, 3))
        z = rng.choice([3, 8], size=n)
        conf = slhmc.SLHMCConfig(temperature=600.0 + 50 * c, dt=0.5, n_md=3 + 4 * c,
                                 n_md_min=1, n_md_jitter=0.5, **cfg)
        s = slhmc.init_chain(x, z, atomic_masses[z], a * np.eye(3), True, 0.0, conf,
                             seed=(9, c))
        out.append((s, conf))
    return out


def _alone(pot, s, conf):
    return slhmc.propose(s, conf, potential_force_fn(pot, s.numbers, s.pbc))


def _same(a, b):
    assert a.kind == b.kind and a.n_md == b.n_md
    assert a.rng_state == b.rng_state
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.cell, b.cell, rtol=0, atol=1e-12)
    for key in ("log_q", "e_nnp_old", "e_nnp_new", "kinetic_old", "kinetic_new"):
        x, y = getattr(a, key), getattr(b, key)
        assert (np.isnan(x) and np.isnan(y)) or abs(x - y) <= 1e-9, (key, x, y)


def test_batched_proposals_are_each_chains_own(pot):
    chains = _chains(pot)
    got = slhmc.propose_many([s for s, _ in chains], [c for _, c in chains], pot)
    assert len({p.n_md for p in got}) > 1  # trajectories of different lengths
    for (s, conf), p in zip(chains, got):
        _same(p, _alone(pot, s, conf))


def test_chains_joining_later_get_the_same_proposals(pot):
    chains = _chains(pot, seed=1)
    batch = slhmc.ProposalBatch(pot)
    out = {}
    for k, (s, conf) in enumerate(chains):  # one more chain joins at every MD step
        batch.add(k, s, conf)
        out.update(batch.advance())
    out.update(batch.run())
    assert sorted(out) == list(range(len(chains)))
    assert batch.evaluations < sum(p.n_md + 1 for p in out.values())
    for k, (s, conf) in enumerate(chains):
        _same(out[k], _alone(pot, s, conf))


def test_npt_volume_moves_with_delayed_acceptance(pot):
    chains = _chains(pot, seed=2, ensemble="npt", volume_every=2, delayed_acceptance=True,
                     cell_moves="anisotropic")
    # step 1 of each chain: (step + 1) % 2 == 0 -> a volume move for the odd-stepped ones
    states = [s.replace(step=k % 2) for k, (s, _) in enumerate(chains)]
    got = slhmc.propose_many(states, [c for _, c in chains], pot)
    assert {p.kind for p in got} == {"hmc", "volume"}
    for s, (_, conf), p in zip(states, chains, got):
        ref = _alone(pot, s, conf)
        _same(p, ref)
        _same(slhmc.screen(p, conf), slhmc.screen(ref, conf))


def test_a_failing_chain_fails_alone(pot):
    chains = _chains(pot, seed=3)
    s, conf = chains[2]
    x = s.positions.copy()
    x[1] = x[0] + 0.01
    bad = s.replace(positions=x)
    states = [c[0] for c in chains]
    states[2] = bad
    got = slhmc.propose_many(states, [c for _, c in chains], pot)
    assert isinstance(got[2], ValueError) and "overlapping" in str(got[2])
    with pytest.raises(ValueError, match="overlapping"):
        _alone(pot, bad, conf)
    for k in (0, 1, 3):
        _same(got[k], _alone(pot, *chains[k]))
