"""Where a campaign's reference calls run: in-process threads, or Ray-hosted services.

``RayReferencePool`` starts W Ray actors, each serving the Reference gRPC service with
one backend (``num_cpus`` = the MPI ranks x threads of a pw.x run, plus any custom
resources such as ``{qe: 0.01}`` to pin them to QE nodes), so Ray spreads them across
the cluster's nodes. Chains call ``await pool.compute(atoms)``: the call goes over
gRPC (asyncio channel, bearer token, deadline, idempotency key) to an idle endpoint,
so no endpoint runs two calculations at once and hundreds of chains share W workers.
When an endpoint stops answering (UNAVAILABLE: its actor died), the actor is asked for
its new address (Ray restarts it, ``max_restarts``) and the call goes to the next idle
endpoint with the same idempotency key; an actor gone for good is dropped. A node lost
without closing its connections (a machine that hangs or is cut off) would leave a call
waiting for its deadline, so while a call runs its actor is asked every ``watch_s`` where
it serves: once Ray has restarted it elsewhere, the call is sent again. The reference
failures of a call (SCF not converged, timeout) come back as typed Failures, never as
labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid

import grpc
import numpy as np

from services.reference.types import Failure, FailureReason

log = logging.getLogger("nnmd.coordinator")


class NoReferenceWorkers(RuntimeError):
    pass


class RayReferencePool:
    """W Ray actors serving ``reference`` (a spec string) over gRPC; async ``compute``."""

    def __init__(self, reference: str, workers: int = 1, *, qe: dict | None = None,
                 num_cpus: float | None = None, resources: dict | None = None,
                 max_restarts: int = 3, timeout_s: float = 24 * 3600.0,
                 start_timeout_s: float = 300.0, watch_s: float = 10.0) -> None:
        import ray

        from services.runtime.ray_service import start_service_actor

        if workers < 1:
            raise ValueError(f"resources.reference.workers must be >= 1, got {workers}")
        qe = dict(qe or {})
        options = {"reference": reference}
        for key in ("ranks", "threads", "timeout_s", "attempts", "restart", "restart_root"):
            if key in qe:
                options[key] = qe[key]
        cpus = float(num_cpus if num_cpus is not None
                     else int(qe.get("ranks", 1)) * int(qe.get("threads", 1)))
        # A token that only this coordinator and its workers know (travels inside Ray).
        self._token = secrets.token_urlsafe(24)
        self._timeout_s = timeout_s
        self._watch_s = float(watch_s)
        self._endpoints: list[list] = []  # [actor, address, channel, stub, calls]
        self.settings_hash = ""
        try:
            started = start_service_actor(
                "reference", options, token=self._token, num_cpus=cpus,
                resources=dict(resources or {}), max_restarts=max_restarts,
                timeout_s=start_timeout_s, count=workers, many=True)
        except ray.exceptions.GetTimeoutError:
            free = ray.available_resources()
            raise RuntimeError(
                f"could not start {workers} reference workers with {cpus:g} CPUs "
                f"{'and ' + str(resources) + ' ' if resources else ''}each within "
                f"{start_timeout_s:g} s (free in the Ray cluster: {free}); lower "
                "resources.reference.workers or the ranks") from None
        for actor, address in started:
            self._endpoints.append([actor, address, None, None, 0])
        self._all = list(self._endpoints)  # for status: dropped and closed ones too
        self._idle: asyncio.Queue | None = None
        self.calls = 0
        self.retries = 0

    @property
    def addresses(self) -> list[str]:
        return [e[1] for e in self._endpoints]

    def workers(self) -> list[dict]:
        """Each reference worker (dropped and closed ones too): its gRPC address (the
        latest after a restart) and the calls it answered."""
        return [{"address": e[1], "calls": int(e[4]), "kind": "reference:ray"}
                for e in self._all]

    def _stub(self, endpoint):
        from services.proto.nnmd.v1 import reference_pb2_grpc
        from services.runtime.channel import connect_aio

        if endpoint[2] is None:
            endpoint[2] = connect_aio(endpoint[1], token=self._token, timeout_s=self._timeout_s)
            endpoint[3] = reference_pb2_grpc.ReferenceStub(endpoint[2])
        return endpoint[3]

    async def _refresh(self, endpoint) -> bool:
        """Ask the endpoint's actor for its address; False when it is gone for good."""
        import ray

        try:
            address = await asyncio.wait_for(endpoint[0].address.remote(), 120.0)
        except TimeoutError:
            return True  # still restarting: keep it
        except ray.exceptions.RayActorError:
            log.warning("reference worker %s is gone; dropping it", endpoint[1])
            if endpoint in self._endpoints:
                self._endpoints.remove(endpoint)
            return False
        if address != endpoint[1]:
            if endpoint[2] is not None:
                await endpoint[2].close()
            endpoint[1], endpoint[2], endpoint[3] = address, None, None
        return True

    async def compute(self, atoms):
        """The reference outcome (Result or Failure) of one structure."""
        from services.reference.client import compute_request, response_outcomes, rpc_failure
        from services.reference.service import failures_of
        from services.runtime.channel import idempotency_metadata

        if self._idle is None:
            self._idle = asyncio.Queue()
            for e in self._endpoints:
                self._idle.put_nowait(e)
        request = compute_request([atoms], ("energy", "forces", "stress"))
        key = uuid.uuid4().hex  # the same key on every retry: the work runs once
        for _attempt in range(8):
            if not self._endpoints:
                raise NoReferenceWorkers("every reference worker died and Ray could not "
                                         "restart them")
            endpoint = await self._idle.get()
            if endpoint not in self._endpoints:
                continue
            t0 = time.monotonic()
            try:
                call = self._stub(endpoint).Compute(request,
                                                    metadata=idempotency_metadata(key))
                resp = await self._answer(call, endpoint)
                trailer = await call.trailing_metadata()
            except (grpc.aio.AioRpcError, _WorkerLost) as exc:
                if isinstance(exc, _WorkerLost) or exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                                                  grpc.StatusCode.CANCELLED):
                    self.retries += 1
                    alive = await self._refresh(endpoint)
                    if alive:
                        self._idle.put_nowait(endpoint)
                    continue
                self._idle.put_nowait(endpoint)
                return rpc_failure(exc, endpoint[1])
            self._idle.put_nowait(endpoint)
            self.calls += 1
            endpoint[4] += 1
            self.settings_hash = resp.reference_settings_hash
            return response_outcomes(resp, failures_of(_Trailer(trailer)), [atoms],
                                     endpoint[1], t0)[0]
        return Failure(FailureReason.CRASHED, "no reference worker answered after 8 tries",
                       info={})

    async def _answer(self, call, endpoint):
        """The call's response. While it runs, every ``watch_s`` the endpoint's actor is
        asked where it serves: when Ray has restarted it at another address (its node was
        lost: a machine that hangs or is cut off never closes the call's connection) or it
        is gone for good, the call is cancelled and _WorkerLost raised."""
        import ray

        waiter = asyncio.ensure_future(_await(call))
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self._watch_s)
                if done:
                    return waiter.result()
                try:
                    address = await asyncio.wait_for(endpoint[0].address.remote(),
                                                      self._watch_s)
                except (TimeoutError, ray.exceptions.ActorUnavailableError):
                    continue  # its node is silent, or Ray is restarting it: keep waiting
                except ray.exceptions.RayActorError:
                    address = None  # gone for good
                if address != endpoint[1] and not waiter.done():
                    log.warning("reference worker %s now serves at %s (its node lost?); "
                                "sending its call again", endpoint[1], address)
                    raise _WorkerLost(endpoint[1])
        finally:
            if not waiter.done():
                call.cancel()
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await waiter

    def close(self) -> None:
        import ray

        for e in self._endpoints:
            if e[2] is not None:
                try:
                    asyncio.get_event_loop().create_task(e[2].close())
                except RuntimeError:
                    pass
            try:
                ray.kill(e[0])
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._endpoints.clear()


