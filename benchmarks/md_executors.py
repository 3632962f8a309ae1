"""The coordinator's CPU per chain step: MD proposals in its own process vs on MD executors.

    .venv/bin/python benchmarks/md_executors.py --chains 4 --steps 12 --md-steps 20

One EMT Cu campaign (re-training off; the bootstrap and the first model made once, then
the store copied for each mode) runs with executor ray: the reference on one Ray
reference worker, and the chains' HMC proposals either in the coordinator's own proposal engine
(resources.md.workers 0) or on 2 MD executor actors (workers 2). Each mode first runs
`--warmup` steps (numba compiles, the executors start and load the model), then the
measured steps as a resume of the same campaign: coordinator CPU = time.process_time()
of this process (every thread: MD, Ray driver, gRPC, store writes, the event loop) over
the measured part's steady state (from its first chain step's event to its last), divided
by the chain steps in between; also over the whole resumed run (start-up and the end
included). Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {"descriptor": {"n_radial": 8, "n_angular": 4, "r_radial": 4.5, "r_angular": 3.5},
         "hidden": [24, 24], "max_epochs": 20, "warmup_epochs": 3, "validation_fraction": 0.0}


def _run(spec_dict):
    """(run, summary, [(process CPU s, wall s) at each chain step's event])."""
    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.spec import parse_spec

    run = CampaignRun(parse_spec(spec_dict), log=lambda m: None)
    marks = []

    async def main():
        task = asyncio.create_task(run.run())
        q = run.subscribe()
        while (ev := await q.get()) is not None:
            if ev["kind"] == "step":
                marks.append((time.process_time(), time.perf_counter()))
        return await task

    summary = asyncio.run(main())
    assert run.state == "finished", run.message
    return run, summary, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--md-steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2, help="supercell repeat of the 4-atom cell")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import ray
    from ase.build import bulk

    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    tmp = Path(tempfile.mkdtemp(prefix="nnmd-mdexec-"))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(args.repeat)
    atoms.write(tmp / "cu.xyz")
    base = {"name": "bench", "reference": "emt", "structure": str(tmp / "cu.xyz"),
            "store": str(tmp / "base"), "chains": args.chains, "steps": 0,
            "temperature": 600.0, "md_steps": args.md_steps, "md_steps_min": args.md_steps,
            "md_steps_max": args.md_steps, "dt": 1.0, "retrain_every": 0,
            "bootstrap_steps": 6, "bootstrap_dt": 2.0, "seed": 1, "train": TRAIN,
            "executor": "local", "sampling": {"adapt": False}}
    _run(base)
    rows = []
    for mode, workers in (("in-process", 0), (f"{args.workers} MD executors", args.workers)):
        store = str(tmp / f"store-{workers}")
        shutil.copytree(base["store"], store)
        spec = {**base, "store": store, "executor": "ray",
                "resources": {"reference": {"workers": 1, "num_cpus": 0.5},
                              "md": {"workers": workers, "num_cpus": 0.5}}}
        _run({**spec, "steps": args.warmup})  # numba compiled, executors started
        steps = args.warmup + args.steps
        cpu0 = time.process_time()
        run, summary, marks = _run({**spec, "steps": steps})
        cpu = time.process_time() - cpu0
        n = int(summary["chain_steps"])
        # steady state: from the first chain step's event to the last (no start-up, no
        # end-of-run work)
        k = len(marks) - 1
        row = {"mode": mode, "atoms": len(atoms), "chains": args.chains,
               "md_steps": args.md_steps, "chain_steps": n,
               "coordinator_cpu_ms_per_step": round(1e3 * (marks[-1][0] - marks[0][0]) / k, 2),
               "coordinator_cpu_ms_per_step_whole_run": round(1e3 * cpu / n, 2),
               "wall_s_per_step": round((marks[-1][1] - marks[0][1]) / k, 4),
               "loop_cpu_ms_per_step": round(1e3 * summary["seconds_loop_cpu"] / n, 2),
               "md_wait_ms_per_step": round(1e3 * summary["seconds_md"] / n, 2),
               "md_executors": run.status()["md_executors"],
               "machine": f"{platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} CPUs",
               "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
