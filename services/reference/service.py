"""The Reference gRPC service (nnmd.v1.Reference/Compute).

Thin: unpack and validate the structures -> the plain ``compute`` of a
backend (in-process) or of a :class:`WorkerPool` of Ray actors -> pack the
labels. A structure whose calculation failed gets an empty ``Labels`` (no
energy: "not computed"), never numbers; the reasons travel in the trailing
metadata ``nnmd-failures`` as JSON ``[{"index", "reason", "message"}]``.
Requests that carry an idempotency key run once; a retry gets the first answer.
A structure's ``id`` and ``restart_from_id`` reach the backend as
``atoms.info["nnmd_id"]`` / ``["nnmd_restart_from"]``: with a QE reference a
structure restarts from the kept SCF of an earlier one (docs/reference.md).

With ``destination`` set, the converged labels (never the failed ones) are
appended to that Zarr store with the request's provenance, and the response
is sent only once they are durable; such a request must carry an idempotency
key, so a retry cannot append twice. The servicer then is that store's writer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from services.proto.nnmd.v1 import reference_pb2, reference_pb2_grpc
from services.reference.qe import QEConfig, RetryPolicy
from services.reference.spec import make_backend, settings_hash
from services.reference.types import Failure, Outcome, ReferenceBackend, Result
from services.reference.wire import FAILURES_TRAILER, failures_of  # noqa: F401 - re-exported
from services.runtime import registry
from services.runtime.convert import (
    LabelArrays,
    Limits,
    from_atoms,
    labels_to_proto,
    structure_from_proto,
    to_atoms,
)
from services.runtime.errors import InvalidArgument
from services.runtime.server import IdempotencyCache, idempotency_key
from services.store.store import check_store_url

SOURCES = {1: "aimd", 2: "hmc", 3: "mc", 4: "import"}  # nnmd.v1.SourceKind
PROPERTIES = ("energy", "forces", "stress")


def pack(outcomes: list[Outcome], properties: set[str]
         ) -> tuple[list, list[float], list[dict]]:
    """Labels messages, wall times, and failure records for ``outcomes``."""
    labels, walls, failures = [], [], []
    for i, o in enumerate(outcomes):
        if isinstance(o, Result):
            labels.append(labels_to_proto(LabelArrays(
                energy=o.energy if "energy" in properties else float("nan"),
                forces=o.forces if "forces" in properties else None,
                stress=o.stress if "stress" in properties else None)))
            walls.append(float(o.info.get("wall_s", 0.0)))
        else:
            assert isinstance(o, Failure)
            labels.append(labels_to_proto(LabelArrays()))
            walls.append(0.0)
            failures.append({"index": i, "reason": o.reason.value, "message": o.message})
    return labels, walls, failures


class ReferenceServicer(reference_pb2_grpc.ReferenceServicer):
    """reference: a spec string (emt, qe:input.pwi, ...). workers: 0 = compute in this
    process, one request at a time; n > 0 = a pool of n Ray actors, each reserving
    worker_cpus CPUs (default ranks x threads)."""

    def __init__(self, reference: str = "emt", workers: int = 0, ranks: int = 1,
                 threads: int = 1, timeout_s: float = 3600.0, attempts: int = 3,
                 keep_scratch: str = "failed", scratch: str | None = None,
                 max_atoms: int | None = None, worker_cpus: float | None = None,
                 backend: ReferenceBackend | None = None, max_structures: int | None = None,
                 store_roots: list[str] | None = None, restart: bool = True,
                 restart_root: str | None = None) -> None:
        self.spec = reference
        self.qe = QEConfig(ranks=ranks, threads=threads, timeout_s=timeout_s,
                           retry=RetryPolicy(attempts=attempts), keep=keep_scratch,
                           scratch_root=scratch, restart=restart, restart_root=restart_root)
        # Validates the spec (and a QE input) here, at start-up, with a clear error.
        self.backend = backend if backend is not None else make_backend(reference, qe=self.qe)
        self.settings_hash = settings_hash(self.backend)
        self.pool = None
        if workers > 0:
            from services.reference.pool import WorkerPool

            self.pool = WorkerPool(reference, workers, self.qe, num_cpus=worker_cpus)
        self._limits = Limits(max_atoms=max_atoms) if max_atoms else Limits()
        self.max_structures = max_structures  # None = no limit per request
        self.store_roots = list(store_roots) if store_roots is not None else None
        self._executor = ThreadPoolExecutor(max_workers=max(4, 4 * workers),
                                            thread_name_prefix="reference")
        self._local = asyncio.Semaphore(1)  # in-process: one calculation at a time
        self._idempotency = IdempotencyCache()
        self._writers: dict = {}  # store URL -> StoreWriter, opened on first use

    def compute(self, atoms_list) -> list[Outcome]:
        """The plain function behind the RPC."""
        if self.pool is not None:
            return self.pool.compute(atoms_list)
        return self.backend.compute(atoms_list)

    async def _run(self, atoms_list) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        if self.pool is not None:
            return await loop.run_in_executor(self._executor, self.compute, atoms_list)
        async with self._local:
            return await loop.run_in_executor(self._executor, self.compute, atoms_list)

    async def Compute(self, request, context):
        if self.max_structures is not None and len(request.structures) > self.max_structures:
            raise InvalidArgument("structures", f"{len(request.structures)} structures is more "
                                  f"than the limit {self.max_structures} per request",
                                  "split the request")
        atoms_list = [to_atoms(structure_from_proto(s, self._limits, f"structures[{i}]"))
                      for i, s in enumerate(request.structures)]
        props = set(request.properties) or {"energy", "forces"}
        for i, p in enumerate(request.properties):
            if p not in PROPERTIES:
                raise InvalidArgument(f"properties[{i}]", f"unknown property {p!r}",
                                      f"use any of {', '.join(PROPERTIES)}")
        url = request.destination.url if request.HasField("destination") else ""
        if url:
            check_store_url(url, "destination.url", self.store_roots)
            if idempotency_key(context) is None:
                raise InvalidArgument("destination", "appending to a store needs an "
                                      "idempotency key", "send metadata from "
                                      "services.runtime.channel.idempotency_metadata()")
            if len(request.provenance) != len(atoms_list):
                raise InvalidArgument("provenance", f"{len(request.provenance)} entries for "
                                      f"{len(atoms_list)} structures",
                                      "send one Provenance per structure")
            for i, p in enumerate(request.provenance):
                if p.source not in SOURCES:
                    raise InvalidArgument(f"provenance[{i}].source", "unspecified source",
                                          "set AIMD, HMC, MC or IMPORT")

        async def operation():
            outcomes = await self._run(atoms_list)
            labels, walls, failures = pack(outcomes, props)
            ids = []
            if url:
                records = [self._record(a, o, p) for a, o, p in
                           zip(atoms_list, outcomes, request.provenance) if o.ok]
                loop = asyncio.get_running_loop()
                ids = await loop.run_in_executor(self._executor, self._append, url, records)
            return labels, walls, failures, ids

        labels, walls, failures, ids = await self._idempotency.run(context, operation)
        if failures:
            context.set_trailing_metadata(((FAILURES_TRAILER, json.dumps(failures)),))
        return reference_pb2.ComputeResponse(labels=labels, wall_time_s=walls, record_ids=ids,
                                             reference_settings_hash=self.settings_hash)

    def _record(self, atoms, result: Result, p):
        from services.store import Provenance, Record

        structure, _ = from_atoms(atoms)
        return Record(structure, LabelArrays(result.energy, result.forces, result.stress),
                      Provenance(campaign=p.campaign, chain=p.chain, step=int(p.step),
                                 source=SOURCES[p.source], model_version=int(p.model_version),
                                 accepted=bool(p.accepted),
                                 reference_settings_hash=self.settings_hash,
                                 wall_time=float(result.info.get("wall_s", float("nan")))))

    def _append(self, url: str, records: list) -> list[int]:
        """Appends and returns the record ids once durable (runs in a worker thread)."""
        from services.store import Store

        writer = self._writers.get(url)
        if writer is None:
            writer = self._writers[url] = Store(url).writer()
        return writer.append(records) if records else []

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
        if self.pool is not None:
            self.pool.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default="emt",
                   help="emt | qe:input.pwi | tblite:GFN1-xTB | chgnet | ase:module:factory")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray actors computing in parallel (0 = in this process)")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks per pw.x run")
    p.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads per rank")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per pw.x run")
    p.add_argument("--attempts", type=int, default=3,
                   help="tries per structure (the retry ladder: as given; more SCF steps and "
                        "less mixing; and more smearing where the input has smearing)")
    p.add_argument("--keep-scratch", choices=("never", "failed", "always"), default="failed")
    p.add_argument("--scratch", default=None, help="folder for scratch folders")
    p.add_argument("--no-restart", dest="restart", action="store_false",
                   help="never start pw.x from a kept SCF (Structure.restart_from_id ignored, "
                        "nothing kept)")
    p.add_argument("--restart-root", default=None, metavar="DIR",
                   help="folder of kept SCFs for restarts (default: nnmd-qe-restart under "
                        "--scratch or the temp dir); workers must share it")
    p.add_argument("--max-atoms", type=int, default=None, help="atoms per structure (default "
                   "$NNMD_MAX_ATOMS or 1,000,000)")
    p.add_argument("--max-structures", type=int, default=None,
                   help="structures per request (default: no limit)")
    p.add_argument("--store-root", action="append", default=None, metavar="DIR",
                   help="folder (or URL prefix) that destination stores must be in; repeatable "
                        "(default: any)")


def _options_from_args(args) -> dict:
    return {"reference": args.reference, "workers": args.workers, "ranks": args.ranks,
            "threads": args.threads, "timeout_s": args.timeout, "attempts": args.attempts,
            "keep_scratch": args.keep_scratch, "scratch": args.scratch,
            "max_atoms": args.max_atoms, "max_structures": args.max_structures,
            "store_roots": args.store_root, "restart": args.restart,
            "restart_root": args.restart_root}


def _close(servicers) -> None:
    for s in servicers:
        s.close()


registry.register(
    registry.ServiceSpec(
        name="reference",
        service_names=("nnmd.v1.Reference",),
        build=lambda options: [(ReferenceServicer(**options),
                                reference_pb2_grpc.add_ReferenceServicer_to_server)],
        add_arguments=_add_arguments,
        options_from_args=_options_from_args,
        close=_close,
    )
)
