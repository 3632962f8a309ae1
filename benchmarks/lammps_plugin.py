"""pair_style nnmd (C++ plugin) against the numba path: MD cost per atom-step.

LGPS-like cells of benchmarks/md.py (Li10GeP2S12 composition and density, 50 atoms per
cell, jittered grid) with `Potential.random(["Li", "Ge", "P", "S"])` at the default
settings (50 radial + 30 angular Chebyshev functions, Rc = 6 A, 2 x 40 twisted tanh,
Delta baseline on), NVE, dt = 0.5 fs, one process, one thread everywhere:

  native      nnmd's own engine, numba kernels (NUMBA_NUM_THREADS=1)
  LAMMPS ext  LAMMPS with fix external + the Python/numba callback (the old path)
  LAMMPS nnmd LAMMPS with pair_style nnmd (the plugin; single-threaded per rank)

Wall time of the MD steps only (the first force call, with any JIT compile, excluded:
native as the difference between an N-step and a 1-step run). Prints a markdown table.

    NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/lammps_plugin.py [--sizes 1,1,1 2,2,2] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from md import lgps_like  # noqa: E402  (benchmarks/md.py)

from nnmd_kernels import Potential  # noqa: E402
from services.md.lammps import run_lammps  # noqa: E402
from services.md.lammps_plugin import plugin_path  # noqa: E402
from services.md.native import run_native  # noqa: E402
from services.md.spec import MDSpec  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1,1,1", "2,2,2"],
                    help="cell repetitions a,b,c (50 atoms each)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration; the fastest counts (shared machines)")
    args = ap.parse_args(argv)
    plugin_path(build=True)
    pot = Potential.random(["Li", "Ge", "P", "S"], seed=0)
    spec = MDSpec(ensemble="nve", dt_fs=0.5, steps=args.steps, temperature=500.0,
                  thermo_interval=args.steps, traj_interval=args.steps)
    one = MDSpec(ensemble="nve", dt_fs=0.5, steps=1, temperature=500.0)
    rows = []
    for size in args.sizes:
        reps = tuple(int(v) for v in size.split(","))
        atoms = lgps_like(reps)
        n = len(atoms)
        run_native(atoms, pot, one)  # JIT warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            run_native(atoms, pot, one)
            t1 = time.perf_counter()
            run_native(atoms, pot, spec)
            t2 = time.perf_counter()
            best = min(best, ((t2 - t1) - (t1 - t0)) / (args.steps - 1))
        rows.append(("native (numba)", n, best))
        for label, pair in (("LAMMPS fix external", "external"), ("LAMMPS pair_style nnmd", "plugin")):
            walls = [run_lammps(atoms, pot, spec, pair=pair)[1]["wall_s"] / args.steps
                     for _ in range(args.repeat)]
            rows.append((label, n, min(walls)))
    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.steps} steps NVE, dt 0.5 fs; Potential.random(Li,Ge,P,S) defaults; one thread; "
          f"best of {args.repeat}\n")
    print("| engine | atoms | ms/step | us/atom-step |")
    print("| --- | --- | --- | --- |")
    for engine, n, per_step in rows:
        print(f"| {engine} | {n} | {1e3 * per_step:.1f} | {1e6 * per_step / n:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
