"""Local (O(neighbours)) energy updates == full recomputation, for every move kind."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from nnmd_kernels import Potential, mc

TOL = 1e-10  # eV


@pytest.fixture(scope="module")
def pot():
    return Potential.random(["Cu", "Ag", "Au"], seed=0, hidden=(8, 8), n_radial=6, n_angular=4,
                            r_radial=4.5, r_angular=4.0)


def lattice(cell, k, rng, vacancy_fraction=0.0, species=(29, 47, 79)):
    """A jittered k^3 grid in `cell` with random species (and X sites)."""
    g = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3) / k
    frac = g + rng.normal(0, 0.02, g.shape)
    numbers = rng.choice(species, len(g))
    numbers[rng.random(len(g)) < vacancy_fraction] = 0
    if vacancy_fraction > 0 and not (numbers == 0).any():
        numbers[0] = 0  # at least one X site, so that vacancy moves exist
    numbers[-1] = species[0] if numbers[-1] == 0 else numbers[-1]
    return frac @ cell, numbers


CELLS = {
    "cubic": (np.eye(3) * 10.4, 4, True),
    "triclinic": (np.array([[10.0, 0, 0], [2.5, 9.5, 0.0], [-1.5, 2.0, 9.8]]), 4, True),
    # Rc = 4.5 A is more than half of every height: atoms see several images of one another.
    "small": (np.array([[5.4, 0, 0], [1.0, 5.0, 0.0], [0.5, 0.7, 5.2]]), 2, True),
    "slab": (np.diag([10.4, 10.4, 20.0]), 4, (True, True, False)),
}


def full(pot, st):
    real = st.numbers != 0
    return pot.compute(st.positions[real], st.numbers[real], st.cell, st.pbc, forces=False)


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("geometry", sorted(CELLS))
@pytest.mark.parametrize("move", mc.MOVES)
def test_local_delta_equals_full_recomputation(pot, geometry, move, incremental):
    cell, k, pbc = CELLS[geometry]
    # a fixed seed per case (str hashes change from run to run: PYTHONHASHSEED)
    rng = np.random.default_rng(zlib.crc32(f"{geometry}-{move}".encode()))
    pos, numbers = lattice(cell, k, rng, vacancy_fraction=0.2 if move == "vacancy" else 0.0)
    weights = {m: float(m == move) for m in mc.MOVES}
    cfg = mc.MCConfig(temperature=2e4, max_displacement=0.6, **weights)
    energy = mc.NNPEnergy(pot, incremental=incremental)
    st = mc.init(pos, numbers, cell, pbc, cfg, energy, seed=1)
    ref = full(pot, st)
    assert abs(st.energy - ref.energy) < TOL
    ws = mc.workspace_for(st, cfg, energy)
    n_acc = 0
    for _ in range(15):
        new = mc.step(st, cfg, energy, ws)
        ref_new = full(pot, new)
        # dE of the local update against the difference of two full evaluations
        assert abs((new.energy - st.energy) - (ref_new.energy - ref.energy)) < TOL
        real = new.numbers != 0
        np.testing.assert_allclose(new.energies[real], ref_new.energies, rtol=0, atol=TOL)
        assert np.all(new.energies[~real] == 0)
        n_acc += new.accepted[move] > st.accepted[move]
        st, ref = new, ref_new
    assert st.tried[move] == 15
    assert n_acc >= 4  # the comparison covered accepted moves, not only rejections
    if move != "translate":  # composition is conserved
        assert sorted(st.numbers) == sorted(numbers)


def test_local_cost_is_flat_in_system_size(pot):
    """The affected region does not grow with N: count the centres a move re-evaluates
    (the generic path, incremental=False; the incremental engine: test_mc_incremental.py)."""
    counted = []

    class Counting(mc.NNPEnergy):
        def energies(self, numbers_c, *rest):
            counted.append(len(numbers_c))
            return super().energies(numbers_c, *rest)

    sizes = {}
    for k in (4, 8):
        rng = np.random.default_rng(0)
        pos, numbers = lattice(np.eye(3) * 2.6 * k, k, rng)
        cfg = mc.MCConfig(temperature=500.0, translate=1, swap=1)
        energy = Counting(pot, incremental=False)
        st = mc.init(pos, numbers, np.eye(3) * 2.6 * k, True, cfg, energy, seed=0)
        counted.clear()
        mc.run(st, cfg, energy, 20)
        sizes[k] = np.mean(counted)
    assert sizes[8] < 1.2 * sizes[4]  # 8x the atoms, the same work per move
    assert sizes[4] < 64


def test_run_equals_steps_and_checkpoint_resumes(pot):
    rng = np.random.default_rng(3)
    cell, k, pbc = CELLS["triclinic"]
    pos, numbers = lattice(cell, k, rng, vacancy_fraction=0.15)
    cfg = mc.MCConfig(temperature=2000.0, translate=1, swap=0.5, vacancy=0.5, max_displacement=0.3)
    energy = mc.NNPEnergy(pot)
    st0 = mc.init(pos, numbers, cell, pbc, cfg, energy, seed=7)
    a = mc.run(st0, cfg, energy, 30)
    b = st0
    for _ in range(10):
        b = mc.step(b, cfg, energy)
    b = mc.MCState.from_dict(json.loads(json.dumps(b.to_dict())))  # a JSON checkpoint
    b = mc.run(b, cfg, energy, 20)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.numbers, b.numbers)
    assert a.energy == pytest.approx(b.energy, abs=TOL)
    assert a.tried == b.tried and a.accepted == b.accepted and a.step == b.step == 30
    # the input state is never modified
    np.testing.assert_array_equal(st0.positions, pos)


def test_fixed_sites_and_energy_window(pot):
    rng = np.random.default_rng(5)
    cell, k, pbc = CELLS["cubic"]
    pos, numbers = lattice(cell, k, rng, vacancy_fraction=0.2)
    fixed = tuple(range(0, len(pos), 3))
    window = (-0.002, 0.002)
    cfg = mc.MCConfig(temperature=5000.0, translate=1, swap=1, vacancy=1, max_displacement=0.5,
                      fixed=fixed, energy_window=window)
    energy = mc.NNPEnergy(pot)
    st = mc.init(pos, numbers, cell, pbc, cfg, energy, seed=2)
    ws = mc.workspace_for(st, cfg, energy)
    e0 = st.energy0
    for _ in range(8):
        st = mc.run(st, cfg, energy, 10, ws)
        rel = st.energy / st.n_atoms - e0
        assert window[0] <= rel <= window[1]
    f = list(fixed)
    np.testing.assert_array_equal(st.positions[f], pos[f])
    np.testing.assert_array_equal(st.numbers[f], numbers[f])
    assert sum(st.accepted.values()) > 0
    # without the window the same chain leaves it
    free = mc.MCConfig(temperature=5000.0, translate=1, swap=1, vacancy=1, max_displacement=0.5,
                       fixed=fixed)
    st2 = mc.run(mc.init(pos, numbers, cell, pbc, free, energy, seed=2), free, energy, 80)
    assert not window[0] <= st2.energy / st2.n_atoms - st2.energy0 <= window[1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=300.0, translate=0.0), "all move weights are 0"),
    (dict(temperature=300.0, swap=-1.0), "swap"),
    (dict(temperature=300.0, max_displacement=0.0), "max_displacement"),
    (dict(temperature=300.0, move_temperatures={"hop": 10.0}), "unknown move 'hop'"),
    (dict(temperature=300.0, move_temperatures={"swap": -1.0}), "move_temperatures"),
    (dict(temperature=300.0, energy_window=(0.1, 0.5)), "energy_window"),
    (dict(temperature=300.0, fixed=(-1,)), "fixed"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mc.MCConfig(**kwargs)


def test_impossible_moves_are_refused(pot):
    pos = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0.0]])
    energy = mc.NNPEnergy(pot)
    with pytest.raises(ValueError, match="swap"):
        mc.init(pos, [29, 29, 29], np.eye(3) * 8, True, mc.MCConfig(300.0, swap=1), energy, 0)
    with pytest.raises(ValueError, match="vacancy"):
        mc.init(pos, [29, 47, 29], np.eye(3) * 8, True, mc.MCConfig(300.0, vacancy=1), energy, 0)
    with pytest.raises(ValueError, match="fixed"):
        mc.init(pos, [29, 47, 29], np.eye(3) * 8, True, mc.MCConfig(300.0, fixed=(5,)), energy, 0)
    with pytest.raises(ValueError, match="not in the model"):
        mc.init(pos, [29, 47, 30], np.eye(3) * 8, True, mc.MCConfig(300.0), energy, 0)
