"""The MD gRPC service (nnmd.v1.MD): RunSegments (batched SLHMC proposals) and Production.

Thin: unpack and validate -> a plain function (run_segments, or the engines) -> pack.
Models come from a store (ModelRef); a production trajectory goes to a store
(TrajectoryRef), one frame per sample_interval, and progress streams back per frame.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nnmd_kernels.md import kinetic_energy, nve, run_batch
from nnmd_kernels.md.forces import potential_force_fn
from services.md.observers import MDFrame, StoreTrajectory, velocities_of
from services.md.spec import MDSpec
from services.proto.nnmd.v1 import md_pb2, md_pb2_grpc
from services.runtime import registry
from services.runtime.convert import (
    Limits,
    StructureArrays,
    structure_from_proto,
    structure_to_proto,
    to_atoms,
)
from services.runtime.errors import InvalidArgument
from services.runtime.server import IdempotencyCache
from services.store.store import check_store_url, safe_name

ENGINES = ("native", "lammps")
ENSEMBLES = {  # nnmd.v1.Ensemble -> (MDSpec.ensemble, thermostat, anisotropic)
    md_pb2.ENSEMBLE_NVE: ("nve", "bussi", False),
    md_pb2.ENSEMBLE_NVT_LANGEVIN: ("nvt", "langevin", False),
    md_pb2.ENSEMBLE_NVT_BUSSI: ("nvt", "bussi", False),
    md_pb2.ENSEMBLE_NPT_ISOTROPIC: ("npt", "bussi", False),
    md_pb2.ENSEMBLE_NPT_ANISOTROPIC: ("npt", "bussi", True),
}


def run_segments(potential, structures, n_steps, dt_fs, engine="native", backend="auto"):
    """Short NVE segments from given (x, v), one per structure: the SLHMC proposal step.

    structures: list of ase.Atoms carrying momenta; n_steps: list of ints. Native segments
    with equal lengths advance together as one batch. Returns a list of dicts with the
    end MDFrame and start/end potential and kinetic energies (eV).
    """
    results: list[dict | None] = [None] * len(structures)
    if engine == "lammps":
        from services.md.lammps import run_lammps

        for k, (atoms, n) in enumerate(zip(structures, n_steps)):
            first = []
            spec = MDSpec(ensemble="nve", dt_fs=dt_fs, steps=n, traj_interval=max(n, 1),
                          thermo_interval=max(n, 1))
            end, _ = run_lammps(atoms, potential, spec, traj=first.append, backend=backend)
            results[k] = {"end": end, "start_pe": first[0].energy, "start_ke": first[0].kinetic,
                          "end_pe": end.energy, "end_ke": end.kinetic}
        return results
    for n in sorted(set(n_steps)):
        idx = [k for k, m in enumerate(n_steps) if m == n]
        step_fns, states = [], []
        for k in idx:
            atoms = structures[k]
            ff = potential_force_fn(potential, atoms.numbers, atoms.pbc, 1.0, backend)
            init_fn, step_fn = nve(ff, dt_fs)
            step_fns.append(step_fn)
            states.append(init_fn(atoms.positions, atoms.get_masses(), atoms.numbers,
                                  atoms.cell.array, atoms.pbc, velocities=velocities_of(atoms)))
        ends = run_batch(step_fns, states, n)
        for k, s0, s1 in zip(idx, states, ends):
            results[k] = {"end": MDFrame.from_state(s1), "start_pe": s0.energy,
                          "start_ke": kinetic_energy(s0.velocities, s0.masses),
                          "end_pe": s1.energy,
                          "end_ke": kinetic_energy(s1.velocities, s1.masses)}
    return results


def _frame_to_proto(frame: MDFrame, id_: str = ""):
    return structure_to_proto(StructureArrays(
        positions=frame.positions, numbers=np.asarray(frame.numbers, np.int32), cell=frame.cell,
        pbc=frame.pbc, velocities=frame.velocities, id=id_))


class _Stopped(Exception):
    """The client went away: the worker thread stops at the next observed step."""


class MDServicer(md_pb2_grpc.MDServicer):
    """max_atoms: atoms per structure; max_steps: steps per segment and per production run
    (None = no limit); store_roots: folders (or URL prefixes) that model and trajectory
    stores must be in (None = any store this server can reach)."""

    def __init__(self, backend: str = "auto", max_atoms: int | None = None,
                 workers: int = 2, max_steps: int | None = None,
                 store_roots: list[str] | None = None) -> None:
        self.backend = backend
        self._limits = Limits(max_atoms=max_atoms) if max_atoms else Limits()
        self.max_steps = max_steps
        self.store_roots = list(store_roots) if store_roots is not None else None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="md")
        self._models: dict = {}  # (url, version) -> Potential
        self._writers: dict = {}  # store URL -> StoreWriter (this servicer writes its trajectories)
        self._idempotency = IdempotencyCache()
        self._lock = threading.Lock()

    # -- plain helpers ---------------------------------------------------------------
    def potential(self, ref, field="model"):
        from nnmd_kernels.model_file import loads
        from services.store import Store

        url = ref.store.url
        if not url:
            raise InvalidArgument(f"{field}.store.url", "empty", "name the store that holds the model")
        check_store_url(url, f"{field}.store.url", self.store_roots)
        with self._lock:
            store = Store(url, read_only=True)
            versions = store.model_versions()
            version = int(ref.version) or (versions[-1] if versions else 0)
            key = (url, version)
            if key not in self._models:
                data, _ = store.load_model(version)
                self._models[key] = loads(data, f"{url} model {version}")
            return self._models[key]

    def _writer(self, url):
        from services.store import Store

        with self._lock:
            if url not in self._writers:
                self._writers[url] = Store(url).writer()
            return self._writers[url]

    def _structure(self, msg, field):
        return to_atoms(structure_from_proto(msg, self._limits, field))

    def _check_steps(self, n, field):
        if self.max_steps is not None and n > self.max_steps:
            raise InvalidArgument(field, f"{n} steps is more than this server's limit "
                                  f"{self.max_steps}", "run fewer steps per call (or raise "
                                  "the server's --max-steps)")

    @staticmethod
    def _engine(name, field="engine"):
        engine = name or "native"
        if engine not in ENGINES:
            raise InvalidArgument(field, f"unknown engine {name!r}", "use native or lammps")
        return engine

    # -- RPCs ------------------------------------------------------------------------
    async def RunSegments(self, request, context):
        engine = self._engine(request.engine)
        if not request.timestep_fs > 0:
            raise InvalidArgument("timestep_fs", f"{request.timestep_fs}", "give a time step > 0 fs")
        if not request.segments:
            raise InvalidArgument("segments", "empty", "send at least one segment")
        pot = self.potential(request.model)
        structures, steps = [], []
        for k, seg in enumerate(request.segments):
            atoms = self._structure(seg.start, f"segments[{k}].start")
            if not len(seg.start.velocities_angstrom_per_fs):
                raise InvalidArgument(f"segments[{k}].start.velocities_angstrom_per_fs",
                                      "missing", "send the momenta drawn for this proposal")
            try:
                pot.types_of(atoms.numbers)
            except ValueError as exc:
                raise InvalidArgument(f"segments[{k}].start.numbers", str(exc),
                                      "use a model trained on these elements") from None
            if seg.n_steps < 1:
                raise InvalidArgument(f"segments[{k}].n_steps", "0", "run at least one step")
            self._check_steps(seg.n_steps, f"segments[{k}].n_steps")
            structures.append(atoms)
            steps.append(int(seg.n_steps))

        async def operation():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, run_segments, pot, structures, steps, request.timestep_fs,
                engine, self.backend)

        results = await self._idempotency.run(context, operation)
        return md_pb2.RunSegmentsResponse(results=[
            md_pb2.SegmentResult(
                chain=seg.chain, end=_frame_to_proto(r["end"], seg.start.id),
                start_potential_energy_ev=r["start_pe"], start_kinetic_energy_ev=r["start_ke"],
                end_potential_energy_ev=r["end_pe"], end_kinetic_energy_ev=r["end_ke"])
            for seg, r in zip(request.segments, results)])

    async def Production(self, request, context):
        engine = self._engine(request.engine)
        if request.ensemble not in ENSEMBLES:
            raise InvalidArgument("ensemble", "unspecified", "choose NVE, NVT_* or NPT_*")
        ens, thermostat, aniso = ENSEMBLES[request.ensemble]
        if not request.trajectory.store.url or not request.trajectory.name:
            raise InvalidArgument("trajectory", "store url and name are required",
                                  "name where the frames go")
        check_store_url(request.trajectory.store.url, "trajectory.store.url", self.store_roots)
        safe_name(request.trajectory.name, "trajectory.name")
        self._check_steps(request.n_steps, "n_steps")
        try:
            spec = MDSpec(ensemble=ens, thermostat=thermostat, anisotropic=aniso,
                          dt_fs=request.timestep_fs, steps=int(request.n_steps),
                          temperature=request.temperature_k or None,
                          pressure_gpa=request.pressure_gpa if ens == "npt" else None,
                          seed=int(request.seed) % (2**63),
                          traj_interval=int(request.sample_interval) or 100,
                          thermo_interval=int(request.sample_interval) or 100)
        except ValueError as exc:
            raise InvalidArgument("request", str(exc), "fix the run parameters") from None
        pot = self.potential(request.model)
        atoms = self._structure(request.initial, "initial")
        try:
            pot.types_of(atoms.numbers)
        except ValueError as exc:
            raise InvalidArgument("initial.numbers", str(exc),
                                  "use a model trained on these elements") from None
        to_store = StoreTrajectory(self._writer(request.trajectory.store.url),
                                   request.trajectory.name)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def observe(frame: MDFrame):
            if stop.is_set():
                raise _Stopped()
            n = to_store(frame)
            msg = md_pb2.ProductionProgress(
                step=frame.step, time_fs=frame.time_fs, temperature_k=frame.temperature,
                potential_energy_ev=frame.energy, volume_angstrom3=frame.volume,
                trajectory=request.trajectory, frames_written=n)
            loop.call_soon_threadsafe(queue.put_nowait, msg)

        def work():
            if engine == "native":
                from services.md.native import run_native

                run_native(atoms, pot, spec, traj=observe, backend=self.backend)
            else:
                from services.md.lammps import run_lammps

                run_lammps(atoms, pot, spec, traj=observe, backend=self.backend)

        fut = loop.run_in_executor(self._executor, work)
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, None))
        last = None
        try:
            while True:
                msg = await queue.get()
                if msg is None:
                    break
                last = msg
                yield msg
            fut.result()  # re-raise a failure of the run
        finally:
            stop.set()
        done = md_pb2.ProductionProgress(done=True, trajectory=request.trajectory)
        if last is not None:
            done.CopyFrom(last)
            done.done = True
        yield done

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", help="kernel backend: auto | numba | numpy")
    p.add_argument("--md-workers", type=int, default=2, help="runs served at once")
    p.add_argument("--max-atoms", type=int, default=None, help="atoms per structure (default "
                   "$NNMD_MAX_ATOMS or 1,000,000)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="MD steps per segment and per production run (default: no limit)")
    p.add_argument("--store-root", action="append", default=None, metavar="DIR",
                   help="folder (or URL prefix) that model and trajectory stores must be in; "
                        "repeatable (default: any)")


def _options_from_args(args) -> dict:
    return {"backend": args.backend, "workers": args.md_workers, "max_atoms": args.max_atoms,
            "max_steps": args.max_steps, "store_roots": args.store_root}


registry.register(
    registry.ServiceSpec(
        name="md",
        service_names=("nnmd.v1.MD",),
        build=lambda options: [(MDServicer(**options), md_pb2_grpc.add_MDServicer_to_server)],
        add_arguments=_add_arguments,
        options_from_args=_options_from_args,
        close=lambda servicers: [s.close() for s in servicers],
    )
)
