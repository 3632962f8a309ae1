"""`nnmd mc` end to end: a tiny random Cu/Ag potential, EMT labels into a temporary store."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from nnmd_kernels import Potential
from orchestrator.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mc")
    pot = Potential.random(["Cu", "Ag"], seed=0, hidden=(8, 8), n_radial=6, n_angular=4,
                           r_radial=4.0, r_angular=3.5)
    pot.save(d / "model.nnmd")
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 2))  # 32 sites
    rng = np.random.default_rng(0)
    atoms.numbers[rng.choice(32, 10, replace=False)] = 47
    atoms.numbers[[3, 17]] = 0  # two vacancy sites (X)
    ase.io.write(d / "start.extxyz", atoms, format="extxyz")
    # "training data": the perfect lattice with a little noise, labelled by EMT in a store
    from services.reference.spec import make_backend
    from services.runtime.convert import from_atoms
    from services.store import Provenance, Record, Store

    train = []
    for _ in range(4):
        a = atoms[atoms.numbers > 0]
        a.positions += rng.normal(0, 0.02, a.positions.shape)
        train.append(a)
    ref = make_backend("emt")
    records = []
    for a, r in zip(train, ref.compute(train)):
        s, _ = from_atoms(a)
        from services.runtime.convert import LabelArrays

        records.append(Record(s, LabelArrays(r.energy, r.forces, r.stress),
                              Provenance(campaign="train", source="import")))
    w = Store(d / "store").writer()
    w.append(records)
    w.close()
    ase.io.write(d / "train.extxyz", train, format="extxyz")
    return d


def test_mc_finds_unknown_structures_and_stores_their_labels(files, capsys):
    d = files
    argv = ["mc", "--model", str(d / "model.nnmd"), "--structure", str(d / "start.extxyz"),
            "--steps", "60", "--temperature", "3000", "--translate-step", "0.4",
            "--moves", "translate=1,swap=0.3,vacancy=0.3", "--move-temperature", "swap=5000",
            "--fixed", "0-1", "--seed", "1", "--every", "10", "--traj", str(d / "traj.extxyz"),
            "--store", str(d / "store"), "--unknown-out", str(d / "unknown.extxyz"),
            "--reference", "emt", "--max-unknown", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "histograms from 4 training structures" in out
    for k in ("translate", "swap", "vacancy"):
        assert f"  {k}" in out
    traj = ase.io.read(d / "traj.extxyz", index=":")
    assert len(traj) == 6 and all(len(a) == 32 for a in traj)
    assert all((a.numbers == 0).sum() == 2 for a in traj)  # vacancy sites kept
    start = ase.io.read(d / "start.extxyz")
    np.testing.assert_allclose(traj[-1].positions[:2], start.positions[:2])  # fixed
    unknown = ase.io.read(d / "unknown.extxyz", index=":")
    assert 1 <= len(unknown) <= 3 and all(len(a) == 30 for a in unknown)
    assert f"labels stored: {len(unknown)}" in out

    from services.store import Store

    batch = Store(d / "store", read_only=True).read()
    src = batch.arrays["source"]
    assert (src == "mc").sum() == len(unknown) and (src == "import").sum() == 4
    rec = batch.record(int(np.flatnonzero(src == "mc")[0]))
    assert rec.provenance.campaign == "mc" and np.isfinite(rec.labels.energy)
    from ase.calculators.emt import EMT

    a = unknown[0].copy()
    a.calc = EMT()
    assert rec.labels.energy == pytest.approx(a.get_potential_energy(), abs=1e-5)  # extxyz digits


def test_training_files_energy_window_and_no_reference(files, capsys):
    d = files
    argv = ["mc", "--model", str(d / "model.nnmd"), "--structure", str(d / "start.extxyz"),
            "--steps", "30", "--temperature", "300", "--moves", "translate=1",
            "--training-data", str(d / "train.extxyz"), "--energy-window=-0.05,0.05",
            "--every", "15"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "unknown structures:" in out and "labels stored" not in out


@pytest.mark.parametrize("extra, message", [
    (["--moves", "translate=1,hop=2"], "--moves"),
    (["--fixed", "0-99"], "out of range"),
    (["--energy-window", "0.5"], "--energy-window"),
    (["--reference", "emt"], "--reference needs --store"),
    (["--moves", "swap=1,translate=0", "--fixed", "0-31"], "swap"),
])
def test_bad_input_is_a_clear_error(files, capsys, extra, message):
    d = files
    argv = ["mc", "--model", str(d / "model.nnmd"), "--structure", str(d / "start.extxyz"),
            "--steps", "5", "--temperature", "300", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_species_missing_from_the_model_is_refused_before_anything_runs(files, tmp_path, capsys):
    d = files
    atoms = ase.io.read(d / "start.extxyz")
    atoms.numbers[5] = 30  # Zn
    ase.io.write(tmp_path / "zn.extxyz", atoms, format="extxyz")
    argv = ["mc", "--model", str(d / "model.nnmd"), "--structure", str(tmp_path / "zn.extxyz"),
            "--steps", "5", "--temperature", "300", "--traj", str(tmp_path / "t.extxyz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "element Zn (atom 5) is not in the model" in err and "Cu, Ag" in err
    assert not (tmp_path / "t.extxyz").exists()
