"""MD executors killed mid-campaign change no chain's records (issue 18).

The chains' HMC proposals run on 2 MD executor actors (executor ray, resources.md.workers
2). Re-training is off, and both runs resume from one copy of the same store (bootstrap
and first model made once), so the model is the same. One run is undisturbed; in the
other, one executor SIGKILLs itself in the middle of a proposal (NNMD_FAULT=md_executor,
after its trajectory, before its answer) and a second one is killed with ray.kill while
the chains run. Ray restarts both (max_restarts); the pool sends each lost proposal again
with the same chain state, so the same random stream: every chain's history (moves,
accepted flags, energies) and every label is the same as in the undisturbed run, once.
"""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from orchestrator.coordinator.runner import CampaignRun
from orchestrator.coordinator.spec import parse_spec
from services.store import Store

STEPS = 6


def _history(store: str) -> dict:
    s = Store(store, read_only=True)
    return {n: (s.read_checkpoint("tiny", n) or {}).get("history", [])
            for n in ("chain000", "chain001")}


def _labels(store: str) -> dict:
    a = Store(store, read_only=True).read(campaign="tiny").arrays
    hmc = np.flatnonzero(a["source"] == "hmc")
    keys = [(str(a["chain"][k]), int(a["step"][k])) for k in hmc]
    assert len(set(keys)) == len(keys), "a label stored twice"
    return {key: float(a["energy"][k]) for key, k in zip(keys, hmc)}


def _run(spec_dict: dict, on_step=None):
    run = CampaignRun(parse_spec(spec_dict), log=lambda m: None)

    async def main():
        task = asyncio.create_task(run.run())
        q = run.subscribe()
        steps = 0
        while (ev := await q.get()) is not None:
            if ev["kind"] == "step":
                steps += 1
                if on_step is not None:
                    on_step(run, steps)
        return await task

    summary = asyncio.run(main())
    assert run.state == "finished", run.message
    return run, summary


@pytest.mark.timeout(900)
def test_md_executor_killed_mid_proposal_changes_no_record(ray_session, tiny_spec, tmp_path,
                                                           monkeypatch):
    base = {**tiny_spec, "retrain_every": 0, "executor": "local", "steps": 0}
    _run(base)  # bootstrap + the first model, once, for both runs
    stores = {k: str(tmp_path / k) for k in ("calm", "killed")}
    for path in stores.values():
        shutil.copytree(tiny_spec["store"], path)
    ray_spec = {**base, "executor": "ray", "steps": STEPS,
                "resources": {"reference": {"workers": 1, "num_cpus": 0.25},
                              "md": {"workers": 2, "num_cpus": 0.25, "max_restarts": 3}}}

    calm, s_calm = _run({**ray_spec, "store": stores["calm"]})
    st = calm.status()
    assert len(st["md_executors"]) == 2
    assert all(w["calls"] > 0 for w in st["md_executors"]), st["md_executors"]
    assert sum(w["calls"] for w in st["md_executors"]) == 2 * STEPS
    assert calm.md_pool.retries == 0

    # the third proposal dies inside its executor; the fifth step's event kills another
    monkeypatch.setenv("NNMD_FAULT", "md_executor:2")
    monkeypatch.setenv("NNMD_FAULT_ONCE", str(tmp_path / "fired"))
    killed = []

    def kill(run, steps):
        if steps == 5:
            ray_session.kill(run.md_pool._actors[1], no_restart=False)
            killed.append(steps)

    hit, s_hit = _run({**ray_spec, "store": stores["killed"]}, on_step=kill)
    assert (tmp_path / "fired").exists(), "the executor's fault point never fired"
    assert killed == [5]
    assert hit.md_pool.retries >= 1
    assert s_hit["steps"] == s_calm["steps"] == {"chain000": STEPS, "chain001": STEPS}

    h_calm, h_hit = _history(stores["calm"]), _history(stores["killed"])
    for chain in h_calm:
        assert len(h_calm[chain]) == len(h_hit[chain]) == STEPS
        for a, b in zip(h_calm[chain], h_hit[chain]):
            for key in ("step", "move", "status", "accepted", "n_md_steps", "model_version"):
                assert a[key] == b[key], (chain, key, a, b)
            for key in ("energy_ref", "energy_proposal", "volume"):
                if a[key] is None:
                    assert b[key] is None
                else:
                    assert abs(a[key] - b[key]) <= 1e-9, (chain, key, a, b)
    l_calm, l_hit = _labels(stores["calm"]), _labels(stores["killed"])
    assert sorted(l_calm) == sorted(l_hit)
    assert len(l_calm) == sum(r["status"] in ("accepted", "rejected")
                              for rows in h_calm.values() for r in rows)
    for key, e in l_calm.items():
        assert abs(e - l_hit[key]) <= 1e-9, key
