"""Metropolis MC: cost of one move with the local (O(neighbours)) update vs a full evaluation.

    .venv/bin/python benchmarks/mc.py

A random Cu/Ag potential (8 radial + 4 angular Chebyshev functions, Rc 4.5 A, 2 x 16 network,
Delta baseline) on jittered simple-cubic cells; translate + swap moves at 1000 K. "full" is
Potential.compute (energy only) of the whole cell, what a move would cost without the local
update; "local" is the mean wall time of one MC move (proposal, incremental descriptor
update of the affected centres, their networks, acceptance, undo on reject), and "generic"
the same move through the old path (NNPEnergy(incremental=False): every centre within Rc
recomputed through compute_pairs). ratio = local / full; all in one process. "cpu" is the
calling thread's CPU time per move (time.thread_time), which a busy machine inflates less
than the wall time. Runs in about a minute.
"""

from __future__ import annotations

import time

import numpy as np

from nnmd_kernels import Potential, mc


def cell_of(k: int, a: float = 2.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3) * a
    return g + rng.normal(0, 0.08, g.shape), rng.choice([29, 47], len(g)), np.eye(3) * k * a


def main(sizes=(4, 8, 10, 16, 20), moves: int = 20000, generic_moves: int = 200) -> None:
    pot = Potential.random(["Cu", "Ag"], seed=0, hidden=(16, 16), n_radial=8, n_angular=4,
                           r_radial=4.5, r_angular=4.0)
    energy = mc.NNPEnergy(pot)
    old = mc.NNPEnergy(pot, incremental=False)
    cfg = mc.MCConfig(temperature=1000.0, translate=1.0, swap=0.5, max_displacement=0.1)
    print(f"{'atoms':>7} {'full eval (ms)':>15} {'local move (us)':>16} {'cpu (us)':>9} "
          f"{'moves/s':>8} {'local/full':>11} {'generic move (ms)':>18} {'acceptance':>11}")
    for k in sizes:
        pos, num, cell = cell_of(k)
        pot.compute(pos, num, cell, True, forces=False)  # JIT warm-up
        t = time.perf_counter()
        reps = 3
        for _ in range(reps):
            pot.compute(pos, num, cell, True, forces=False)
        full = (time.perf_counter() - t) / reps
        st = mc.init(pos, num, cell, True, cfg, energy, seed=0)
        ws = mc.workspace_for(st, cfg, energy)
        st = mc.run(st, cfg, energy, 200, ws)
        t, c = time.perf_counter(), time.thread_time()
        st = mc.run(st, cfg, energy, moves, ws)
        local = (time.perf_counter() - t) / moves
        cpu = (time.thread_time() - c) / moves
        acc = sum(st.accepted.values()) / sum(st.tried.values())
        wso = mc.workspace_for(st, cfg, old)
        st = mc.run(st, cfg, old, 20, wso)
        t = time.perf_counter()
        mc.run(st, cfg, old, generic_moves, wso)
        generic = (time.perf_counter() - t) / generic_moves
        print(f"{len(pos):>7d} {1e3 * full:>15.2f} {1e6 * local:>16.1f} {1e6 * cpu:>9.1f} "
              f"{1 / local:>8.0f} 1/{full / local:<9.0f} {1e3 * generic:>18.2f} {acc:>11.2f}",
              flush=True)


if __name__ == "__main__":
    main()
