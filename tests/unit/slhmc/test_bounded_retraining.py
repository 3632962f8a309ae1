"""A campaign's warm-start re-trainings see the new labels plus a replay sample of the old
ones (retrain_max_structures), and the run's last model sees every label."""

from orchestrator.slhmc import Campaign, CampaignConfig, campaign_models
from services.store import Store
from tests.unit.slhmc.conftest import TINY_TRAIN


def test_bounded_retrainings_and_a_full_last_model(cu, tmp_path):
    atoms, path = cu
    url = str(tmp_path / "store")
    cfg = CampaignConfig(reference="emt", structure=path, campaign="b", chains=2, steps=12,
                         temperature=500.0, md_steps=4, md_steps_min=2, md_steps_max=20,
                         dt=2.0, retrain_every=6, retrain_epochs=3, bootstrap_steps=10,
                         bootstrap_dt=2.0, train=TINY_TRAIN, holdout_fraction=0.0,
                         retrain_max_structures=12)
    camp = Campaign(cfg, url, log=lambda m: None)
    try:
        camp.run(atoms)
    finally:
        camp.close()
    store = Store(url, read_only=True)
    metas = [m for _, m in campaign_models(store, "b")]
    assert len(metas) >= 4
    assert not metas[0]["warm_start"] and not metas[0]["sampled"]
    bounded = [m for m in metas[1:-1]]
    assert bounded and all(m["sampled"] for m in bounded)
    for m in bounded:
        # every new label, plus as many old ones as the budget leaves (at least as many
        # as new): n_structures = n_new + n_replay, far below the rows at the end
        assert m["n_structures"] == m["n_new"] + m["n_replay"]
        assert m["n_replay"] == min(m["n_rows"] - m["n_new"], max(12 - m["n_new"], m["n_new"]))
    assert any(m["n_structures"] < m["n_rows"] for m in bounded)  # a sample, not all
    rows = [m["n_rows"] for m in metas]
    assert rows == sorted(rows)
    last = metas[-1]
    assert last["warm_start"] and not last["sampled"]
    assert last["n_structures"] == last["n_rows"] == len(store.read(campaign="b").arrays["energy"])
