"""Many chains' HMC proposals on one thread, continuously batched (issue 18).

A campaign's chains each ask for a proposal (nnmd_kernels.slhmc.propose + screen) when
their previous step is done. Computed one at a time, a small cell's proposal is mostly
per-call overhead (about 1.2 ms of CPU for 2 MD steps of 4 atoms here, of which the
force evaluation's arithmetic is a few per cent). The engine keeps one
nnmd_kernels.slhmc.ProposalBatch per model version: a request joins it at the next MD
step, every MD step of every trajectory in it is one evaluation of the potential, and
a proposal is handed back the moment its trajectory ends (continuous batching: a short
trajectory never waits for a long one). With many chains the cost per proposal falls
about 10-fold (benchmarks/proposal_batch.py, docs/benchmarks.md).

Each chain keeps its neighbour list from one proposal to the next (per model version),
as the one-at-a-time path did; the proposal is the chain's own `propose` up to
floating-point summation order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future


class ProposalEngine:
    """submit(chain, version, state, config) -> Future of the screened Proposal.

    model(version) -> Potential is called on the engine's thread, once per version in
    use. max_atoms bounds the atoms in flight (requests beyond it wait their turn).
    A request whose proposal fails (overlapping atoms, an unknown element, a model
    that cannot be read) gets that exception on its future; the others go on.
    """

    def __init__(self, model: Callable[[int], object], *, backend: str = "auto",
                 max_atoms: int = 200_000, name: str = "md-batch") -> None:
        self._model = model
        self.backend, self.max_atoms = backend, int(max_atoms)
        self._cv = threading.Condition()
        self._pending: deque = deque()
        self._batches: dict[int, object] = {}  # version -> ProposalBatch
        self._systems: dict[str, tuple[int, object]] = {}  # chain -> (version, BatchSystem)
        self._closed = False
        self.proposals = 0
        self.evaluations = 0  # batched potential evaluations
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, chain: str, version: int, state, config) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the proposal engine is closed")
            self._pending.append((fut, chain, int(version), state, config))
            self._cv.notify()
        return fut

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    # ------------------------------------------------------------ engine thread
    def _in_flight_atoms(self) -> int:
        return sum(b.n_atoms for b in self._batches.values())

    def _admit(self) -> None:
        from nnmd_kernels.slhmc import ProposalBatch

        with self._cv:
            while not self._pending and not self._batches and not self._closed:
                self._cv.wait()
            budget = self.max_atoms - self._in_flight_atoms()
            take = []
            while self._pending and (not take or budget > 0):
                req = self._pending.popleft()
                budget -= req[3].n_atoms
                take.append(req)
        for fut, chain, version, state, config in take:
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                batch = self._batches.get(version)
                if batch is None:
                    batch = self._batches[version] = ProposalBatch(self._model(version),
                                                                   backend=self.backend)
                have = self._systems.get(chain)
                if have is not None and have[0] == version:
                    system = have[1]
                else:  # a chain's list from an older version is of no use any more
                    system = batch.system(state)
                    self._systems[chain] = (version, system)
            except BaseException as exc:  # noqa: BLE001 - the asking chain gets it
                fut.set_exception(exc)
                continue
            batch.add((fut, config), state, config, system=system)

    def _run(self) -> None:
        from services.runtime.threads import blas_one_thread

        with blas_one_thread():  # numba's threads and BLAS's apart (runtime/threads.py)
            self._loop()

    def _loop(self) -> None:
        from nnmd_kernels.slhmc import screen

        while True:
            self._admit()
            with self._cv:
                if self._closed and not self._pending and not self._batches:
                    return
            for version, batch in list(self._batches.items()):
                try:
                    ended = batch.advance()
                    self.evaluations += 1
                except BaseException as exc:  # noqa: BLE001 - a bug: fail this batch's chains
                    ended = [(key, exc) for key, _ in batch.drain()]
                for (fut, config), out in ended:
                    self.proposals += 1
                    if isinstance(out, BaseException):
                        fut.set_exception(out)
                    else:
                        try:
                            fut.set_result(screen(out, config))
                        except BaseException as exc:  # noqa: BLE001
                            fut.set_exception(exc)
                if not len(batch):
                    del self._batches[version]
