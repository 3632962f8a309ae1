"""The source's GPU benchmark (docs/source.md, "The benchmark"), as closely as its settings allow.

Li10GeP2S12 at its crystal density (50 atoms per 8.72 x 8.72 x 12.63 A^3; the LGPS-like
cubic cell of benchmarks/kernels.py), 21,600 atoms; Chebyshev 50 radial + 30 angular,
Rc 6.0 A, Delta baseline on, 2 x 40 twisted tanh (`Potential.random`, float64); NVT
(Bussi) at 500 K, dt 0.5 fs, 100 steps timed after warm-up steps (numba compile, CUDA
context, neighbour-list allocation). Prints seconds per 100 steps and microseconds per
atom-step for the CPU engine (backend "numba") and, where CuPy sees a GPU, the
device-resident engine (nnmd_kernels.gpu.md) and the CPU integrators on backend "cuda";
beside the source's table. Without a device the GPU rows are printed as pending.

    python benchmarks/seed_lgps.py [--atoms 21600] [--steps 100] [--warmup 2] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

if "--gpu-simulator" in sys.argv:  # numba reads this when numba.cuda is first imported
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import LGPS_DENSITY, lgps_like  # noqa: E402

from nnmd_kernels import Potential, md  # noqa: E402
from nnmd_kernels.elements import MASSES  # noqa: E402
from nnmd_kernels.gpu.device import gpu_available  # noqa: E402
from nnmd_kernels.md.forces import potential_force_fn  # noqa: E402

SOURCE = [  # docs/source.md, "The benchmark": 21,600 atoms, 100 steps
    ("source: Xeon Platinum, 72 cores (72 MPI)", "CPU", 150.8),
    ("source: EPYC 7742, 64 cores (64 MPI)", "CPU", 56.4),
    ("source: 1 x V100", "GPU", 21.6),
    ("source: 1 x A100", "GPU", 16.0),
    ("source: 8 x A100", "GPU", 2.5),
]
SOURCE_ATOMS = 21600
T_K, DT_FS, TAU_FS, SKIN_A = 500.0, 0.5, 100.0, 1.0


def _time_engine(step_fn, state, warmup: int, steps: int, sync=lambda: None):
    for _ in range(warmup):
        state = step_fn(state)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        state = step_fn(state)
    sync()
    return time.perf_counter() - t0, state


def run_host_integrator(pot, pos, numbers, cell, args, backend="numba"):
    """The CPU integrators over the `backend` force function (numba: all on the CPU)."""
    ff = potential_force_fn(pot, numbers, True, skin=SKIN_A, backend=backend)
    init_fn, step_fn = md.nvt_bussi(ff, DT_FS, T_K, tau=TAU_FS)
    state = init_fn(pos, MASSES[numbers], numbers, cell, temperature=T_K, seed=0)
    wall, state = _time_engine(step_fn, state, args.warmup, args.steps)
    return wall, md.temperature(state)


def run_gpu_resident(pot, pos, numbers, cell, args):
    from nnmd_kernels.gpu import md as gmd

    ff = gmd.device_force_fn(pot, numbers, True, skin=SKIN_A)
    sync = (lambda: None) if ff.xp is np else ff.xp.cuda.Device().synchronize
    init_fn, step_fn = gmd.nvt_bussi(ff, DT_FS, T_K, tau=TAU_FS)
    state = init_fn(pos, MASSES[numbers], numbers, cell, temperature=T_K, seed=0)
    wall, state = _time_engine(step_fn, state, args.warmup, args.steps, sync)
    return wall, md.temperature(gmd.host_state(state))


def _device_name() -> str:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:
        return "GPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atoms", type=int, default=SOURCE_ATOMS)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (JIT, allocation)")
    ap.add_argument("--skip-cpu", action="store_true", help="GPU rows only (the CPU row is slow)")
    ap.add_argument("--gpu-simulator", action="store_true",
                    help="run the GPU rows in numba's CUDA simulator (checks the code path; "
                         "~1000x slower, use a few hundred atoms)")
    args = ap.parse_args(argv)
    if args.atoms < 25 or args.steps < 1 or args.warmup < 0:
        ap.error("need --atoms >= 25, --steps >= 1, --warmup >= 0")

    import numba

    pos, numbers, cell = lgps_like(args.atoms)
    pot = Potential.random(["Li", "Ge", "P", "S"], seed=0, density=LGPS_DENSITY)
    d = pot.descriptor
    print(f"# seed LGPS benchmark: {args.atoms} atoms (LGPS composition and density, cubic "
          f"{cell[0, 0]:.2f} A), Chebyshev {d.n_radial}+{d.n_angular}, Rc {d.r_radial} A, "
          f"Delta {'on' if pot.baseline is not None else 'off'}, 2x40 {pot.activation}, float64; "
          f"NVT Bussi {T_K:.0f} K, dt {DT_FS} fs, {args.steps} steps timed after {args.warmup}")
    print(f"# machine: {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} cores, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, date {time.strftime('%Y-%m-%d')}")

    rows = []  # (engine, wall s for args.steps, temperature K)
    if not args.skip_cpu:
        rows.append(("this code, CPU (numba), all cores",
                     *run_host_integrator(pot, pos, numbers, cell, args)))
    # temperatures are printed as a check that the runs agree, not as physics: the weights
    # are random, so the system heats far above 500 K within a few steps
    gpu = gpu_available() or args.gpu_simulator
    if gpu:
        name = _device_name() if gpu_available() else "simulated GPU (numba CUDASIM, not a timing)"
        rows.append((f"this code, 1 x {name}, device-resident MD",
                     *run_gpu_resident(pot, pos, numbers, cell, args)))
        rows.append((f"this code, 1 x {name}, backend='cuda', host integrator",
                     *run_host_integrator(pot, pos, numbers, cell, args, "cuda")))

    print()
    print("| run | atoms | s per 100 steps | us/atom-step | s per 100 steps at 21,600 atoms |")
    print("| --- | --- | --- | --- | --- |")
    for engine, wall, temp in rows:
        us = 1e6 * wall / (args.steps * args.atoms)
        per100 = wall * 100.0 / args.steps
        print(f"| {engine} (T = {temp:.0f} K) | {args.atoms} | {per100:.2f} | {us:.1f} | "
              f"{us * SOURCE_ATOMS * 100 / 1e6:.1f} (linear) |")
    if not gpu:
        print("| this code, 1 GPU | - | pending (no device) | pending | pending |")
    for engine, _kind, s in SOURCE:
        us = 1e6 * s / (100 * SOURCE_ATOMS)
        print(f"| {engine} | {SOURCE_ATOMS} | {s:.1f} | {us:.1f} | {s:.1f} |")
    if not gpu:
        print("# GPU rows pending: no CUDA device with CuPy here (pip install nnmd[gpu] on a GPU "
              "machine, then: python benchmarks/seed_lgps.py --skip-cpu)")
    print("# last column: this run's us/atom-step x 21,600 x 100 (cost is linear in N at fixed "
          "density); source rows are LAMMPS with the product's NNP; T: random weights, not physics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
