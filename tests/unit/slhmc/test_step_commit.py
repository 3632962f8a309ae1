"""A chain step's label and checkpoint go to the store writer as one group commit (issue
18): a crash after the labels of a commit are durable and before its checkpoints are
written resumes by replaying those steps with the stored labels; the slowest chain's step
(the progress lines) is still followed step by step; the small-cell MD thread count."""

import pytest

from orchestrator.slhmc import Campaign, CampaignConfig, chain_name
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN

CHAINS, STEPS = 3, 3


def config(path, steps):
    return CampaignConfig(reference="emt", structure=path, campaign="t", chains=CHAINS,
                          steps=steps, temperature=500.0, md_steps=4, md_steps_min=2,
                          dt=2.0, retrain_every=0, bootstrap_steps=4, bootstrap_dt=2.0,
                          train=TINY_TRAIN)


def hmc_labels(url):
    a = Store(url, read_only=True).read(campaign="t").arrays
    hmc = a["source"] == "hmc"
    return list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))


class Crash(Exception):
    pass


def test_crash_between_labels_and_checkpoints_resumes_by_replay(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    camp = Campaign(config(path, STEPS), url, log=lambda m: None)
    real = camp.writer._write_checkpoints
    calls = {"with_labels": 0}

    def crash_once_labels_are_durable(items):
        if any(with_records for _, with_records in items):
            calls["with_labels"] += 1
            if calls["with_labels"] == 2:  # the labels of this commit are durable already
                raise Crash("killed after the append, before the checkpoints")
        return real(items)

    camp.writer._write_checkpoints = crash_once_labels_are_durable
    try:
        with pytest.raises(BaseException) as info:
            camp.run(atoms)
        assert info.group_contains(Crash) if isinstance(info.value, BaseExceptionGroup) \
            else isinstance(info.value, Crash)
    finally:
        camp.close()
    store = Store(url, read_only=True)
    stored = hmc_labels(url)
    behind = [c for c in range(CHAINS) if (chain_name(c), store.read_checkpoint(
        "t", chain_name(c))["state"]["step"] + 1) in stored]
    assert behind, "no label beyond its chain's checkpoint: the crash came too late"

    camp = Campaign(config(path, STEPS), url, log=lambda m: None)
    try:
        summary = camp.run(atoms)
    finally:
        camp.close()
    assert summary["replayed"] >= len(behind)
    labels = hmc_labels(url)
    assert len(labels) == len(set(labels)) == CHAINS * STEPS  # each step's label once
    store = Store(url, read_only=True)
    for c in range(CHAINS):
        doc = store.read_checkpoint("t", chain_name(c))
        assert [h["step"] for h in doc["history"]] == list(range(1, STEPS + 1))
        assert doc["state"]["step"] == STEPS


def test_progress_follows_the_slowest_chain_step_by_step(cu, tmp_path):
    atoms, path = cu
    lines = []
    camp = Campaign(config(path, STEPS), str(tmp_path / "store"), log=lines.append)
    try:
        camp.run(atoms)
    finally:
        camp.close()
    rounds = [int(m.split()[1].split("/")[0]) for m in lines if m.startswith("step ")]
    assert rounds == list(range(1, STEPS + 1))
    assert not camp._at_step or set(camp._at_step) == {STEPS}
