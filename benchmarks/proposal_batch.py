"""HMC proposals one at a time vs batched (nnmd_kernels.slhmc.ProposalBatch).

    .venv/bin/python benchmarks/proposal_batch.py
    .venv/bin/python benchmarks/proposal_batch.py --chains 1 10 100 1000 --cases cu4

For each case and number of chains: the chains' next proposals made one at a time
(`slhmc.propose` with each chain's own force function, as an MD executor did before
batching) and as one batch (`propose_many`: every MD step of every trajectory is one
evaluation of the potential). Wall and CPU time (this process, every thread) per
proposal, and their ratio. Cases:

- cu4: 4-atom fcc Cu cells, 2 MD steps, the tiny model of benchmarks/coordinator_load.py
  (4 radial + 2 angular Chebyshev terms, one hidden layer of 4);
- si64: 64-atom diamond Si cells rattled 0.05 A, 10 MD steps, a model of the default
  size (2 x 40, 24 + 12 Chebyshev terms, 5 A / 4 A).

Each proposal is checked against the one-at-a-time one (positions within 1e-9 A). Both
run with BLAS on one thread, as the proposal engine and the MD executors run them
(services.runtime.threads).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from ase.build import bulk

from nnmd_kernels import slhmc
from nnmd_kernels.md.forces import potential_force_fn
from nnmd_kernels.potential import Potential
from services.runtime.threads import blas_one_thread

CASES = {
    "cu4": dict(species=("Cu",), model=dict(hidden=(4,), n_radial=4, n_angular=2,
                                            r_radial=3.5, r_angular=3.0),
                cell=lambda: bulk("Cu", "fcc", a=3.61, cubic=True), n_md=2, dt=1.0),
    "si64": dict(species=("Si",), model=dict(hidden=(40, 40), n_radial=24, n_angular=12,
                                             r_radial=5.0, r_angular=4.0),
                 cell=lambda: bulk("Si", "diamond", a=5.43, cubic=True).repeat(2),
                 n_md=10, dt=1.0),
}


def chains(case: dict, n: int, seed: int = 0):
    atoms = case["cell"]()
    conf = slhmc.SLHMCConfig(temperature=600.0, dt=case["dt"], n_md=case["n_md"], n_md_min=1)
    rng = np.random.default_rng(seed)
    return [slhmc.init_chain(atoms.positions + rng.normal(0, 0.05, atoms.positions.shape),
                             atoms.numbers, atoms.get_masses(), atoms.cell[:], True, 0.0, conf,
                             seed=(seed, c)) for c in range(n)], conf


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 10, 100, 1000])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--max-alone", type=int, default=200,
                    help="time at most this many one-at-a-time proposals (the rest are "
                         "checked against a sample)")
    args = ap.parse_args()
    with blas_one_thread():
        _run(args)


def _run(args) -> None:
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, numpy {np.__version__}")
    print("| case | atoms | MD steps | chains | alone ms/proposal (CPU) | batched ms/proposal "
          "(CPU) | CPU ratio | evaluations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.cases:
        case = CASES[name]
        pot = Potential.random(case["species"], seed=1, **case["model"])
        warm, conf = chains(case, 2, seed=99)  # numba compiles outside the timing
        slhmc.propose_many(warm, [conf] * 2, pot)
        slhmc.propose(warm[0], conf, potential_force_fn(pot, warm[0].numbers, warm[0].pbc))
        for n in args.chains:
            states, conf = chains(case, n)
            k = min(n, args.max_alone)
            alone, wa, ca = timed(lambda pot=pot, conf=conf, some=states[:k]: [slhmc.propose(
                s, conf, potential_force_fn(pot, s.numbers, s.pbc)) for s in some])
            batch = slhmc.ProposalBatch(pot)
            for i, s in enumerate(states):
                batch.add(i, s, conf)
            got, wb, cb = timed(batch.run)
            got = dict(got)
            for i, p in enumerate(alone):
                dx = float(np.max(np.abs(got[i].positions - p.positions)))
                assert dx <= 1e-9, (name, n, i, dx)
            print(f"| {name} | {states[0].n_atoms} | {case['n_md']} | {n} | "
                  f"{wa / k * 1e3:.3f} ({ca / k * 1e3:.3f}) | {wb / n * 1e3:.3f} "
                  f"({cb / n * 1e3:.3f}) | {ca / k / (cb / n):.1f} | {batch.evaluations} |",
                  flush=True)


if __name__ == "__main__":
    main()
