"""Metropolis MC: cost of one move with the local (O(neighbours)) update vs a full evaluation.

    .venv/bin/python benchmarks/mc.py

A random Cu/Ag potential (8 radial + 4 angular Chebyshev functions, Rc 4.5 A, 2 x 16 network,
Delta baseline) on jittered simple-cubic cells; translate + swap moves at 1000 K. "full" is
Potential.compute (energy only) of the whole cell, what a move would cost without the local
update; "local" is the mean wall time of one MC move (proposal, cell-list query, energies
of the affected centres, acceptance). Runs in well under a minute.
"""

from __future__ import annotations

import time

import numpy as np

from nnmd_kernels import Potential, mc


def cell_of(k: int, a: float = 2.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3) * a
    return g + rng.normal(0, 0.08, g.shape), rng.choice([29, 47], len(g)), np.eye(3) * k * a


def main(sizes=(4, 8, 12, 16, 20), moves: int = 200) -> None:
    pot = Potential.random(["Cu", "Ag"], seed=0, hidden=(16, 16), n_radial=8, n_angular=4,
                           r_radial=4.5, r_angular=4.0)
    energy = mc.NNPEnergy(pot)
    cfg = mc.MCConfig(temperature=1000.0, translate=1.0, swap=0.5, max_displacement=0.1)
    print(f"{'atoms':>7} {'full eval (ms)':>15} {'local move (ms)':>16} {'speed-up':>9} "
          f"{'acceptance':>11}")
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
        st = mc.run(st, cfg, energy, 20, ws)
        t = time.perf_counter()
        st = mc.run(st, cfg, energy, moves, ws)
        local = (time.perf_counter() - t) / moves
        acc = sum(st.accepted.values()) / sum(st.tried.values())
        print(f"{len(pos):>7d} {1e3 * full:>15.2f} {1e3 * local:>16.2f} {full / local:>9.1f} "
              f"{acc:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
