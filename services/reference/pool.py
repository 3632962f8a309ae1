"""A pool of Ray actors that run the reference, one request at a time each.

Each worker reserves the CPUs its calculation uses (``num_cpus = ranks x
threads`` for pw.x), so Ray never places more MPI ranks on a node than it has
cores. The pool knows nothing about the work: ``compute(atoms_list)`` takes
the next idle worker, and when a worker dies mid-request the same request goes
to another worker (a replacement is started in the dead one's place); a dead
actor is never handed out again.

Structures travel to the workers with their ``atoms.info``, so QE restarts
(``nnmd_id`` / ``nnmd_restart_from``) work in the pool when its workers share
``QEConfig.restart_dir()`` (one node, or a shared ``restart_root``); a worker that
cannot see the kept SCF starts cold.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence

import ray
from ase import Atoms

from services.reference.qe import QEConfig
from services.reference.types import Outcome

log = logging.getLogger("nnmd.reference")


@ray.remote
class ReferenceWorker:
    """One reference backend in its own process (Ray runs its calls one at a time)."""

    def __init__(self, spec: str, qe: QEConfig | None) -> None:
        from services.reference.spec import make_backend

        self.backend = make_backend(spec, qe=qe)

    def pid(self) -> int:
        return os.getpid()

    def compute(self, atoms_list: list[Atoms]) -> list[Outcome]:
        outcomes = self.backend.compute(atoms_list)
        for o in outcomes:
            o.info["worker_pid"] = os.getpid()
        return outcomes


class NoLiveWorkers(RuntimeError):
    pass


class WorkerPool:
    """``workers`` Ray actors running reference ``spec``.

    num_cpus: CPUs each worker reserves (default: ranks x threads of ``qe``).
    max_replacements: how many dead workers may be replaced over the pool's life.
    """

    def __init__(self, spec: str, workers: int = 2, qe: QEConfig | None = None, *,
                 num_cpus: float | None = None, max_replacements: int | None = None,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        qe = qe or QEConfig()
        self.spec, self.qe = spec, qe
        self.num_cpus = float(num_cpus if num_cpus is not None else qe.ranks * qe.threads)
        self._replacements_left = 2 * workers if max_replacements is None else max_replacements
        self._lock = threading.Lock()
        self._idle: queue.Queue = queue.Queue()
        self._live: list = []
        actors = [self._new_actor() for _ in range(workers)]
        try:
            ray.get([a.pid.remote() for a in actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            for a in actors:
                ray.kill(a)
            free = ray.available_resources().get("CPU", 0)
            raise RuntimeError(
                f"could not start {workers} reference workers of {self.num_cpus:g} CPUs each in "
                f"{start_timeout_s:g} s ({free:g} CPUs free in the Ray cluster); use fewer "
                "workers or ranks") from None
        except ray.exceptions.RayActorError as exc:
            for a in actors:
                ray.kill(a)
            raise ValueError(f"reference '{spec}' could not start in a worker: {exc}") from exc
        for a in actors:
            self._live.append(a)
            self._idle.put(a)

    def _new_actor(self):
        return ReferenceWorker.options(num_cpus=self.num_cpus, max_restarts=0).remote(
            self.spec, self.qe)

    @property
    def actors(self) -> list:
        with self._lock:
            return list(self._live)

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def _retire(self, actor) -> None:
        """Drop a dead worker for good; start a replacement while the budget allows."""
        with self._lock:
            if actor in self._live:
                self._live.remove(actor)
            replace = self._replacements_left > 0
            if replace:
                self._replacements_left -= 1
        if replace:
            new = self._new_actor()
            with self._lock:
                self._live.append(new)
            self._idle.put(new)
            log.warning("reference worker died; started a replacement")

    def _acquire(self):
        while True:
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if not self._live:
                        raise NoLiveWorkers("all reference workers died and none can be "
                                            "replaced") from None

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        """Outcomes for ``atoms_list`` from the next idle worker; survives worker deaths."""
        atoms_list = list(atoms_list)
        while True:
            actor = self._acquire()
            try:
                out = ray.get(actor.compute.remote(atoms_list))
            except ray.exceptions.RayActorError:
                self._retire(actor)
                continue  # the same request goes to another worker
            except BaseException:
                self._idle.put(actor)
                raise
            self._idle.put(actor)
            return out

    def close(self) -> None:
        with self._lock:
            actors, self._live = self._live, []
        for a in actors:
            ray.kill(a)