class _WorkerLost(Exception):
    """A reference call's worker was restarted elsewhere (or is gone) while it ran."""


async def _await(call):
    return await call


class _Trailer:
    """Adapts aio trailing metadata to services.reference.service.failures_of."""

    def __init__(self, metadata) -> None:
        self._md = metadata

    def trailing_metadata(self):
        return self._md


def ray_trainer(resources: dict | None = None, max_retries: int = 3):
    """train(structures, config, init=) as a Ray task with the trainer's resources
    (``num_gpus``, ``num_cpus``, custom ``resources``), so re-training runs on a GPU node;
    a task whose worker dies is retried (max_retries) and the campaign waits for it."""
    import ray

    from services.runtime import faults

    res = dict(resources or {})
    opts = {"num_cpus": float(res.get("num_cpus", 1)), "num_gpus": float(res.get("num_gpus", 0)),
            "resources": dict(res.get("resources", {})), "max_retries": max_retries}
    env = faults.environment()
    if env:  # the fault suite's variables reach the trainer's worker too
        opts["runtime_env"] = {"env_vars": env}

    @ray.remote
    def _train(structures, config, init):
        from nnmd_kernels.training import train
        from services.runtime.threads import blas_one_thread

        with blas_one_thread():
            result = train(structures, config, init=init)
        faults.point("trainer_task")
        return result

    def train_fn(structures, config, init=None):
        return ray.get(_train.options(**opts).remote(structures, config, init))

    return train_fn


