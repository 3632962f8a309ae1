"""The coordinator under load: many chains on one coordinator, a simulated reference.

    .venv/bin/python benchmarks/coordinator_load.py --chains 200 1000 --steps 25
    .venv/bin/python benchmarks/coordinator_load.py --nodes 100 --workers-per-node 8 \
        --chains 1000 --steps 25 --node-failures 20 --latency-ms 2000
    .venv/bin/python benchmarks/coordinator_load.py ... --md-workers 2   # MD on executors
    .venv/bin/python benchmarks/coordinator_load.py --chains 200 --ray-workers 2   # real path

The real coordinator code runs (orchestrator.slhmc.Campaign.run_async: chains as asyncio
tasks, NNP MD proposals batched on the campaign's proposal engine thread
(services.md.proposals), or with --md-workers batched on MD executor actors (RayMDPool,
a local Ray instance), the store writer's group commit of each step's
label and checkpoint); only the reference is simulated. Cells are 4-atom fcc Cu and the
NNP proposal is 2 MD steps of a tiny model, so the MD costs little and the coordinator's
own costs show.

What is simulated: the reference. A call waits a latency drawn from a log-normal
distribution (--latency-ms median, --latency-sigma) and returns EMT labels. The EMT work
stands for what a remote node computes: it runs in a small thread pool of this process
(off the event loop; one EMT calculator a thread, set up once and called directly,
without ASE's per-call state checks) and its CPU is reported apart ("simulated reference
CPU"); it still takes CPU from the same cores. With --nodes, the reference is a simulated
cluster: nodes x workers slots; a call waits for a free slot; --node-failures nodes fail
at random times, each call in flight there is lost after --detect-s (the gRPC call fails,
as when a Ray node dies) and retried on another node, and the node comes back after
--down-s. The failure times fall in the first 80% of a run at the ideal rate, so every
failure happens during the chain phase however fast the coordinator is.

What is measured (the chain phase only: the bootstrap, the first training and the
chains' set-up are left out; their seconds are in "setup"):

- wall s and chain steps/s: from the end of the chains' set-up to the end of the run,
  all chain steps over that time. With --steps N the first wave (every chain proposes at
  once) and the end (the slowest chains' last steps, a log-normal tail of several median
  latencies whatever N is) are part of it: use 20-30 steps a chain so they weigh little;
- steady steps/s: the rate between the 10% and the 90% completed chain steps (the run
  without its ramp-up and tail), what a long campaign sustains;
- ideal steps/s = min(chains, slots) / mean latency of the calls made (every slot busy
  all the time), as before; % of ideal for both rates;
- process CPU: all CPU time of the coordinator process per chain step over the chain
  phase (MD proposals, store commits, bookkeeping, the simulated reference's EMT too);
  steady CPU: the same between the 10% and 90% marks; simulated reference CPU: the EMT
  part per call, to subtract for the coordinator's own;
- loop CPU: CPU time of the event-loop thread alone (the chains' bookkeeping, Metropolis
  decisions, events), per chain step;
- store, MD latency and reference wait: how long a chain step waits, on average, for its
  label + checkpoint commit, for its MD proposal (queueing included), and for its
  reference call (slot queueing, retries after node failures and the labels included);
- peak RSS of the process.

A chain's cycle is MD + reference + store: with C chains the rate is C / cycle, and it
reaches the ideal only while every slot is busy, i.e. while MD + store latency stay
below (C - slots) / ideal rate of the cycle (about 0.6 s for 1,000 chains, 800 slots and
2 s calls).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import resource
import tempfile
import threading
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
        self.median, self.sigma = median_s, sigma
        self.rng = random.Random(seed)
        self._local = threading.local()
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
        self._pool = None
        self.labels = True  # False: no labels computed (run_bound)
        self.label_cpu_s = 0.0  # CPU of the EMT labels (work of the simulated nodes)

    def _labels_now(self, atoms):
        from ase.calculators.calculator import all_changes

        from services.reference.types import Result
        from services.runtime.convert import stress_3x3

        c0 = time.thread_time()
        # the EMT calculator is set up once (its neighbour list and parameters kept while
        # the atoms' species stay the same); ASE's per-call state bookkeeping is skipped
        calc = getattr(self._local, "calc", None)
        if calc is None:  # one calculator a thread: ASE calculators are not thread-safe
            from ase.calculators.emt import EMT

            calc = self._local.calc = EMT()
        last = calc.atoms
        same = last is not None and np.array_equal(last.numbers, atoms.numbers)
        calc.calculate(atoms, ["energy", "forces", "stress"],
                       ["positions", "cell"] if same else all_changes)
        r = calc.results
        out = Result(float(r["energy"]), np.array(r["forces"]), stress_3x3(r["stress"]))
        self.label_cpu_s += time.thread_time() - c0
        return out

    async def _labels(self, atoms):
        """The labels a remote node would return: EMT in one thread of this process (off
        the event loop; its CPU is counted apart, label_cpu_s)."""
        if not self.labels:
            return None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(4, thread_name_prefix="simulated-reference")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._labels_now,
                                                                atoms)

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
            return await self._labels(atoms)
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
                return await self._labels(atoms)
            # lost with its node: noticed after detect_s, then tried elsewhere
            self.retries += 1
            await asyncio.sleep(self.detect_s)
            back = self._down.get(node, time.monotonic())
            loop.call_later(max(0.0, back - time.monotonic()), self._free.put_nowait, node)


def run_bound(chains: int, steps: int, ref: SimulatedReference) -> dict:
    """The same chains and cluster with a coordinator that costs nothing: each chain only
    calls the simulated reference, `steps` times (no MD, no store, no labels). Its rate is
    what this cluster and these chains allow, the end-of-run tail included."""
    ref.labels = False
    marks: list[float] = []

    async def chain():
        for _ in range(steps):
            await ref.compute(None)
            marks.append(time.perf_counter())

    async def main():
        t0 = time.perf_counter()
        await asyncio.gather(*(chain() for _ in range(chains)))
        return t0

    t0 = asyncio.run(main())
    n = len(marks)
    n_ss = math.ceil(0.9 * n) - math.ceil(0.1 * n)
    return {"wall": marks[-1] - t0, "rate": n / (marks[-1] - t0),
            "rate_ss": n_ss / (_at(marks, 0.9) - _at(marks, 0.1)),
            "ref_mean_s": float(np.mean(ref.latencies)), "retries": ref.retries}


def _at(marks: list, frac: float):
    """The mark (time, process CPU, loop CPU) of the step that completes fraction ``frac``."""
    return marks[min(len(marks) - 1, max(0, math.ceil(frac * len(marks)) - 1))]


def run_one(chains: int, steps: int, ref, tmp: str, md_workers: int = 0) -> dict:
    path = Path(tmp) / "cu4.xyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).write(path)  # 4 atoms
    cfg = CampaignConfig(reference="emt", structure=str(path), campaign="load", chains=chains,
                         steps=steps, temperature=600.0, md_steps=2, md_steps_min=2,
                         md_steps_max=2, dt=1.0, retrain_every=0, bootstrap_steps=8,
                         bootstrap_dt=2.0, train=TINY_TRAIN)
    camp = Campaign(cfg, str(Path(tmp) / "store"), log=lambda m: None)
    pool = None
    marks: list[tuple[float, float, float]] = []  # per chain step: wall, process CPU

    def on_event(event: dict) -> None:
        if event["kind"] == "step":
            marks.append((time.perf_counter(), time.process_time()))

    start: list[tuple[float, float]] = []
    init_chains = camp.init_chains

    def init_and_mark():  # the chain phase starts once the chains are read / made
        out = init_chains()
        start.append((time.perf_counter(), time.process_time()))
        return out

    camp.init_chains = init_and_mark
    try:
        from ase.io import read

        if md_workers:
            from orchestrator.coordinator.executors import RayMDPool

            pool = RayMDPool(camp.store.url, md_workers, num_cpus=0.01)
            camp.md_executor = pool
        atoms = read(path)
        s = asyncio.run(camp.run_async(atoms, reference=ref, on_event=on_event))
        t_end, cpu_end = time.perf_counter(), time.process_time()
    finally:
        if pool is not None:
            pool.close()
        camp.close()
    n = s["chain_steps"]
    (t0, c0), k10, k90 = start[0], _at(marks, 0.1), _at(marks, 0.9)
    n_ss = math.ceil(0.9 * n) - math.ceil(0.1 * n)
    ref_cpu = getattr(ref, "label_cpu_s", 0.0)
    return {"chains": chains, "steps": steps, "chain_steps": n,
            "wall": t_end - t0, "rate": n / (t_end - t0),
            "cpu_ms": 1e3 * (cpu_end - c0) / n,
            "rate_ss": n_ss / (k90[0] - k10[0]),
            "cpu_ss_ms": 1e3 * (k90[1] - k10[1]) / n_ss,
            "ref_cpu_ms": 1e3 * ref_cpu / max(1, getattr(ref, "calls", n)),
            "loop_ms": 1e3 * s["seconds_loop_cpu"] / n,
            "store_ms": 1e3 * s["seconds_store"] / n, "md_ms": 1e3 * s["seconds_md"] / n,
            "ref_wait_s": s["seconds_reference"] / max(1, s["reference_calls"]),
            "ref_mean_s": float(np.mean(ref.latencies)) if ref.latencies else float("nan"),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds_setup": t0 - (t_end - s["seconds"]), "retries": ref.retries,
            "labels": s["labels"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--steps", type=int, default=25, help="steps per chain")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="median reference latency")
    ap.add_argument("--latency-sigma", type=float, default=0.5, help="log-normal sigma")
    ap.add_argument("--nodes", type=int, default=0, help="simulate a cluster of this many nodes")
    ap.add_argument("--workers-per-node", type=int, default=8)
    ap.add_argument("--node-failures", type=int, default=0)
    ap.add_argument("--detect-s", type=float, default=1.0)
    ap.add_argument("--down-s", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md-workers", type=int, default=0,
                    help="MD proposals on this many MD executor actors (RayMDPool, the "
                         "coordinator's real path; a local Ray instance) instead of the "
                         "campaign's own proposal engine thread")
    ap.add_argument("--bound", action="store_true",
                    help="instead of the campaign: the same chains and cluster with a coordinator "
                         "that costs nothing (chains that only call the simulated "
                         "reference): the rate the cluster allows, end-of-run tail included")
    ap.add_argument("--ray-workers", type=int, default=0,
                    help="instead of the simulated reference: EMT in this many Ray actors "
                         "serving the Reference gRPC service (the campaign's real path)")
    args = ap.parse_args()
    if args.ray_workers:
        return ray_main(args)
    if args.md_workers:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}, reference latency "
          f"log-normal median {args.latency_ms:g} ms sigma {args.latency_sigma:g}"
          + (f", {args.nodes} nodes x {args.workers_per_node} workers, "
             f"{args.node_failures} node failures (detected after {args.detect_s:g} s, "
             f"down {args.down_s:g} s)" if args.nodes else ", unlimited reference slots")
          + (f", MD on {args.md_workers} MD executors" if args.md_workers
             else ", MD batched in the coordinator's proposal engine thread"))
    head = ("| chains | chain steps | wall s | chain steps/s | steady steps/s | process CPU "
            "ms/step | steady CPU ms/step | simulated reference CPU ms/call | loop CPU ms/step "
            "| store latency ms | MD latency ms | peak RSS MB |")
    if args.nodes:
        head += " ideal steps/s | reference wait s | % of ideal (steady) | retries |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for chains in args.chains:
        slots = args.nodes * args.workers_per_node if args.nodes else chains
        mean_s = args.latency_ms / 1e3 * math.exp(args.latency_sigma ** 2 / 2)
        # node failures fall in the first 80% of a run at the ideal rate, so that all of
        # them happen during the chain phase however fast the coordinator is
        horizon = max(5.0, 0.8 * chains * args.steps / (min(chains, slots) / mean_s))
        ref = SimulatedReference(args.latency_ms / 1e3, args.latency_sigma, args.seed,
                                 args.nodes, args.workers_per_node, args.node_failures,
                                 horizon_s=horizon, detect_s=args.detect_s,
                                 down_s=args.down_s)
        if args.bound:
            b = run_bound(chains, args.steps, ref)
            ideal = min(chains, slots) / b["ref_mean_s"]
            print(f"# {chains} chains, reference alone (a coordinator that costs nothing): "
                  f"wall {b['wall']:.1f} s, {b['rate']:.1f} chain steps/s "
                  f"({100 * b['rate'] / ideal:.0f}% of ideal {ideal:.0f}), steady "
                  f"{b['rate_ss']:.1f} ({100 * b['rate_ss'] / ideal:.0f}%), "
                  f"{b['retries']} retries", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = run_one(chains, args.steps, ref, tmp, args.md_workers)
        line = (f"| {chains} | {r['chain_steps']} | {r['wall']:.1f} | {r['rate']:.1f} | "
                f"{r['rate_ss']:.1f} | {r['cpu_ms']:.2f} | {r['cpu_ss_ms']:.2f} | "
                f"{r['ref_cpu_ms']:.2f} | {r['loop_ms']:.2f} | {r['store_ms']:.1f} | "
                f"{r['md_ms']:.1f} | {r['rss_mb']:.0f} |")
        if args.nodes:
            ideal = min(chains, args.nodes * args.workers_per_node) / r["ref_mean_s"]
            line += (f" {ideal:.0f} | {r['ref_wait_s']:.2f} | {100 * r['rate'] / ideal:.0f}% "
                     f"({100 * r['rate_ss'] / ideal:.0f}%) | {r['retries']} |")
        print(line, flush=True)
        print(f"# {chains} chains: setup (bootstrap, first training, chains) "
              f"{r['seconds_setup']:.1f} s, not in wall s", flush=True)
    print(f"# load at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


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
            print(f"| {chains} | {r['chain_steps']} | {r['wall']:.1f} | {r['rate']:.1f} | "
                  f"{r['cpu_ms']:.1f} | {r['loop_ms']:.2f} | {r['store_ms']:.1f} | "
                  f"{r['md_ms']:.1f} | {1e3 * r['ref_mean_s']:.1f} | {r['rss_mb']:.0f} |",
                  flush=True)
    finally:
        pool.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
