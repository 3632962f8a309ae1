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
