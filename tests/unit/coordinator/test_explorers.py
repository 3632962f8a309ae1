"""Metropolis explorers inside a campaign: MC with the current model finds structures
outside the training data, the reference labels them (source "mc"), and a killed round
re-run from its checkpoint stores nothing twice."""

from __future__ import annotations

import asyncio

import numpy as np
from ase.io import read

from orchestrator.coordinator.runner import CampaignRun
from orchestrator.coordinator.spec import parse_spec
from orchestrator.slhmc import Campaign
from services.store import Store

MC = {"explorers": 2, "rounds": 2, "steps": 60, "every": 10, "temperature": 3000.0,
      "max_displacement": 0.3, "max_unknown": 3}


def _mc_keys(url):
    a = Store(url, read_only=True).read(campaign="tiny").arrays
    m = a["source"] == "mc"
    return list(zip(a["chain"][m].tolist(), a["step"][m].tolist())), a


def test_explorers_label_unknown_structures(tiny_spec):
    spec = parse_spec({**tiny_spec, "mc": MC, "retrain_every": 0})
    run = CampaignRun(spec, log=lambda m: None)
    summary = asyncio.run(run.run())
    assert run.state == "finished"
    keys, a = _mc_keys(spec.store)
    assert summary["mc_labels"] == len(keys) > 0  # hot MC leaves the bootstrap's histograms
    assert len(set(keys)) == len(keys)
    assert {c for c, _ in keys} <= {"mc000", "mc001"}
    m = a["source"] == "mc"
    assert np.all(np.isfinite(a["energy"][m])) and np.all(a["model_version"][m] >= 1)
    # the labels are the reference's (EMT) energies of the stored structures
    from ase.calculators.emt import EMT

    batch = Store(spec.store, read_only=True).read(campaign="tiny")
    k = int(np.flatnonzero(m)[0])
    rec = batch.record(k)
    from services.runtime.convert import to_atoms

    atoms = to_atoms(rec.structure)
    atoms.calc = EMT()
    assert abs(atoms.get_potential_energy() - rec.labels.energy) < 1e-9
    store = Store(spec.store, read_only=True)
    for e in ("mc000", "mc001"):
        doc = store.read_checkpoint("tiny", e)
        assert doc["kind"] == "mc" and doc["round"] == 2
        assert [h["round"] for h in doc["history"]] == [1, 2]
    # explorers are not chains: the status and the report list only the chains
    assert [c["chain"] for c in run.status()["chains"]] == ["chain000", "chain001"]


def test_a_replayed_round_stores_nothing_twice(tiny_spec):
    """Run round 1, then rewind the explorer's checkpoint (as a kill after its labels and
    before its checkpoint leaves it) and resume: the round is re-run with the same model
    and random stream, finds the same structures, and labels none of them again."""
    spec = parse_spec({**tiny_spec, "mc": {**MC, "rounds": 1, "explorers": 1},
                       "retrain_every": 0})
    asyncio.run(CampaignRun(spec, log=lambda m: None).run())
    first, _ = _mc_keys(spec.store)
    assert first
    camp = Campaign(spec.config, spec.store, log=lambda m: None)
    try:
        doc = camp.store.read_checkpoint("tiny", "mc000")
        doc.update(round=0, positions=read(spec.config.structure).positions.tolist(),
                   history=[])
        camp.writer.write_checkpoint("tiny", "mc000", doc)
    finally:
        camp.close()
    summary = asyncio.run(CampaignRun(spec, log=lambda m: None).run())
    again, _ = _mc_keys(spec.store)
    assert sorted(again) == sorted(first)
    assert summary["mc_labels"] == 0