# ----------------------------------------------------------------- MD executors

MD_ENGINES = ("native", "cuda")  # engines that run HMC proposals (lammps: production MD)


class NoMDExecutors(RuntimeError):
    pass


class MDExecutor:
    """One MD executor (a Ray actor: ``ray.remote(MDExecutor)``): takes a chain's HMC
    proposal (nnmd_kernels.slhmc.propose + screen) and returns the Proposal.

    The model is read from the campaign's store by version, once per version (cached by
    version and checked against the sha256 the coordinator expects), never shipped with
    a call. An executor that cannot open the store (a node-local folder on another node,
    ``memory://``) takes the copy the coordinator put in Ray's object store once per
    version instead (``model_box``: a one-item list holding its ObjectRef, so Ray does not
    fetch it for calls whose model is cached); so does one whose store copy is not the
    coordinator's (another folder at the same path on its node: the sha256 differs).
    Proposals come in batches (``propose_many``: many chains' trajectories, one
    evaluation of the potential per MD step); each proposal builds its own neighbour
    list, so it is a function of (model version, chain state with its random stream,
    kernel config) alone, up to the floating-point summation order of the batch it was
    in: a call redone on another executor, or on this one after Ray restarted it, gives
    the same proposal (to ~1e-12 A). ``NNMD_FAULT=md_executor[:N]``
    (services.runtime.faults) kills the executor in the middle of its N-th batch, after
    the trajectories and before the answer.
    """

    def __init__(self, store_url: str, engine: str = "native", threads: int = 1) -> None:
        if engine not in MD_ENGINES:
            raise ValueError(f"MD engine must be one of {', '.join(MD_ENGINES)}, got {engine!r}")
        self._store_url, self._engine, self._threads = store_url, engine, max(1, int(threads))
        self._store = None
        self._models: dict[int, tuple[str, object]] = {}  # version -> (sha256, Potential)
        self.model_loads = 0
        self.model_source = ""  # "store" or "object store": where the last model came from
        self.calls = 0

    def ready(self) -> dict:
        """Where this executor runs (its node and process) and what it has done."""
        import ray

        try:
            node = ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - outside Ray (tests of the class itself)
            node = "local"
        return {"address": f"{node}/pid{os.getpid()}", "pid": os.getpid(),
                "engine": self._engine, "model_loads": self.model_loads, "calls": self.calls,
                "model_source": self.model_source}

    def _read(self, version: int, sha256: str, model_box) -> tuple[bytes, str]:
        """(model file bytes, sha256): from the store, else from the object store's copy."""
        import hashlib

        from services.store import Store

        try:
            if self._store is None:
                self._store = Store(self._store_url, read_only=True)
            data, meta = self._store.load_model(version)  # checks the file's sha256
            sha = str(meta.get("sha256", ""))
            if not (sha256 and sha != sha256 and model_box):
                self.model_source = "store"
                return data, sha
            log.warning("MD executor: model v%d in %s is not the coordinator's (sha256 "
                        "%s); taking the object store's copy", version, self._store_url,
                        sha[:12])
        except Exception as exc:  # noqa: BLE001 - unreachable here: the coordinator's copy
            if not model_box:
                raise
            log.warning("MD executor: store %s not readable here (%s); model v%d from the "
                        "object store", self._store_url, exc, version)
        data = model_box[0]
        if not isinstance(data, bytes):
            import ray

            data = ray.get(data)
        self.model_source = "object store"
        return data, hashlib.sha256(data).hexdigest()

    def _model(self, version: int, sha256: str, model_box=None):
        have = self._models.get(version)
        if have is not None and (not sha256 or have[0] == sha256):
            return have[1]
        from nnmd_kernels.model_file import loads

        data, sha = self._read(version, sha256, model_box)
        if sha256 and sha != sha256:
            raise ValueError(f"model v{version} in {self._store_url} has sha256 {sha[:12]}, "
                             f"the coordinator expects {sha256[:12]}: not the same store?")
        pot = loads(data, source=f"store model v{version}")
        self._models[version] = (sha, pot)
        self.model_loads += 1
        return pot

    def propose(self, version: int, sha256: str, state, kcfg, model_box=None):
        """The chain's next proposal (screened under delayed acceptance) with model
        `version`: exactly what the coordinator's in-process MD computes."""
        out = self.propose_many(version, sha256, [state], [kcfg], model_box)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def propose_many(self, version: int, sha256: str, states, kcfgs, model_box=None) -> list:
        """Many chains' proposals with model `version` in one batch
        (nnmd_kernels.slhmc.ProposalBatch: one evaluation of the potential per MD step
        for all of them): a screened Proposal, or the exception of that chain alone
        (overlapping atoms), per chain, in order."""
        import numba

        from nnmd_kernels import slhmc
        from services.runtime import faults
        from services.runtime.threads import blas_one_thread

        numba.set_num_threads(min(self._threads, numba.config.NUMBA_NUM_THREADS))
        pot = self._model(int(version), sha256, model_box)
        batch = slhmc.ProposalBatch(pot, backend="cuda" if self._engine == "cuda" else "numba")
        for k, (state, kcfg) in enumerate(zip(states, kcfgs)):
            batch.add(k, state, kcfg)  # a fresh neighbour list: a pure function of the call
        with blas_one_thread():
            done = dict(batch.run())
        out = [done[k] if isinstance(done[k], BaseException) else slhmc.screen(done[k], kcfgs[k])
               for k in range(len(states))]
        faults.point("md_executor")
        self.calls += len(states)
        return out

    def production(self, version: int, sha256: str, structure: dict, spec: dict,
                   model_box=None) -> list[dict]:
        """A production MD run (production_run: an MDSpec, plus the production block's
        engine and ranks) with model `version` from `structure` (numbers, positions,
        cell, pbc); returns its trajectory frames (step, time_fs, positions, cell, energy,
        temperature_k), every traj_interval steps. The engine is the spec's (native |
        cuda | lammps), else this executor's; lammps runs on `ranks` MPI ranks in a child
        mpirun, which this actor's num_cpus covers (parse_spec's default for
        resources.md.num_cpus). A pure function of its arguments (the spec's seed draws
        the velocities)."""
        import numba

        pot = self._model(int(version), sha256, model_box)
        with _threads_per_rank(int(spec.get("ranks", 1)) if spec.get("engine") == "lammps"
                               else 0):
            return production_run(pot, structure, spec,
                                  threads=min(self._threads, numba.config.NUMBA_NUM_THREADS),
                                  backend="cuda" if self._engine == "cuda" else "numba")

    def md_files(self, job: dict) -> dict:
        """`nnmd md --executor ray`: the run that orchestrator.commands.md.md_to_files
        makes on this executor's node, in a temporary folder. job: the model and the
        structure as (file name, bytes), the MDSpec dict, engine, np, ranks_per_gpu, guard
        options, store (url, trajectory name) or None, final (bool). Returns the output
        files' bytes by role (traj, thermo, final, lammps_log), the summary line, and the
        guard's stop (MDStopped.to_dict) when one stopped the run (the files then end with
        the last good frame, as a local run's do)."""
        import tempfile
        from pathlib import Path

        import numba

        from orchestrator.commands.md import md_to_files
        from services.md.guards import MDStopped
        from services.md.spec import MDSpec

        numba.set_num_threads(min(self._threads, numba.config.NUMBA_NUM_THREADS))
        with tempfile.TemporaryDirectory(prefix="nnmd-md-executor-") as tmp:
            tmp = Path(tmp)
            inputs = {}
            for key in ("model", "structure"):
                name, data = job[key]
                (tmp / key).mkdir()
                inputs[key] = tmp / key / Path(name).name  # the caller's name: its format
                inputs[key].write_bytes(data)
            paths = {"traj": tmp / "traj.extxyz", "thermo": tmp / "traj.thermo",
                     "final": tmp / "final.extxyz" if job.get("final") else None,
                     "lammps_log": (tmp / "lammps" / "lammps.log" if int(job["np"]) > 1
                                    else tmp / "traj.lammps.log")}
            stopped, summary = None, ""
            ranks = int(job["np"]) if job["engine"] == "lammps" else 0
            try:
                with _threads_per_rank(ranks):
                    summary = md_to_files(
                        inputs["model"], inputs["structure"], MDSpec.from_dict(job["spec"]),
                        engine=job["engine"], n_ranks=int(job["np"]),
                        ranks_per_gpu=int(job.get("ranks_per_gpu", 2)), traj=paths["traj"],
                        thermo=paths["thermo"], final=paths["final"],
                        store=tuple(job["store"]) if job.get("store") else None,
                        guard=job.get("guard"), echo=False, lammps_dir=tmp / "lammps")
            except MDStopped as exc:  # the files hold what a local run's would
                stopped = exc.to_dict()
            files = {k: v.read_bytes() for k, v in paths.items()
                     if v is not None and v.is_file()}
        self.calls += 1
        return {"files": files, "summary": summary, "stopped": stopped,
                "address": self.ready()["address"]}


