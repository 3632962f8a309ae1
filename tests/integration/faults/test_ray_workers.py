"""A campaign on Ray whose reference workers are killed while it runs.

The chains call Ray-hosted Reference services over gRPC. One worker is SIGKILLed-like
(ray.kill, so Ray restarts it: max_restarts) while calls are in flight, and a second one
is killed for good (no_restart): the pool follows the restart to its new port, drops the
dead one, and the campaign completes with every label once and every chain step once.
"""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.coordinator.runner import CampaignRun
from orchestrator.coordinator.spec import parse_spec
from services.store import Store


@pytest.mark.timeout(600)
def test_reference_workers_killed_mid_campaign(ray_session, tiny_spec):
    spec = parse_spec({**tiny_spec, "executor": "ray", "steps": 8, "chains": 3,
                       "reference": "ase:tests.unit.reference.slow_emt:make",
                       "resources": {"reference": {"workers": 3, "num_cpus": 0.25}}})
    run = CampaignRun(spec, log=lambda m: None)
    killed = []

    async def main():
        task = asyncio.create_task(run.run())
        q = run.subscribe()
        steps = 0
        while True:
            ev = await q.get()
            if ev is None:
                break
            if ev["kind"] != "step":
                continue
            steps += 1
            if steps == 4:  # restartable kill: Ray brings it back on a new port
                actor = run.pool._endpoints[0][0]
                ray_session.kill(actor, no_restart=False)
                killed.append("restart")
            if steps == 9:  # gone for good
                actor = run.pool._endpoints[-1][0]
                ray_session.kill(actor, no_restart=True)
                killed.append("dead")
        return await task

    summary = asyncio.run(main())
    assert killed == ["restart", "dead"]
    assert run.state == "finished", run.message
    assert summary["steps"] == {f"chain00{c}": 8 for c in range(3)}
    assert summary["reference_failures"] == 0
    assert run.pool is not None and len(run.pool.addresses) <= 3
    a = Store(spec.store, read_only=True).read(campaign="tiny").arrays
    hmc = a["source"] == "hmc"
    keys = list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))
    assert sorted(keys) == [(f"chain00{c}", s) for c in range(3) for s in range(1, 9)]


@pytest.mark.timeout(600)
def test_trainer_task_killed_mid_training_is_retried(ray_session, tiny_spec, tmp_path,
                                                     monkeypatch):
    """On Ray the re-training is a task with the trainer's resources; its worker is
    SIGKILLed once, after training and before returning the model: Ray retries the task,
    the model is published once per due re-training, and the campaign completes."""
    once = tmp_path / "trainer-killed"
    monkeypatch.setenv("NNMD_FAULT", "trainer_task:1")
    monkeypatch.setenv("NNMD_FAULT_ONCE", str(once))
    spec = parse_spec({**tiny_spec, "executor": "ray", "steps": 4, "retrain_every": 4,
                       "resources": {"reference": {"workers": 1, "num_cpus": 0.25},
                                     "trainer": {"num_cpus": 0.5}}})
    run = CampaignRun(spec, log=lambda m: None)
    summary = asyncio.run(run.run())
    assert once.exists()  # the trainer's worker was killed
    assert run.state == "finished", run.message
    assert summary["steps"] == {"chain000": 4, "chain001": 4}
    store = Store(spec.store, read_only=True)
    metas = [dict(store._group(f"models/v{v:06d}").attrs)["metadata"]
             for v in store.model_versions()]
    mine = [m for m in metas if m.get("campaign") == "tiny"]
    # the first model (bootstrap) and one per 4 chain labels: 8 labels -> v2, v3
    assert [m["n_labels"] for m in mine] == [0, 4, 8]
    a = store.read(campaign="tiny").arrays
    hmc = a["source"] == "hmc"
    keys = list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))
    assert len(keys) == len(set(keys)) == 8
