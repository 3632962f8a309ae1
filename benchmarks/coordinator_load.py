"""The coordinator under load: many chains on one coordinator, a simulated reference.

    .venv/bin/python benchmarks/coordinator_load.py --chains 200 1000 --steps 5
    .venv/bin/python benchmarks/coordinator_load.py --nodes 100 --workers-per-node 8 \
        --chains 1000 --steps 5 --node-failures 10
    .venv/bin/python benchmarks/coordinator_load.py --chains 200 --ray-workers 2   # real path

The real coordinator code runs (orchestrator.slhmc.Campaign.run_async: chains as asyncio
tasks, NNP MD proposals, the store's single writer with group commit, a checkpoint per
chain step); only the reference is simulated: each call waits a latency drawn from a
log-normal distribution (--latency-ms median, --latency-sigma) and returns EMT labels.
Cells are 4-atom fcc Cu and the NNP proposal is 2 MD steps of a tiny model, so the MD
costs little and the coordinator's own costs show:

- process CPU: all CPU time of the coordinator process (MD proposals, store writes,
  bookkeeping; also the bootstrap and the first small training), per chain step;
- loop CPU: CPU time of the event-loop thread alone (the chains' bookkeeping, Metropolis
  decisions, events), per chain step;
- store and MD latency: how long a chain step waits for its label append + checkpoint,
  and for its MD proposal (one MD thread serves all chains), mean per chain step;
- peak RSS of the process.

With --nodes, the reference is a simulated cluster: nodes x workers slots; a call waits
for a free slot; --node-failures nodes fail at random times during the run, each call in
flight there is lost after --detect-s (the gRPC call fails, as when a Ray node dies) and
retried on another node, and the node comes back after --down-s. The table then shows
how far the campaign's throughput is from the cluster's ideal (slots / mean latency), and
where the limit is: the coordinator's loop CPU per step bounds one coordinator to about
1 / (loop CPU per step) chain steps per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from orchestrator.slhmc import Campaign, CampaignConfig

TINY_TRAIN = {"descriptor": {"n_radial": 4, "n_angular": 2, "r_radial": 3.5, "r_angular": 3.0},
              "hidden": [4], "max_epochs": 5, "warmup_epochs": 1, "validation_fraction": 0.0}


class SimulatedReference:
    """EMT labels after a log-normal latency; optionally a cluster of nodes that fail."""

    def __init__(self, median_s: float, sigma: float, seed: int = 0, nodes: int = 0,
                 workers_per_node: int = 1, failures: int = 0, horizon_s: float = 60.0,
                 detect_s: float = 1.0, down_s: float = 5.0) -> None:
        from ase.calculators.emt import EMT

        self.median, self.sigma = median_s, sigma
        self.rng = random.Random(seed)
        self.calc = EMT()
        self.nodes = nodes
        self.calls = self.retries = 0
        self.latencies: list[float] = []
        self.detect_s, self.down_s = detect_s, down_s
        self.failure_times = sorted(self.rng.uniform(0.1, horizon_s) for _ in range(failures))
        self.workers_per_node = workers_per_node
        self._free: asyncio.Queue | None = None
        self._down: dict[int, float] = {}  # node -> time it comes back
        self._t0: float | None = None  # the failure clock starts with the first call
        self._busy: dict[int, set] = {}

    def _labels(self, atoms):
        from services.reference.types import Result

        a = atoms.copy()
        a.calc = self.calc
        return Result(a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=False))

    async def _slot(self):
        if self._free is None:
            self._free = asyncio.Queue()
            for n in range(self.nodes):
                for _ in range(self.workers_per_node):
                    self._free.put_nowait(n)
        while True:
            node = await self._free.get()
            back = self._down.get(node)
            if back is None or time.monotonic() >= back:
                self._down.pop(node, None)
                return node
            # the node is down: its slot returns when it does
            asyncio.get_running_loop().call_later(back - time.monotonic(),
                                                  self._free.put_nowait, node)

    def _maybe_fail(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        now = time.monotonic() - self._t0
        while self.failure_times and self.failure_times[0] <= now:
            self.failure_times.pop(0)
            node = self.rng.randrange(self.nodes)
            self._down[node] = time.monotonic() + self.down_s
            for fut in list(self._busy.get(node, ())):
                if not fut.done():
                    fut.set_result("lost")

    async def compute(self, atoms):
        latency = self.median * float(np.exp(self.sigma * self.rng.gauss(0.0, 1.0)))
        if not self.nodes:
            self.calls += 1
            self.latencies.append(latency)
            await asyncio.sleep(latency)
            return self._labels(atoms)
        while True:
            node = await self._slot()
            self._maybe_fail()
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._busy.setdefault(node, set()).add(fut)
            handle = loop.call_later(latency, lambda f=fut: f.done() or f.set_result("ok"))
            how = await fut
            handle.cancel()
            self._busy[node].discard(fut)
            if how == "ok":
                self.calls += 1
                self.latencies.append(latency)
                self._free.put_nowait(node)
                return self._labels(atoms)
            # lost with its node: noticed after detect_s, then tried elsewhere
            self.retries += 1
            await asyncio.sleep(self.detect_s)
            back = self._down.get(node, time.monotonic())
            loop.call_later(max(0.0, back - time.monotonic()), self._free.put_nowait, node)


def run_one(chains: int, steps: int, ref: SimulatedReference, tmp: str) -> dict:
    path = Path(tmp) / "cu4.xyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).write(path)  # 4 atoms
    cfg = CampaignConfig(reference="emt", structure=str(path), campaign="load", chains=chains,
                         steps=steps, temperature=600.0, md_steps=2, md_steps_min=2,
                         md_steps_max=2, dt=1.0, retrain_every=0, bootstrap_steps=8,
                         bootstrap_dt=2.0, train=TINY_TRAIN)
    camp = Campaign(cfg, str(Path(tmp) / "store"), log=lambda m: None)
    try:
        from ase.io import read

        atoms = read(path)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        s = asyncio.run(camp.run_async(atoms, reference=ref))
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        # bootstrap and the first training are inside; subtract them by their own timers
        cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
    finally:
        camp.close()
    n = s["chain_steps"]
    return {"chains": chains, "steps": steps, "chain_steps": n, "wall": wall,
            "cpu_ms": 1e3 * cpu / n,
            "rate": n / s["seconds"], "loop_ms": 1e3 * s["seconds_loop_cpu"] / n,
            "store_ms": 1e3 * s["seconds_store"] / n, "md_ms": 1e3 * s["seconds_md"] / n,
            "ref_mean_s": float(np.mean(ref.latencies)) if ref.latencies else float("nan"),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss0_mb": rss0 / 1024, "seconds": s["seconds"], "retries": ref.retries,
            "labels": s["labels"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=50.0, help="median reference latency")
    ap.add_argument("--latency-sigma", type=float, default=0.5, help="log-normal sigma")
    ap.add_argument("--nodes", type=int, default=0, help="simulate a cluster of this many nodes")
    ap.add_argument("--workers-per-node", type=int, default=8)
    ap.add_argument("--node-failures", type=int, default=0)
    ap.add_argument("--detect-s", type=float, default=1.0)
    ap.add_argument("--down-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-workers", type=int, default=0,
                    help="instead of the simulated reference: EMT in this many Ray actors "
                         "serving the Reference gRPC service (the campaign's real path)")
    args = ap.parse_args()
    if args.ray_workers:
        return ray_main(args)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, reference latency log-normal median "
          f"{args.latency_ms:g} ms sigma {args.latency_sigma:g}"
          + (f", {args.nodes} nodes x {args.workers_per_node} workers, "
             f"{args.node_failures} node failures (detected after {args.detect_s:g} s, "
             f"down {args.down_s:g} s)" if args.nodes else ", unlimited reference slots"))
    head = ("| chains | chain steps | wall s | chain steps/s | process CPU ms/step | "
            "loop CPU ms/step | store latency ms | MD latency ms | peak RSS MB |")
    if args.nodes:
        head += " ideal steps/s | retries |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for chains in args.chains:
        # failures fall within the expected run: the slower of the cluster and the
        # coordinator (about 50 chain steps/s here) sets its length
        slots = max(1, args.nodes * args.workers_per_node)
        rate = min(min(chains, slots) / (args.latency_ms / 1e3), 50.0)
        horizon = max(5.0, 0.8 * chains * args.steps / rate)
        ref = SimulatedReference(args.latency_ms / 1e3, args.latency_sigma, args.seed,
                                 args.nodes, args.workers_per_node, args.node_failures,
                                 horizon_s=horizon, detect_s=args.detect_s,
                                 down_s=args.down_s)
        with tempfile.TemporaryDirectory() as tmp:
            r = run_one(chains, args.steps, ref, tmp)
        line = (f"| {chains} | {r['chain_steps']} | {r['seconds']:.1f} | {r['rate']:.1f} | "
                f"{r['cpu_ms']:.1f} | {r['loop_ms']:.2f} | {r['store_ms']:.1f} | {r['md_ms']:.1f} | "
                f"{r['rss_mb']:.0f} |")
        if args.nodes:
            ideal = min(chains, args.nodes * args.workers_per_node) / r["ref_mean_s"]
            line += f" {ideal:.0f} | {r['retries']} |"
        print(line, flush=True)


class _Counting:
    """The Ray pool, with the latencies of its calls recorded."""

    def __init__(self, pool) -> None:
        self.pool, self.latencies, self.retries = pool, [], 0

    async def compute(self, atoms):
        t0 = time.perf_counter()
        out = await self.pool.compute(atoms)
        self.latencies.append(time.perf_counter() - t0)
        return out


def ray_main(args) -> None:
    import ray

    from orchestrator.coordinator.executors import RayReferencePool

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    pool = RayReferencePool("emt", args.ray_workers, num_cpus=0.5)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, EMT in {args.ray_workers} Ray actors over gRPC")
    head = ("| chains | chain steps | wall s | chain steps/s | process CPU ms/step | "
            "loop CPU ms/step | store latency ms | MD latency ms | reference round trip ms "
            "| peak RSS MB |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    try:
        for chains in args.chains:
            ref = _Counting(pool)
            with tempfile.TemporaryDirectory() as tmp:
                r = run_one(chains, args.steps, ref, tmp)
            print(f"| {chains} | {r['chain_steps']} | {r['seconds']:.1f} | {r['rate']:.1f} | "
                  f"{r['cpu_ms']:.1f} | {r['loop_ms']:.2f} | {r['store_ms']:.1f} | "
                  f"{r['md_ms']:.1f} | {1e3 * r['ref_mean_s']:.1f} | {r['rss_mb']:.0f} |",
                  flush=True)
    finally:
        pool.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