PRODUCTION_ENGINES = ("native", "cuda", "lammps")  # production MD (proposals: MD_ENGINES)


@contextlib.contextmanager
def _threads_per_rank(ranks: int):
    """While an executor runs LAMMPS on `ranks` MPI ranks (0: not at all): Ray gives the
    actor OMP_NUM_THREADS = its CPUs, which its ranks share, so each rank (a child of
    mpirun, which passes the environment on) gets CPUs // ranks OpenMP threads, >= 1."""
    old = os.environ.get("OMP_NUM_THREADS")
    if ranks < 1:
        yield
        return
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - outside Ray
        cpus = None
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(cpus or float(old or 1)) // ranks))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def production_run(potential, structure: dict, spec: dict, *, threads: int = 1,
                   backend: str = "numba") -> list[dict]:
    """MDExecutor.production's work, also run in the coordinator's thread when the
    campaign has no MD executors. spec: services.md.spec.MDSpec fields, plus `engine`
    (native | cuda | lammps; default: `backend`) and `ranks` (LAMMPS' MPI ranks) where
    the production block gives them (orchestrator.coordinator.spec.production_md).
    The frames are the same dicts whichever engine ran them: step, time_fs, numbers,
    pbc, positions, cell, energy (eV), temperature_k (3N - 3 degrees of freedom)."""
    import numba
    from ase import Atoms

    from services.md.native import run_native
    from services.md.spec import MDSpec

    spec = dict(spec)
    engine = spec.pop("engine", None)
    ranks = int(spec.pop("ranks", 1))
    if engine not in (None, *PRODUCTION_ENGINES):
        raise ValueError(f"production engine must be one of {', '.join(PRODUCTION_ENGINES)}, "
                         f"got {engine!r}")
    md = MDSpec.from_dict(spec)
    atoms = Atoms(numbers=structure["numbers"], positions=structure["positions"],
                  cell=structure["cell"], pbc=structure["pbc"])
    if engine == "lammps":
        return lammps_production(potential, atoms, md, ranks)
    if engine is not None:
        backend = "cuda" if engine == "cuda" else "numba"
    numba.set_num_threads(max(1, threads))
    frames: list[dict] = []

    def traj(f):
        frames.append(_production_frame(f.step, f.time_fs, f.numbers, f.pbc, f.positions,
                                        f.cell, f.energy, f.velocities, f.masses))

    run_native(atoms, potential, md, traj=traj, backend=backend)
    return frames


