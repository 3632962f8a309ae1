"""A chain's history rows move out of its checkpoint in segments, so a checkpoint stays
small over a long run; every reader (report rows, status, the console's history) still
sees every step once, in order, across a resume."""

import orchestrator.slhmc as slhmc_mod
from orchestrator.commands.slhmc import report_rows
from orchestrator.coordinator.history import campaign_history
from orchestrator.coordinator.runner import status_from_store
from orchestrator.slhmc import Campaign, CampaignConfig, chain_name, is_history_segment
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN


def _run(path, url, atoms, steps):
    cfg = CampaignConfig(reference="emt", structure=path, campaign="h", chains=2, steps=steps,
                         temperature=500.0, md_steps=4, md_steps_min=2, md_steps_max=20,
                         dt=2.0, retrain_every=0, bootstrap_steps=6, bootstrap_dt=2.0,
                         train=TINY_TRAIN)
    camp = Campaign(cfg, url, log=lambda m: None)
    try:
        camp.run(atoms)
    finally:
        camp.close()


def test_history_segments_keep_every_step_once(cu, tmp_path, monkeypatch):
    monkeypatch.setattr(slhmc_mod, "HISTORY_SEGMENT_ROWS", 3)
    atoms, path = cu
    url = str(tmp_path / "store")
    _run(path, url, atoms, 5)
    _run(path, url, atoms, 9)  # resumed: segments listed before go on
    store = Store(url, read_only=True)
    names = store.list_checkpoints("h")
    segments = [n for n in names if is_history_segment(n)]
    assert segments, names
    for c in range(2):
        doc = store.read_checkpoint("h", chain_name(c))
        assert 1 <= len(doc["history"]) <= 4  # the checkpoint keeps the newest rows only
        assert len(doc["history_segments"]) >= 2
    rows = report_rows(url, "h")
    for c in range(2):
        steps = [r["step"] for r in rows if r["chain"] == chain_name(c)]
        assert steps == list(range(1, 10))
    status = status_from_store(url, "h")
    assert sorted(ch["chain"] for ch in status["chains"]) == [chain_name(0), chain_name(1)]
    assert all(ch["step"] == 9 and ch["model_version"] >= 1 for ch in status["chains"])
    hist = campaign_history(url, "h")
    assert hist["chain_names"] == [chain_name(0), chain_name(1)]  # no segment as a chain
    for c in range(2):
        assert list(hist["chains"][chain_name(c)]["step"]) == list(range(1, 10))
