"""Records whose contents encode their identity, so a torn or misplaced row is detectable."""

from __future__ import annotations

import numpy as np

from services.runtime.convert import LabelArrays, StructureArrays
from services.store.store import Provenance, Record


def make_record(chain: int, step: int, n_atoms: int | None = None, campaign: str = "c") -> Record:
    rng = np.random.default_rng(chain * 100_003 + step)
    n = n_atoms if n_atoms is not None else 1 + (chain * 7 + step) % 9
    tag = chain * 1_000_000 + step
    positions = rng.normal(0, 2, (n, 3))
    positions[0, 0] = tag  # identity
    return Record(
        StructureArrays(
            positions=positions,
            numbers=rng.integers(1, 50, n).astype(np.int32),
            cell=np.diag([10.0, 11.0, 12.0]) + rng.normal(0, 0.1, (3, 3)),
            pbc=np.array([True, True, step % 2 == 0]),
            velocities=rng.normal(0, 0.01, (n, 3)) if step % 3 else None,
            id=f"{chain}/{step}",
        ),
        LabelArrays(
            energy=float(-tag) - rng.random(),
            forces=rng.normal(size=(n, 3)) if step % 4 else None,
            stress=rng.normal(size=(3, 3)) if step % 2 else None,
        ),
        Provenance(
            campaign=campaign,
            chain=f"chain{chain}",
            step=step,
            source=("aimd", "hmc", "mc", "import")[step % 4],
            model_version=step // 5,
            accepted=bool(step % 2),
            reference_settings_hash=f"h{chain}",
            wall_time=0.25 * step,
        ),
    )


def assert_same(a: Record, b: Record) -> None:
    sa, sb = a.structure, b.structure
    np.testing.assert_array_equal(sa.positions, sb.positions)
    np.testing.assert_array_equal(sa.numbers, sb.numbers)
    np.testing.assert_array_equal(sa.cell, sb.cell)
    np.testing.assert_array_equal(sa.pbc, sb.pbc)
    if sa.velocities is None:
        assert sb.velocities is None
    else:
        np.testing.assert_array_equal(sa.velocities, sb.velocities)
    assert sa.id == sb.id
    la, lb = a.labels, b.labels
    assert la.energy == lb.energy or (np.isnan(la.energy) and np.isnan(lb.energy))
    for x, y in ((la.forces, lb.forces), (la.stress, lb.stress)):
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(x, y)
    assert a.provenance == b.provenance or (
        np.isnan(a.provenance.wall_time) and a.provenance.campaign == b.provenance.campaign
    )


def identity(rec: Record) -> tuple[int, int]:
    """(chain, step) read back from the positions; checks the row is whole."""
    tag = int(rec.structure.positions[0, 0])
    chain, step = divmod(tag, 1_000_000)
    assert rec.provenance.chain == f"chain{chain}" and rec.provenance.step == step, "torn record"
    assert_same(rec, make_record(chain, step, rec.structure.n_atoms, rec.provenance.campaign))
    return chain, step