def _production_frame(step, time_fs, numbers, pbc, positions, cell, energy, velocities,
                      masses) -> dict:
    from nnmd_kernels.md.state import kinetic_energy
    from nnmd_kernels.md.units import KB_EV_PER_K

    dof = max(1, 3 * len(numbers) - 3)
    return {"step": int(step), "time_fs": float(time_fs), "numbers": np.array(numbers),
            "pbc": np.array(pbc), "positions": np.array(positions), "cell": np.array(cell),
            "energy": float(energy),
            "temperature_k": float(2.0 * kinetic_energy(velocities, masses)
                                   / (dof * KB_EV_PER_K))}


def lammps_production(potential, atoms, spec, ranks: int, *, timeout: float | None = None
                      ) -> list[dict]:
    """Production frames (production_run's dicts) of `spec` run by LAMMPS on `ranks` MPI
    ranks: services.md.lammps.launch_lammps (a child mpirun of services.md.lammps_worker)
    in a temporary folder, the potential and the start written there as files
    (model.nnmd; start.traj, exact). Velocities: Maxwell-Boltzmann from spec.seed, the
    native engine's draw. The pair is pair_style nnmd (the C++ plugin) unless GPUs are
    visible here, where the ranks share them (2 a GPU) through fix external with the GPU
    kernels; $NNMD_LAMMPS_PAIR overrides. The frames are read back from the run's extxyz
    trajectory (positions to 1e-8 A, as in every extxyz output)."""
    import tempfile
    from pathlib import Path

    from ase.io import read, write

    from services.md.lammps import count_gpus, launch_lammps
    from services.md.observers import velocities_of

    if ranks < 1:
        raise ValueError(f"production.ranks must be >= 1, got {ranks}")
    pair = os.environ.get("NNMD_LAMMPS_PAIR") or ("auto" if count_gpus() else "plugin")
    with tempfile.TemporaryDirectory(prefix="nnmd-production-") as tmp:
        tmp = Path(tmp)
        potential.save(tmp / "model.nnmd")
        write(tmp / "start.traj", atoms)
        launch_lammps(tmp / "start.traj", tmp / "model.nnmd", spec, int(ranks), tmp / "run",
                      traj=tmp / "traj.extxyz", pair=pair, timeout=timeout)
        images = read(tmp / "traj.extxyz", index=":")
    return [_production_frame(a.info["step"], a.info["time_fs"], a.numbers, a.pbc,
                              a.positions, a.cell.array, a.info["potential_energy"],
                              velocities_of(a), a.get_masses()) for a in images]


