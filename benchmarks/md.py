"""MD engine throughput: native engine vs LAMMPS (fix external) on 1 and 2 MPI ranks.

LGPS-like cells (Li10GeP2S12 composition and density, 50 atoms per 8.72 x 8.72 x 12.63 A
cell, atoms on a jittered grid) with `Potential.random(["Li", "Ge", "P", "S"])` at the
default settings of the source benchmark (50 radial + 30 angular Chebyshev functions,
Rc = 6 A, 2 x 40 network, Delta baseline on), NVT (Bussi) at 500 K, dt = 0.5 fs.
Prints a markdown table: steps/s and microseconds per atom-step (wall time of the MD
loop, setup excluded; LAMMPS includes its own overhead and the Python callback).

    .venv/bin/python benchmarks/md.py [--sizes 1,1,1 2,2,1 2,2,2] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ase import Atoms  # noqa: E402
from ase.io import write  # noqa: E402

from nnmd_kernels import Potential  # noqa: E402
from services.md.lammps import launch_lammps  # noqa: E402
from services.md.native import run_native  # noqa: E402
from services.md.spec import MDSpec  # noqa: E402

LGPS_CELL = np.array([8.72, 8.72, 12.63])  # A, tetragonal P4_2/nmc, 50 atoms
LGPS_FORMULA = ["Li"] * 10 + ["Ge"] + ["P"] * 2 + ["S"] * 12  # per 25 atoms


def lgps_like(reps, seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.diag(LGPS_CELL * np.asarray(reps))
    n = 50 * int(np.prod(reps))
    k = np.ceil((n * np.array([1, 1, 1]) * np.diag(cell) ** 3 / np.prod(np.diag(cell)))
                ** (1 / 3)).astype(int)
    grid = np.stack(np.meshgrid(*(np.arange(m) for m in k), indexing="ij"), -1).reshape(-1, 3)
    grid = grid[rng.permutation(len(grid))[:n]]
    frac = (grid + 0.5 + rng.normal(0, 0.06, size=grid.shape)) / k
    symbols = LGPS_FORMULA * (n // 25)
    rng.shuffle(symbols)
    return Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1,1,1", "2,2,1", "2,2,2"],
                    help="cell repetitions a,b,c (50 atoms each)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration; the fastest counts (shared machines)")
    args = ap.parse_args(argv)
    pot = Potential.random(["Li", "Ge", "P", "S"], seed=0)
    spec = MDSpec(ensemble="nvt", dt_fs=0.5, steps=args.steps, temperature=500.0,
                  thermo_interval=args.steps, traj_interval=args.steps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "lgps.nnmd"
        pot.save(model)
        for size in args.sizes:
            reps = tuple(int(v) for v in size.split(","))
            atoms = lgps_like(reps)
            n = len(atoms)
            run_native(atoms, pot, MDSpec(ensemble="nvt", dt_fs=0.5, steps=1,
                                          temperature=500.0))  # JIT warm-up
            walls = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run_native(atoms, pot, spec)  # includes its initial force call
                walls.append(time.perf_counter() - t0)
            rows.append(("native", 1, n, min(walls)))
            structure = tmp / f"lgps_{n}.extxyz"
            write(structure, atoms)
            for ranks in args.ranks:
                # wall_s: the MD steps only (the first force call, with JIT, is excluded)
                walls = [launch_lammps(structure, model, spec, ranks, tmp / f"run_{n}_{ranks}",
                                       timeout=3600)["wall_s"] for _ in range(args.repeat)]
                rows.append((f"LAMMPS {ranks} rank{'s' if ranks > 1 else ''}", ranks, n,
                             min(walls)))
    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.steps} steps NVT 500 K, dt 0.5 fs; Potential.random(Li,Ge,P,S) defaults; "
          f"best of {args.repeat}\n")
    print("| engine | ranks | atoms | steps/s | us/atom-step |")
    print("| --- | --- | --- | --- | --- |")
    for engine, ranks, n, wall in rows:
        sps = args.steps / wall
        print(f"| {engine} | {ranks} | {n} | {sps:.2f} | {1e6 * wall / (args.steps * n):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
