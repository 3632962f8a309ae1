"""The campaign driver of test_multinode_ray, run as its own process.

``python -m tests.integration.faults.multinode_driver SPEC.json PROGRESS.json``: makes the
campaign's bootstrap and first model in this process (executor local, steps 0), then runs
the campaign on the Ray cluster that RAY_ADDRESS names (executor ray, as `nnmd campaign
run` does), and writes its progress to PROGRESS.json (atomically, on every chain step and
every 0.3 s): the chain steps done, the state, and where the work runs (status()'s
md_executors and reference_workers, the pools' retries). The test reads it to check the
placement and to time its node kills; at the end it holds the summary too.

A process of its own, because the test session has its own in-process Ray (ray_session):
one process can be the driver of one Ray cluster only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import traceback


def _write(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, default=str)
    os.replace(tmp, path)


def main(spec_path: str, progress_path: str) -> int:
    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.spec import parse_spec

    with open(spec_path) as f:
        raw = json.load(f)
    t0 = time.monotonic()
    local = CampaignRun(parse_spec({**raw, "executor": "local", "steps": 0}),
                        log=lambda m: None)
    asyncio.run(local.run())  # the bootstrap labels and model v1, before Ray
    assert local.state == "finished", local.message
    boot_s = time.monotonic() - t0

    run = CampaignRun(parse_spec(raw), log=lambda m: print(m, file=sys.stderr, flush=True))
    doc = {"state": "pending", "steps": 0, "bootstrap_s": boot_s, "log": []}

    def snapshot() -> None:
        try:
            st = run.status()
        except Exception:  # noqa: BLE001 - not started yet
            st = {}
        doc.update(state=run.state, message=run.message,
                   md_executors=st.get("md_executors", []),
                   reference_workers=st.get("reference_workers", []),
                   md_retries=run.md_pool.retries if run.md_pool is not None else 0,
                   reference_retries=run.pool.retries if run.pool is not None else 0,
                   seconds=time.monotonic() - t0)
        _write(progress_path, doc)

    async def drive():
        task = asyncio.create_task(run.run())
        q = run.subscribe()

        async def tick():
            while not task.done():
                snapshot()
                await asyncio.sleep(0.3)

        ticker = asyncio.create_task(tick())
        while (ev := await q.get()) is not None:
            if ev["kind"] == "step":
                doc["steps"] += 1
                snapshot()
            elif ev["kind"] == "log":
                doc["log"].append(ev["message"])
        try:
            return await task
        finally:
            ticker.cancel()

    try:
        summary = asyncio.run(drive())
    except BaseException:
        doc["error"] = traceback.format_exc()
        snapshot()
        raise
    doc["summary"] = summary
    snapshot()
    return 0 if run.state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
