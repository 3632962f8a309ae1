"""Replica parallelism for the native engine: one worker process per GPU.

A batch of independent MD replicas (every chain's SLHMC proposal, or an ensemble of
production runs) is split into G contiguous chunks; worker g runs its chunk with
services.md.native.run_native_batch, pinned to one GPU by CUDA_VISIBLE_DEVICES, which
it sets before anything imports CuPy or numba.cuda (the job arrives pickled and is
unpickled only after that). Without GPUs the workers are CPU processes (GPUs hidden).
Each replica keeps its seed from its position in the whole batch (spec.seed + index,
as run_native_batch), so the result equals the single-process batch exactly,
whatever G. Results come back in input order; when a worker fails (an exception, a
crash, the timeout) each of its replicas carries the error and the others are kept.

Processes are started with multiprocessing's "spawn" (a fresh interpreter: no CUDA
context or thread state inherited from the caller).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait


@dataclass
class ReplicaResult:
    """One replica's outcome: the final MDState, or the error of the worker that ran it."""

    index: int
    state: object | None
    error: str | None
    worker: int
    gpu: int | None
    cuda_visible_devices: str | None  # what the worker's environment said

    @property
    def ok(self) -> bool:
        return self.error is None


def _worker(conn, gpu, job: bytes):
    """Pin to `gpu` (None: no GPU), then unpickle and run the chunk; report through conn."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        structures, potential, spec, seeds, backend = pickle.loads(job)
        from services.md.native import run_native_batch

        states = run_native_batch(structures, potential, spec, seeds=seeds, backend=backend)
        conn.send(("ok", states, env))
    except BaseException as exc:  # report everything, including a SystemExit in user code
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", env))
    finally:
        conn.close()


def visible_gpus() -> list[int]:
    """GPU ids this process may hand out: CUDA_VISIBLE_DEVICES, else nvidia-smi's count."""
    from services.md.lammps import count_gpus

    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        ids = [d.strip() for d in vis.split(",") if d.strip() and d.strip() != "-1"]
        return [int(d) for d in ids if d.isdigit()]
    return list(range(count_gpus()))


def _chunks(n: int, g: int) -> list[range]:
    """n replicas as g contiguous chunks, sizes differing by at most one."""
    q, r = divmod(n, g)
    out, start = [], 0
    for k in range(g):
        size = q + (k < r)
        out.append(range(start, start + size))
        start += size
    return out


def run_replicas(structures, potential, spec, seeds=None, *, gpus=None, n_workers: int | None = None,
                 backend: str = "auto", timeout: float | None = None) -> list[ReplicaResult]:
    """Run independent replicas across worker processes, one per GPU.

    gpus: GPU ids to use (default: visible_gpus()); one worker per id. With no GPU,
    n_workers CPU workers (default: min(replicas, CPU cores)). seeds: one per replica
    (default spec.seed + index). timeout: seconds for the whole batch; workers still
    running then are terminated and their replicas reported. Returns one ReplicaResult
    per structure, in input order.
    """
    structures = list(structures)
    n = len(structures)
    seeds = [spec.seed + k for k in range(n)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} structures")
    if n == 0:
        return []
    gpus = visible_gpus() if gpus is None else [int(g) for g in gpus]
    if gpus:
        slots = gpus[:n]
    else:
        g = n_workers if n_workers is not None else min(n, os.cpu_count() or 1)
        if g < 1:
            raise ValueError(f"n_workers must be >= 1, got {g}")
        slots = [None] * min(g, n)
    ctx = mp.get_context("spawn")
    chunks = _chunks(n, len(slots))
    procs = []
    for w, (gpu, chunk) in enumerate(zip(slots, chunks)):
        job = pickle.dumps(([structures[k] for k in chunk], potential, spec, [seeds[k] for k in chunk], backend))
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(send, gpu, job), name=f"nnmd-md-worker-{w}", daemon=True)
        p.start()
        send.close()  # the child holds the only write end: EOF when it dies
        procs.append((w, gpu, chunk, p, recv))

    replies: dict[int, tuple] = {}
    pending = {recv: w for w, _, _, _, recv in procs}
    deadline = None if timeout is None else time.monotonic() + timeout
    late: set[int] = set()
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait(list(pending), timeout=left)
        if not ready:  # timed out: those workers are terminated below
            for w in pending.values():
                replies[w] = ("error", f"worker {w} did not finish within {timeout} s", None)
                late.add(w)
            break
        for recv in ready:
            w = pending.pop(recv)
            try:
                replies[w] = recv.recv()
            except (EOFError, OSError):
                replies[w] = ("error", f"worker {w} died without a result", None)
    results: list[ReplicaResult | None] = [None] * n
    for w, gpu, chunk, p, recv in procs:
        if p.is_alive() and w not in late:
            p.join(10.0)  # it has replied; let it exit
        if p.is_alive():
            p.terminate()
            p.join()
        recv.close()
        kind, payload, env = replies[w]
        if kind == "error" and "died without a result" in payload:
            payload += f" (exit code {p.exitcode})"
        for pos, k in enumerate(chunk):
            ok = kind == "ok"
            results[k] = ReplicaResult(k, payload[pos] if ok else None, None if ok else payload, w, gpu, env)
    return results


def states_or_raise(results) -> list:
    """The final states in input order; RuntimeError naming the failed replicas and why."""
    bad = [r for r in results if not r.ok]
    if bad:
        first = bad[0].error.splitlines()[0]
        raise RuntimeError(f"{len(bad)} of {len(results)} replicas failed "
                           f"(indices {[r.index for r in bad]}): {first}")
    return [r.state for r in results]


__all__ = ["ReplicaResult", "run_replicas", "states_or_raise", "visible_gpus"]
