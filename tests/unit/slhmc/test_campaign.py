"""The local campaign on EMT copper: labels and checkpoints in the store, resume by replay."""

import numpy as np
import pytest

from orchestrator.commands.slhmc import report_rows, write_csv
from orchestrator.slhmc import Campaign, CampaignConfig, chain_name
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN


def config(path, steps, **kw):
    return CampaignConfig(reference="emt", structure=path, campaign="t", chains=2, steps=steps,
                          temperature=500.0, md_steps=10, md_steps_min=5, dt=2.0,
                          retrain_every=0, bootstrap_steps=6, bootstrap_dt=2.0,
                          train=TINY_TRAIN, **kw)


def run(cfg, url, atoms):
    camp = Campaign(cfg, url, log=lambda m: None)
    try:
        summary = camp.run(atoms)
    finally:
        camp.close()
    return summary


def hmc_keys(url):
    a = Store(url, read_only=True).read(campaign="t").arrays
    hmc = a["source"] == "hmc"
    return (list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist())),
            {"accepted": a["accepted"][hmc], "energy": a["energy"][hmc]})


def test_label_beyond_checkpoint_is_replayed_not_duplicated(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    run(config(path, 2), url, atoms)
    store = Store(url, read_only=True)
    at_two = {chain_name(c): store.read_checkpoint("t", chain_name(c)) for c in range(2)}
    run(config(path, 3), url, atoms)
    at_three = {n: Store(url, read_only=True).read_checkpoint("t", n) for n in at_two}
    keys_before, _ = hmc_keys(url)
    # a kill between the label append and the checkpoint: labels at step 3, checkpoints at 2
    with Store(url).writer() as w:
        for n, doc in at_two.items():
            w.write_checkpoint("t", n, doc)
    summary = run(config(path, 3), url, atoms)
    assert summary["replayed"] == 2 and summary["reference_calls"] == 0
    keys_after, arrays = hmc_keys(url)
    assert sorted(keys_after) == sorted(keys_before)  # nothing duplicated
    assert len(set(keys_after)) == len(keys_after) == 6
    for n in at_two:
        doc = Store(url, read_only=True).read_checkpoint("t", n)
        assert [h["step"] for h in doc["history"]] == [1, 2, 3]
        np.testing.assert_allclose(doc["state"]["positions"], at_three[n]["state"]["positions"],
                                   atol=1e-6)
        assert doc["history"][-1]["accepted"] == at_three[n]["history"][-1]["accepted"]
    # the label's accepted flag is the chain's decision, and its energy the proposal's
    rows = report_rows(url, "t")
    assert len(rows) == 6
    for r in rows:
        k = keys_after.index((r["chain"], r["step"]))
        assert bool(arrays["accepted"][k]) == r["accepted"]
        assert arrays["energy"][k] == pytest.approx(r["energy_proposal"])
        if r["accepted"]:
            assert r["energy_ref"] == pytest.approx(r["energy_proposal"])
    out = tmp_path / "r.csv"
    assert write_csv(url, out, "t") == 6
    header = out.read_text().splitlines()[0].split(",")
    for col in ("chain", "step", "accepted", "energy_ref", "n_md_steps", "model_version",
                "volume"):
        assert col in header


def test_resume_refuses_changed_settings(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    run(config(path, 1), url, atoms)
    with pytest.raises(ValueError, match="temperature"):
        Campaign(CampaignConfig(**{**config(path, 2).__dict__, "temperature": 900.0}), url)


def test_reference_failure_is_a_rejected_move_and_no_label(cu, tmp_path, monkeypatch):
    """on_failure: reject (the default, stop, is in test_sampling_phases.py)."""
    from services.reference.types import Failure, FailureReason

    atoms, path = cu
    url = str(tmp_path / "store")
    run(config(path, 1), url, atoms)
    camp = Campaign(config(path, 3, on_failure="reject"), url, log=lambda m: None)
    monkeypatch.setattr(camp.backend, "compute", lambda lst: [
        Failure(FailureReason.NOT_CONVERGED, "SCF not converged") for _ in lst])
    try:
        summary = camp.run(atoms)
    finally:
        camp.close()
    assert summary["reference_failures"] == 4
    keys, _ = hmc_keys(url)
    assert len(keys) == 2  # only step 1's labels
    rows = [r for r in report_rows(url, "t") if r["step"] > 1]
    assert [r["status"] for r in rows] == ["failed"] * 4
    assert not any(r["accepted"] for r in rows)


def test_parallel_reference_workers_give_the_same_chains(cu, tmp_path):
    atoms, path = cu
    runs = []
    for workers in (1, 3):
        url = str(tmp_path / f"store{workers}")
        cfg = CampaignConfig(**{**config(path, 2).__dict__, "chains": 3,
                                "reference_workers": workers})
        run(cfg, url, atoms)
        runs.append([(r["chain"], r["step"], r["accepted"], r["energy_proposal"])
                     for r in report_rows(url, "t")])
    assert len(runs[0]) == 6
    # each run trains its own first model: equal up to round-off, not bitwise
    assert [r[:3] for r in runs[0]] == [r[:3] for r in runs[1]]
    np.testing.assert_allclose([r[3] for r in runs[0]], [r[3] for r in runs[1]], rtol=1e-9)


def test_killed_bootstrap_continues_from_its_last_frame(cu, tmp_path, monkeypatch):
    import services.reference.aimd as aimd

    atoms, path = cu
    url = str(tmp_path / "store")
    real = aimd.run_aimd

    class Killed(Exception):
        pass

    def dies_after_three(backend, start, cfg, on_frame=None):
        seen = []

        def frame(f):
            if len(seen) == 3:
                raise Killed
            seen.append(f)
            on_frame(f)

        return real(backend, start, cfg, on_frame=frame)

    monkeypatch.setattr(aimd, "run_aimd", dies_after_three)
    with pytest.raises(Killed):
        run(config(path, 1), url, atoms)
    monkeypatch.setattr(aimd, "run_aimd", real)
    run(config(path, 1), url, atoms)
    a = Store(url, read_only=True).read(campaign="t").arrays
    steps = sorted(a["step"][a["source"] == "aimd"].tolist())
    assert steps == list(range(7))  # bootstrap_steps + 1 frames, each once


def test_npt_campaigns_train_with_the_stress_unless_told_otherwise(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from orchestrator.slhmc import NPT_STRESS_WEIGHT

    path = tmp_path / "cu.xyz"
    write(path, bulk("Cu", "fcc", a=3.6, cubic=True))
    nvt = config(path, 1)
    assert "stress_weight" not in nvt.train_settings()
    npt = CampaignConfig(**{**nvt.__dict__, "ensemble": "npt"})
    assert npt.train_settings()["stress_weight"] == NPT_STRESS_WEIGHT
    told = CampaignConfig(**{**nvt.__dict__, "ensemble": "npt", "train": {"stress_weight": 0.0}})
    assert told.train_settings()["stress_weight"] == 0.0
    mixed = CampaignConfig(**{**nvt.__dict__, "chains": 2, "chain_groups": (
        {"count": 1, "temperature": 300.0, "ensemble": "nvt"},
        {"count": 1, "temperature": 300.0, "ensemble": "npt", "pressure_gpa": 0.0})})
    assert mixed.train_settings()["stress_weight"] == NPT_STRESS_WEIGHT


def test_chain_groups_with_their_own_structure_bootstrap_and_start_there(cu, tmp_path):
    """Two phases in one campaign: a group with `structure` gets its own reference-MD
    bootstrap from that file, its chains start from those frames, and a resume redoes
    neither bootstrap."""
    from ase.build import bulk
    from ase.io import write

    atoms, path = cu
    other = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(2)  # expanded: another "phase"
    other.rattle(0.02, seed=3)
    other_path = tmp_path / "expanded.xyz"
    write(other_path, other)
    groups = ({"count": 1, "temperature": 500.0, "ensemble": "nvt"},
              {"count": 1, "temperature": 400.0, "ensemble": "nvt", "structure": str(other_path),
               "bootstrap_steps": 3})
    cfg = config(path, 1, chain_groups=groups)
    url = str(tmp_path / "store")
    run(cfg, url, atoms)
    a = Store(url, read_only=True).read(campaign="t").arrays
    aimd = a["source"] == "aimd"
    assert int((aimd & (a["chain"] == "aimd")).sum()) == cfg.bootstrap_steps + 1
    assert int((aimd & (a["chain"] == "aimd.g1")).sum()) == 3 + 1
    store = Store(url, read_only=True)
    vol = [abs(np.linalg.det(np.asarray(store.read_checkpoint("t", chain_name(c))["state"]["cell"])))
           for c in range(2)]
    assert vol[0] == pytest.approx(atoms.get_volume())  # NVT: each keeps its start cell
    assert vol[1] == pytest.approx(other.get_volume())
    run(config(path, 2, chain_groups=groups), url, atoms)
    a = Store(url, read_only=True).read(campaign="t").arrays
    assert int((a["source"] == "aimd").sum()) == cfg.bootstrap_steps + 1 + 4  # no bootstrap redone
    with pytest.raises(ValueError, match=r"chain_groups\[1\].structure: no file"):
        config(path, 1, chain_groups=(groups[0], {**groups[1], "structure": str(tmp_path / "nope.xyz")}))


def test_spec_group_structure_is_relative_to_the_spec(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from orchestrator.coordinator.spec import SpecError, parse_spec

    write(tmp_path / "a.xyz", bulk("Cu", "fcc", a=3.6, cubic=True))
    write(tmp_path / "b.xyz", bulk("Cu", "fcc", a=3.7, cubic=True))
    spec = {"name": "g", "reference": "emt", "structure": "a.xyz",
            "chains": [{"count": 1}, {"count": 2, "structure": "b.xyz", "bootstrap_steps": 4}]}
    s = parse_spec(spec, base_dir=tmp_path)
    g = s.config.chain_groups[1]
    assert g["structure"] == str((tmp_path / "b.xyz").resolve()) and g["bootstrap_steps"] == 4
    with pytest.raises(SpecError, match="no file"):
        parse_spec({**spec, "chains": [{"count": 1, "structure": "c.xyz"}]}, base_dir=tmp_path)
    with pytest.raises(SpecError, match="only with a structure"):
        parse_spec({**spec, "chains": [{"count": 1, "bootstrap_steps": 3}]}, base_dir=tmp_path)


def test_strain_labels_label_strained_bootstrap_frames_once(cu, tmp_path, monkeypatch):
    """strain_labels: after each bootstrap, `count` of its frames with volumes spread over
    [lo, hi] x theirs (and a random volume-keeping shear) are labelled by the reference
    (chain '<bootstrap>.strain', provenance aimd, EMT's own energies); a resume adds none,
    and one killed half-way continues where it stopped."""
    from ase.calculators.emt import EMT

    from orchestrator.coordinator.spec import SpecError, parse_spec

    atoms, path = cu
    url = str(tmp_path / "store")
    strain = {"count": 5, "volume": [0.9, 1.1], "shear": 0.03}
    run(config(path, 1, strain_labels=strain), url, atoms)
    a = Store(url, read_only=True).read(campaign="t")
    arr = a.arrays
    idx = np.flatnonzero((arr["source"] == "aimd") & (arr["chain"] == "aimd.strain"))
    assert sorted(arr["step"][idx].tolist()) == list(range(5))
    v0 = atoms.get_volume()
    vols = [abs(np.linalg.det(a.record(int(i)).structure.cell)) / v0 for i in idx]
    np.testing.assert_allclose(sorted(vols), [0.9, 0.95, 1.0, 1.05, 1.1], rtol=1e-9)
    for i in idx:  # labels are the reference's own numbers at the strained cell
        r = a.record(int(i))
        s = r.structure
        cell = np.asarray(s.cell)
        assert not np.allclose(cell / np.cbrt(abs(np.linalg.det(cell)) / v0), atoms.cell.array)  # sheared
        b = atoms.copy()
        b.set_cell(cell)
        b.positions = s.positions
        b.calc = EMT()
        assert r.labels.energy == pytest.approx(b.get_potential_energy(), abs=1e-9)
    run(config(path, 2, strain_labels=strain), url, atoms)  # resume: none added
    arr = Store(url, read_only=True).read(campaign="t").arrays
    assert int((arr["chain"] == "aimd.strain").sum()) == 5
    run(config(path, 2, strain_labels={**strain, "count": 7}), url, atoms)  # more asked: two more
    arr = Store(url, read_only=True).read(campaign="t").arrays
    assert sorted(arr["step"][arr["chain"] == "aimd.strain"].tolist()) == list(range(7))
    with pytest.raises(ValueError, match=r"strain_labels.volume must be \[lo, hi\]"):
        config(path, 1, strain_labels={"count": 2, "volume": 1.1})
    with pytest.raises(ValueError, match="strain_labels: unknown key"):
        config(path, 1, strain_labels={"n": 2})
    with pytest.raises(SpecError, match="strain_labels"):
        parse_spec({"name": "s", "reference": "emt", "structure": str(path),
                    "strain_labels": {"count": 2, "shear": 0.5}})