class RayMDPool:
    """W MD executor actors (``resources.md``); ``await propose(version, state, kcfg)``.

    Each call goes to the least-loaded executor (fewest calls in flight, then fewest
    answered, then the next in turn), so chains share W executors evenly; calls are
    counted per executor (``workers()``, what status shows). When an executor dies
    mid-call (RayActorError: killed, its node lost), the call is sent again, with the
    same chain state and so the same random stream, to another executor, or to the same
    one once Ray has restarted it (``max_restarts``): the chain's records are what an
    undisturbed run makes. An executor that Ray cannot restart is dropped; when none is
    left, NoMDExecutors.

    Proposals are batched: while every live executor has a batch in flight, the chains'
    requests queue here, and the next free executor takes all of them that share a
    model version (at most ``max_batch``) as one ``propose_many`` call. With few chains
    a batch is one proposal; with many, an executor's cost per proposal falls about
    10-fold (services.md.proposals). ``calls`` count proposals, not batches.
    """

    def __init__(self, store_url: str, workers: int = 1, *, num_cpus: float | None = None,
                 num_gpus: float = 0.0, resources: dict | None = None, engine: str = "native",
                 ranks: int = 1, max_restarts: int = 3, start_timeout_s: float = 300.0,
                 attempts: int = 8, max_batch: int = 512) -> None:
        import ray

        from services.runtime import faults

        if workers < 1:
            raise ValueError(f"resources.md.workers must be >= 1, got {workers}")
        if engine not in MD_ENGINES:
            raise ValueError(f"resources.md.engine must be one of {', '.join(MD_ENGINES)} for "
                             f"the chains' HMC proposals, got {engine!r}")
        self.store_url, self.engine = store_url, engine
        cpus = float(num_cpus if num_cpus is not None else max(1, int(ranks)))
        opts = {"num_cpus": cpus, "num_gpus": float(num_gpus or 0),
                "resources": dict(resources or {}), "max_restarts": int(max_restarts),
                "max_task_retries": 0}
        env = faults.environment()
        if env:  # the fault suite's variables reach the executors too
            opts["runtime_env"] = {"env_vars": env}
        remote = ray.remote(MDExecutor)
        self._actors = [remote.options(**opts).remote(store_url, engine, int(ranks))
                        for _ in range(workers)]
        try:
            infos = ray.get([a.ready.remote() for a in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            for a in self._actors:
                ray.kill(a)
            raise RuntimeError(
                f"could not start {workers} MD executors with {cpus:g} CPUs"
                f"{f' and {num_gpus:g} GPUs' if num_gpus else ''} each within "
                f"{start_timeout_s:g} s (free in the Ray cluster: {ray.available_resources()}); "
                "lower resources.md.workers or their resources") from None
        self._addresses = [i["address"] for i in infos]
        self._calls = [0] * workers
        self._inflight = [0] * workers
        self._alive = [True] * workers
        self._suspect = [False] * workers
        self._next = 0
        self._attempts = attempts
        self._models: dict[int, tuple[str, list]] = {}  # version -> (sha256, [ObjectRef])
        self._checks: set = set()  # tasks that follow a failed executor (restart or gone)
        # Executor i's address is read again when an executor failed since it was last read
        # (_failures > _seen[i]): a node lost while i was idle restarts i too, and its next
        # call just waits for the restart, failing nothing. Read at once for every other
        # executor when one fails (batches can leave an executor idle for long), and after
        # i's next call.
        self._failures = 0
        self._seen = [0] * workers
        self._rereads: set = set()
        self.calls = 0
        self.retries = 0
        self.max_batch = max(1, int(max_batch))
        self._queue: list = []  # (version, state, kcfg, future) waiting for an executor
        self._sending = 0  # batches in flight
        self._senders: set = set()
        self.batches = 0

    @property
    def addresses(self) -> list[str]:
        return [a for a, ok in zip(self._addresses, self._alive) if ok]

    def workers(self) -> list[dict]:
        """Each executor: its address (node/process; the latest after a restart), the
        proposals it answered, and its kind."""
        return [{"address": self._addresses[i], "calls": self._calls[i],
                 "kind": f"md:{self.engine}", "alive": self._alive[i]}
                for i in range(len(self._actors))]

    def _model(self, version: int) -> tuple[str, list]:
        """(sha256, [ObjectRef of the model file]) of a version, read once: the sha the
        executors check theirs against, and a copy for executors that cannot reach the
        store."""
        if version not in self._models:
            import ray

            from services.store import Store

            data, meta = Store(self.store_url, read_only=True).load_model(version)
            self._models[version] = (str(meta.get("sha256", "")), [ray.put(data)])
        return self._models[version]

    def _pick(self, avoid: int | None) -> int | None:
        n = len(self._actors)
        ok = [i for i in range(n) if self._alive[i] and not self._suspect[i]]
        if len(ok) > 1 and avoid in ok:
            ok.remove(avoid)
        if not ok:
            return None
        start = self._next
        best = min(ok, key=lambda i: (self._inflight[i], self._calls[i], (i - start) % n))
        self._next = (best + 1) % n
        return best

    async def _check(self, i: int) -> None:
        """After a failed call: wait until executor i answers again (restarted) or is gone."""
        import ray

        deadline = time.monotonic() + 300.0
        try:
            while True:
                try:
                    info = await asyncio.wait_for(self._actors[i].ready.remote(),
                                                  max(1.0, deadline - time.monotonic()))
                    self._addresses[i], self._seen[i] = info["address"], self._failures
                    return
                except ray.exceptions.ActorUnavailableError:  # restarting: ask again
                    if time.monotonic() > deadline:
                        raise TimeoutError from None
                    await asyncio.sleep(0.5)
        except TimeoutError:
            log.warning("MD executor %s did not come back within 300 s; dropping it",
                        self._addresses[i])
            self._alive[i] = False
        except ray.exceptions.RayActorError:  # ActorDiedError: Ray will not restart it
            log.warning("MD executor %s is gone; dropping it", self._addresses[i])
            self._alive[i] = False
        finally:
            self._suspect[i] = False

    async def propose(self, version: int, state, kcfg):
        """The chain's proposal from model `version` (nnmd_kernels.slhmc.Proposal), made
        in a batch with the other chains' waiting requests of that version."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((int(version), state, kcfg, fut))
        self._dispatch()
        return await fut

    def _dispatch(self) -> None:
        """Send queued requests, a batch per free executor (one batch each in flight)."""
        while self._queue and self._sending < max(1, sum(self._alive)):
            version = self._queue[0][0]
            take = [r for r in self._queue if r[0] == version][: self.max_batch]
            taken = {id(r) for r in take}
            self._queue = [r for r in self._queue if id(r) not in taken]
            self._sending += 1
            task = asyncio.ensure_future(self._send(version, take))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _send(self, version: int, items: list) -> None:
        try:
            out = await self._call("propose_many", "proposals", version,
                                   [r[1] for r in items], [r[2] for r in items],
                                   count=len(items))
            self.batches += 1
        except BaseException as exc:  # noqa: BLE001 - every chain of the batch gets it
            out = [exc] * len(items)
        finally:
            self._sending -= 1
        for (*_, fut), res in zip(items, out):
            if fut.done():  # the chain was cancelled meanwhile
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
        self._dispatch()

    async def production(self, version: int, structure: dict, spec: dict):
        """One production MD replica with model `version` (MDExecutor.production; the
        spec's engine and ranks say how it runs: lammps on MPI ranks, native, cuda)."""
        return await self._call("production", "a production run", version, structure, spec)

    async def md_files(self, job: dict) -> dict:
        """`nnmd md --executor ray`: one run (MDExecutor.md_files; the model travels in the
        job, not through the store) on the least-loaded executor, sent again elsewhere
        when one dies mid-run (the run is a pure function of the job)."""
        import ray

        for _attempt in range(self._attempts):
            i = self._pick(None)
            if i is None:
                break
            self._inflight[i] += 1
            try:
                out = await self._actors[i].md_files.remote(job)
            except ray.exceptions.RayActorError as exc:
                self.retries += 1
                log.warning("MD executor %s failed an MD run (%s); sending it again",
                            self._addresses[i], type(exc).__name__)
                continue
            finally:
                self._inflight[i] -= 1
            self._calls[i] += 1
            self.calls += 1
            return out
        raise NoMDExecutors(f"no MD executor answered an MD run after {self._attempts} tries")

    async def _call(self, method: str, what: str, version: int, *args, count: int = 1):
        """executor.<method>(version, sha256, *args, model_box) on the least-loaded
        executor, sent again elsewhere when one dies mid-call; `count` calls are
        counted for it (the proposals of a batch)."""
        import ray

        version = int(version)
        sha, box = self._models[version] if version in self._models else \
            await asyncio.to_thread(self._model, version)
        last = None
        for _attempt in range(self._attempts):
            i = self._pick(last)
            if i is None:
                if self._checks:  # every live executor is being checked: wait for one
                    await asyncio.wait(set(self._checks), return_when=asyncio.FIRST_COMPLETED)
                    i = self._pick(None)
                if i is None:
                    if not any(self._alive):
                        raise NoMDExecutors("every MD executor died and Ray could not "
                                            "restart them")
                    await asyncio.sleep(0.5)
                    continue
            self._inflight[i] += 1
            try:
                out = await getattr(self._actors[i], method).remote(version, sha, *args, box)
            except ray.exceptions.RayActorError as exc:
                self.retries += 1
                self._failures += 1
                log.warning("MD executor %s failed %s (%s); sending it again",
                            self._addresses[i], what, type(exc).__name__)
                last = i
                for j in range(len(self._actors)):  # others on the lost node restart too
                    if j != i and self._alive[j]:
                        self._reread_later(j)
                if not self._suspect[i]:
                    self._suspect[i] = True
                    task = asyncio.ensure_future(self._check(i))
                    self._checks.add(task)
                    task.add_done_callback(self._checks.discard)
                continue
            finally:
                self._inflight[i] -= 1
            self._calls[i] += count
            self.calls += count
            self._reread_later(i)
            return out
        raise NoMDExecutors(f"no MD executor answered {what} after {self._attempts} tries")

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Wait (at most timeout_s) for the address reads still under way, so that
        workers() names the processes that executors restarted after a failure run in."""
        pending = set(self._rereads) | set(self._checks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def _reread_later(self, i: int) -> None:
        """Read executor i's address again if an executor failed since it was last read."""
        if self._seen[i] < self._failures:
            self._seen[i] = self._failures
            task = asyncio.ensure_future(self._reread(i))
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)

    async def _reread(self, i: int, wait_s: float = 300.0) -> None:
        """Executor i's address (node/process) again, for workers(): asked until it
        answers (Ray restarting it) or wait_s has passed."""
        import ray

        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                info = await asyncio.wait_for(self._actors[i].ready.remote(),
                                              max(1.0, deadline - time.monotonic()))
                self._addresses[i] = info["address"]
                return
            except ray.exceptions.RayActorError:  # dead or restarting: ask again
                if not self._alive[i]:  # dropped: Ray will not restart it
                    return
                await asyncio.sleep(0.5)
            except Exception:  # noqa: BLE001 - no answer in time: keep the last address
                return

    def close(self) -> None:
        import ray

        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._alive = [False] * len(self._actors)
