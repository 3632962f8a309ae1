"""One campaign's life: build it from a spec, run it on an event loop, report on it.

Shared by `nnmd campaign run SPEC` (in the foreground) and the Coordinator service
(many campaigns on the server's event loop). The chains are asyncio tasks
(orchestrator.slhmc.Campaign.run_async); the reference runs in local threads
(executor "local") or in a pool of Ray actors that serve the Reference gRPC service
(executor "ray", spread over the cluster's nodes by their resources). The chains' NNP MD
proposals run on `resources.md.workers` MD executor actors (executor "ray", workers >= 1:
RayMDPool), else in threads of this process; re-training runs in a thread, or as a Ray
task with the trainer's resources.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import sys
import time
from collections.abc import Callable

from orchestrator.coordinator.spec import CampaignSpec

STATES = ("pending", "running", "stopping", "finished", "stopped", "failed")
TERMINAL = ("finished", "stopped", "failed")


class _SyncBackend:
    """A sync ``compute(atoms_list)`` over an async pool, for the (threaded) bootstrap."""

    def __init__(self, pool, loop, name: str) -> None:
        self._pool, self._loop, self.name = pool, loop, name

    def compute(self, atoms_list):
        futures = [asyncio.run_coroutine_threadsafe(self._pool.compute(a), self._loop)
                   for a in atoms_list]
        return [f.result() for f in futures]


class CampaignRun:
    """A campaign from a validated spec. ``await run()``; ``stop()``; ``status()``; events."""

    def __init__(self, spec: CampaignSpec, log: Callable[[str], None] | None = None,
                 history: int = 10000) -> None:
        self.spec = spec
        self.name = spec.name
        self.state = "pending"
        self.message = ""
        self.summary: dict | None = None
        self.campaign = None
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._stop = asyncio.Event()
        self._subscribers: list[asyncio.Queue] = []
        self.events: collections.deque = collections.deque(maxlen=history)
        self.started = time.time()
        self.pool = None
        self.md_pool = None  # RayMDPool: the chains' MD proposals (executor ray, md.workers)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on

    # ------------------------------------------------------------ events
    def log(self, msg: str) -> None:
        self.message = msg
        self._log(msg)
        event = {"kind": "log", "message": msg}
        loop = self._loop
        try:
            on_loop = loop is None or asyncio.get_running_loop() is loop
        except RuntimeError:  # a thread (training, the bootstrap): hand it to the loop
            on_loop = False
        if on_loop:
            self._publish(event)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._publish, event)

    def _publish(self, event: dict) -> None:
        event = {"campaign": self.name, "time": time.time(), **event}
        self.events.append(event)
        for q in list(self._subscribers):
            if q.full():  # a slow watcher loses its oldest events, never blocks the chains
                q.get_nowait()
            q.put_nowait(event)

    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize)
        self._subscribers.append(q)
        if self.state in TERMINAL:
            q.put_nowait(self._state_event())
            q.put_nowait(None)
        return q

    def unsubscribe(self, q) -> None:
        if q in self._subscribers:
            self._subscribers.remove(q)

    def _state_event(self) -> dict:
        return {"campaign": self.name, "kind": "state", "state": self.state,
                "message": self.message, "time": time.time()}

    def _set_state(self, state: str, message: str = "") -> None:
        self.state = state
        if message:
            self.message = message
        self._publish({"kind": "state", "state": state, "message": self.message})
        if state in TERMINAL:
            for q in list(self._subscribers):
                q.put_nowait(None)

    # ------------------------------------------------------------ control
    def stop(self) -> str:
        if self.state in ("pending", "running"):
            self._set_state("stopping", "stopping after each chain's current step")
            self._stop.set()
        return self.state

    async def run(self) -> dict:
        from orchestrator.slhmc import Campaign, read_structure

        spec, cfg = self.spec, self.spec.config
        loop = self._loop = asyncio.get_running_loop()
        executor = spec.resolved_executor()
        try:
            self._set_state("running", f"starting ({executor} executor)")
            atoms = await asyncio.to_thread(read_structure, cfg)
            reference = None
            if executor == "ray":
                reference = await asyncio.to_thread(self._ray_pool)
                if spec.md_workers > 0:  # started before the campaign takes the store
                    await asyncio.to_thread(self._ray_md_pool)
            self.campaign = await asyncio.to_thread(
                Campaign, cfg, spec.store, self.log, wait_for_model=spec.wait_for_model,
                make_backends=executor == "local")
            if reference is not None:
                from orchestrator.coordinator.executors import ray_trainer

                self.campaign.bootstrap_backend = _SyncBackend(reference, loop,
                                                               self.campaign.backend.name)
                self.campaign.train_fn = ray_trainer(spec.trainer_resources)
                self.campaign.md_executor = self.md_pool  # None: MD threads here
            elif spec.md_workers > 0:
                self.log(f"resources.md.workers {spec.md_workers} needs executor ray; the "
                         "MD proposals run in threads of this process")
            try:
                self.summary = await self.campaign.run_async(
                    atoms, reference=reference, stop=self._stop, on_event=self._publish)
            finally:
                await asyncio.to_thread(self.campaign.close)
            self.summary["executor"] = executor
            failed = self.summary.get("failed_chains", {})
            done = all(v >= cfg.steps or n in failed for n, v in self.summary["steps"].items())
            if spec.production and done and not self._stop.is_set():
                self.summary["production"] = await self._production()
            if reference is not None:
                self.summary["reference_workers"] = reference.addresses
            if self.md_pool is not None:
                await self.md_pool.settle(30.0)  # addresses of executors still restarting
                self.summary["md_executors"] = self.md_pool.workers()
            self._set_state("finished" if done else "stopped",
                            f"{'finished' if done else 'stopped'}: acceptance "
                            f"{_rate(self.summary['acceptance'])}, {self.summary['labels']} labels, "
                            f"model v{self.summary['model_version']}"
                            + (f"; {len(failed)} chain(s) failed: " + "; ".join(
                                f"{n}: {r}" for n, r in failed.items()) if failed else "")
                            + (f"; {self.summary['bias_warning']}"
                               if self.summary.get("bias_warning") else ""))
            return self.summary
        except asyncio.CancelledError:
            self._set_state("stopped", "cancelled")
            raise
        except BaseException as exc:
            self._set_state("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.pool is not None:
                self.pool.close()
            if self.md_pool is not None:
                self.md_pool.close()

    def _ray_pool(self):
        import ray

        from orchestrator.coordinator.executors import RayReferencePool

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, namespace="nnmd",
                     ignore_reinit_error=True, log_to_driver=False)
        r, workers = self.spec.reference_resources, self.spec.config.reference_workers
        self.pool = RayReferencePool(self.spec.config.reference, workers,
                                     qe=self.spec.config.qe, num_cpus=r.num_cpus,
                                     resources=r.resources, max_restarts=r.max_restarts)
        self.log(f"reference: {workers} Ray worker(s) serving {self.spec.config.reference} "
                 f"at {', '.join(self.pool.addresses)}")
        return self.pool

    async def _production(self) -> dict:
        """Production MD (the spec's `production:` block) with the campaign's last model:
        replica r from chain (r mod chains)'s final state, on the MD executors when the
        campaign has them (each replica one call, sent again if its executor dies: the
        frames do not change), else in a thread here. Frames go to
        OUTPUT/replicaNNN.extxyz, rewritten whole when the stage runs again."""
        from pathlib import Path

        from orchestrator.coordinator.executors import production_run
        from orchestrator.coordinator.spec import production_md

        camp, prod, cfg = self.campaign, self.spec.production, self.spec.config
        version = int(self.summary["model_version"])
        names = [n for n in sorted(camp._states) if n not in camp._failed]
        if not names:
            return {"replicas": 0, "files": []}
        engine = prod.get("engine") or (self.md_pool.engine if self.md_pool is not None
                                        else "native")
        where = "MD executors" if self.md_pool is not None else "this process"
        self.log(f"production: {prod['replicas']} replica(s) x {prod['steps']} MD steps with "
                 f"model v{version}, engine {engine}"
                 + (f" on {prod['ranks']} MPI ranks" if engine == "lammps" else "")
                 + f", on {where}")
        t0 = time.perf_counter()
        jobs = []
        for r in range(prod["replicas"]):
            st = camp._states[names[r % len(names)]]
            structure = {"numbers": st.numbers, "positions": st.positions, "cell": st.cell,
                         "pbc": st.pbc}
            md = production_md(prod, cfg, r)
            if self.md_pool is not None:
                jobs.append(self.md_pool.production(version, structure, md))
            else:
                jobs.append(asyncio.to_thread(
                    lambda s=structure, m=md: production_run(camp.model(version), s, m)))
        if self.md_pool is not None:
            runs = await asyncio.gather(*jobs)
        else:  # one at a time: the numba kernels use the cores
            runs = [await j for j in jobs]
        out = Path(prod["output"])
        files = await asyncio.to_thread(_write_production, out, runs, names, version,
                                        self.name)
        temps = [f["temperature_k"] for frames in runs for f in frames[1:]]
        result = {"replicas": len(runs), "steps": prod["steps"], "model_version": version,
                  "engine": engine,
                  "output": str(out), "files": files, "frames": sum(map(len, runs)),
                  "mean_temperature_k": float(sum(temps) / len(temps)) if temps else None,
                  "seconds": time.perf_counter() - t0}
        self.log(f"production: {result['frames']} frames in {out} "
                 f"({result['seconds']:.1f} s)")
        return result

    def _ray_md_pool(self):
        from orchestrator.coordinator.executors import RayMDPool

        r, workers = self.spec.md_resources, self.spec.md_workers
        self.md_pool = RayMDPool(self.spec.store, workers, num_cpus=r.get("num_cpus"),
                                 num_gpus=float(r.get("num_gpus", 0)),
                                 resources=r.get("resources"),
                                 engine=r.get("engine", "native"), ranks=int(r.get("ranks", 1)),
                                 max_restarts=int(r.get("max_restarts", 3)))
        self.log(f"MD: {workers} Ray executor(s) ({self.md_pool.engine}) at "
                 f"{', '.join(self.md_pool.addresses)}")
        return self.md_pool

    def workers(self) -> dict:
        """Where the work runs: {"md_executors": [...], "reference_workers": [...]}, each
        entry {address, calls, kind}."""
        camp = self.campaign
        stats = getattr(camp, "stats", None) or {}
        if self.md_pool is not None:
            md = [{k: w[k] for k in ("address", "calls", "kind")}
                  for w in self.md_pool.workers()]
        elif camp is not None:
            md = [{"address": "in-process", "calls": int(stats.get("chain_steps", 0)),
                   "kind": "md:in-process"}]
        else:
            md = []
        if self.pool is not None:
            ref = self.pool.workers()
        elif camp is not None:
            ref = [{"address": "in-process", "calls": int(stats.get("reference_calls", 0)),
                    "kind": "reference:local"}]
        else:
            ref = []
        return {"md_executors": md, "reference_workers": ref}

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        """The campaign's state and its chains', from memory while it runs."""
        camp = self.campaign
        out = status_from_store(self.spec.store, self.name) if camp is None else None
        if out is None:
            out = {"campaign": self.name, "chains": [], "n_labels": 0, "model_version": 0}
            if camp is not None:
                out["n_labels"] = int(camp._n_hmc or 0)
                out["model_version"] = int(camp.version)
                steps = int(self.spec.config.steps)
                for ev in _latest_steps(self.events).values():
                    row = _chain_row(ev)
                    row["state"] = "finished" if row["step"] >= steps else "running"
                    out["chains"].append(row)
                rows = {c["chain"]: c for c in out["chains"]}
                for name, f in getattr(camp, "_failed", {}).items():
                    row = rows.get(name)
                    if row is None:
                        row = {"chain": name, "step": int(f["step"]) - 1,
                               "acceptance_rate": math.nan, "n_md_steps": 0,
                               "model_version": 0, "temperature_k": math.nan, "phase": ""}
                        out["chains"].append(row)
                    row.update(state="failed", failure=f["reason"])
                out["chains"].sort(key=lambda c: c["chain"])
        out.update(state=self.state, message=self.message, store=self.spec.store,
                   **self.workers())
        return out


def _write_production(out, runs, names, version: int, campaign: str) -> list[str]:
    from ase import Atoms
    from ase.io import write

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r, frames in enumerate(runs):
        chain = names[r % len(names)]
        images = []
        for f in frames:
            a = Atoms(numbers=f["numbers"], positions=f["positions"], cell=f["cell"],
                      pbc=f["pbc"])
            a.info.update(step=f["step"], time_fs=f["time_fs"], energy_nnp=f["energy"],
                          temperature_k=f["temperature_k"], model_version=version,
                          campaign=campaign, chain=chain, replica=r)
            images.append(a)
        path = out / f"replica{r:03d}.extxyz"
        tmp = path.with_suffix(".extxyz.tmp")
        write(tmp, images, format="extxyz")
        os.replace(tmp, path)
        files.append(str(path))
    return files


def _rate(x) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


def _latest_steps(events) -> dict:
    last: dict = {}
    for ev in events:
        if ev.get("kind") == "step":
            last[ev["chain"]] = ev
    return dict(sorted(last.items()))


def _chain_row(ev: dict) -> dict:
    return {"chain": ev["chain"], "step": int(ev["step"]),
            "acceptance_rate": float(ev.get("acceptance_rate", math.nan)),
            "n_md_steps": int(ev.get("n_md_steps", 0)),
            "model_version": int(ev.get("model_version", 0)),
            "temperature_k": float(ev.get("temperature", math.nan)),
            "phase": str(ev.get("phase", ""))}


def stored_state(cfg: dict, chains: list[tuple[int, bool]]) -> str:
    """A stored campaign's state from its settings and its chains' (step, failed):
    "finished" when every chain reached its last step or failed, else "stopped"."""
    steps = int(cfg.get("steps", 0))
    done = bool(chains) and len(chains) >= int(cfg.get("chains", 0)) and \
        all(step >= steps or failed for step, failed in chains)
    return "finished" if done else "stopped"


def status_from_store(store_url: str, campaign: str) -> dict | None:
    """A campaign's status as its store holds it (None when the store does not know it)."""
    from orchestrator.slhmc import CAMPAIGN_DOC, campaign_models, is_history_segment
    from services.store import Store

    try:
        store = Store(store_url, read_only=True)
        doc = store.read_checkpoint(campaign, CAMPAIGN_DOC)
    except Exception:  # noqa: BLE001 - no store, or not an nnmd store: unknown campaign
        return None
    if doc is None:
        return None
    cfg = doc.get("config", {})
    chains = []
    for name in store.list_checkpoints(campaign):
        if name == CAMPAIGN_DOC or is_history_segment(name):
            continue
        d = store.read_checkpoint(campaign, name) or {}
        if d.get("kind") == "mc":  # a Metropolis explorer, not a chain
            continue
        st = d.get("state", {})
        tried = st.get("hmc_tried", 0) + st.get("volume_tried", 0)
        acc = st.get("hmc_accepted", 0) + st.get("volume_accepted", 0)
        hist = d.get("history") or [{}]
        step = int(st.get("step", 0))
        failed = d.get("failed")
        chains.append({"chain": name, "step": step,
                       "acceptance_rate": acc / tried if tried else math.nan,
                       "n_md_steps": int(st.get("n_md", 0)),
                       "model_version": int(hist[-1].get("model_version", 0) or 0),
                       "temperature_k": float(hist[-1].get("temperature",
                                                           cfg.get("temperature", math.nan))),
                       "phase": str(hist[-1].get("phase", "")),
                       "state": "failed" if failed else (
                           "finished" if step >= int(cfg.get("steps", 0)) else "stopped"),
                       "failure": failed["reason"] if failed else ""})
    src = store.read(campaign=campaign).arrays["source"]
    n_labels = int(((src == "hmc") | (src == "mc")).sum())  # as the campaign counts them
    versions = [v for v, _ in campaign_models(store, campaign)]
    state = stored_state(cfg, [(c["step"], c["state"] == "failed") for c in chains])
    return {"campaign": campaign, "state": state,
            "chains": chains, "n_labels": n_labels,
            "model_version": versions[-1] if versions else 0, "message": "", "store": store_url}
