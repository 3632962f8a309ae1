"""batch_forces: many systems in one evaluation give each system its own results."""

import dataclasses

import numpy as np
import pytest

from nnmd_kernels.electrostatics import CoulombTerm
from nnmd_kernels.md.batch import BatchSystem, batch_forces
from nnmd_kernels.potential import Potential


def _systems(seed=0):
    """Periodic cubic and triclinic cells, a cluster, two species, 3-40 atoms."""
    rng = np.random.default_rng(seed)
    out = []
    for n, cell, pbc in ((8, 4.6 * np.eye(3), True),
                         (3, np.array([[5.5, 0, 0], [1.2, 5.1, 0], [0.4, -0.7, 5.8]]), True),
                         (40, 8.2 * np.eye(3), True),
                         (6, None, False),
                         (12, np.diag([5.0, 6.0, 20.0]), (True, True, False))):
        box = cell if cell is not None else 4.0 * np.eye(3)
        # a jittered grid, so no two atoms overlap
        k = int(np.ceil(n ** (1 / 3))) + 1
        grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
        frac = (grid[rng.permutation(len(grid))[:n]] + 0.5) / k
        x = frac @ box + rng.normal(0, 0.08, (n, 3))
        numbers = rng.choice([3, 8], size=n)
        out.append((x, numbers, cell, pbc))
    return out


@pytest.fixture(scope="module", params=["local", "coulomb"])
def potential(request):
    pot = Potential.random(("Li", "O"), seed=3, hidden=(8, 8), n_radial=6, n_angular=4,
                           r_radial=4.0, r_angular=3.5)
    if request.param == "coulomb":
        pot = dataclasses.replace(pot, coulomb=CoulombTerm(np.array([1.0, -2.0]), r_cut=6.0))
    return pot


def test_batch_matches_each_system_alone(potential):
    systems = _systems()
    batch = [BatchSystem(potential, z, pbc) for _, z, _, pbc in systems]
    out = batch_forces(potential, batch, [s[0] for s in systems], [s[2] for s in systems])
    for (x, z, cell, pbc), got in zip(systems, out):
        if potential.coulomb is not None and not np.all(pbc) and np.any(pbc):
            with pytest.raises(ValueError, match="slabs"):  # the same error as alone
                potential.compute(x, z, cell, pbc)
            assert isinstance(got, ValueError) and "slabs" in str(got)
            continue
        ref = potential.compute(x, z, cell, pbc)
        e, f, vir = got
        assert abs(e - ref.energy) <= 1e-10 * max(1.0, abs(ref.energy))
        np.testing.assert_allclose(f, ref.forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(vir, ref.virial, rtol=0, atol=1e-10)


def test_order_and_company_do_not_change_a_system(potential):
    systems = _systems(1)
    batch = [BatchSystem(potential, z, pbc) for _, z, _, pbc in systems]
    alone = batch_forces(potential, batch[2:3], [systems[2][0]], [systems[2][2]])[0]
    rev = list(reversed(range(len(systems))))
    batch2 = [BatchSystem(potential, systems[k][1], systems[k][3]) for k in rev]
    together = batch_forces(potential, batch2, [systems[k][0] for k in rev],
                            [systems[k][2] for k in rev])[rev.index(2)]
    assert abs(alone[0] - together[0]) <= 1e-10
    np.testing.assert_allclose(alone[1], together[1], rtol=0, atol=1e-10)


def test_one_bad_system_fails_alone(potential):
    systems = _systems(2)
    xs = [s[0].copy() for s in systems]
    xs[1][1] = xs[1][0] + 0.01  # two atoms on top of each other
    xs[2][0, 0] = np.nan
    batch = [BatchSystem(potential, z, pbc) for _, z, _, pbc in systems]
    out = batch_forces(potential, batch, xs, [s[2] for s in systems])
    assert isinstance(out[1], ValueError) and "overlapping atoms" in str(out[1])
    assert isinstance(out[2], ValueError) and "NaN" in str(out[2])
    for k in (0, 3, 4):
        if potential.coulomb is not None and k == 4:
            continue  # a slab: no Coulomb term there (test above)
        ref = potential.compute(xs[k], systems[k][1], systems[k][2], systems[k][3])
        assert abs(out[k][0] - ref.energy) <= 1e-10 * max(1.0, abs(ref.energy))


def test_unknown_species_is_refused_by_name(potential):
    with pytest.raises(ValueError, match="element Cu"):
        BatchSystem(potential, [3, 29], True)


def test_verlet_lists_follow_moving_atoms_and_changed_cells(potential):
    systems = _systems(4)[:3]
    batch = [BatchSystem(potential, z, pbc, skin=0.6) for _, z, _, pbc in systems]
    rng = np.random.default_rng(7)
    xs = [s[0].copy() for s in systems]
    cells = [s[2] for s in systems]
    for step in range(25):
        if step == 12:  # a strained cell: the list must be rebuilt, not reused
            cells[0] = cells[0] * 1.02
        out = batch_forces(potential, batch, xs, cells)
        for k, (_x, z, _, pbc) in enumerate(systems):
            ref = potential.compute(xs[k], z, cells[k], pbc)
            assert abs(out[k][0] - ref.energy) <= 1e-10 * max(1.0, abs(ref.energy))
            np.testing.assert_allclose(out[k][1], ref.forces, rtol=0, atol=1e-10)
        xs = [x + rng.normal(0, 0.04, x.shape) for x in xs]
    assert all(1 < b.n_builds < 25 for b in batch), [b.n_builds for b in batch]
