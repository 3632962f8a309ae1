"""Energy + forces cost of the CPU kernels on the source product's benchmark configuration.

The source's benchmark (docs/source.md, "The benchmark"): Li10GeP2S12 (LGPS), Chebyshev
50 radial + 30 angular, Rc 6.0 A, Delta-NNP on, 2 x 40 twisted-tanh networks. Structures have the LGPS composition
at its crystal density (50 atoms per 8.72 x 8.72 x 12.63 A^3 cell) on a
jittered lattice. Prints a table of microseconds per atom-step, broken down into
neighbours / descriptors / network / forces (VJP + scatter), for each size.

    python benchmarks/kernels.py [--sizes 1000 5400 21600] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

LGPS = {"Li": 10, "Ge": 1, "P": 2, "S": 12}
LGPS_DENSITY = 50 / (8.72 * 8.72 * 12.63)  # atoms / A^3
Z = {"Li": 3, "Ge": 32, "P": 15, "S": 16}


def lgps_like(n_atoms: int, seed: int = 0):
    """(positions, numbers, cell): LGPS composition and density, jittered cubic lattice."""
    rng = np.random.default_rng(seed)
    L = (n_atoms / LGPS_DENSITY) ** (1 / 3)
    k = int(np.ceil(n_atoms ** (1 / 3)))
    a = L / k
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = grid[rng.choice(len(grid), n_atoms, replace=False)] * a
    pos = sites + rng.uniform(-0.15 * a, 0.15 * a, size=sites.shape)
    per_fu = sum(LGPS.values())
    species = np.concatenate([[Z[s]] * c for s, c in LGPS.items()])
    numbers = np.resize(species, n_atoms)
    if n_atoms % per_fu:
        numbers = np.resize(species, n_atoms)
    rng.shuffle(numbers)
    return pos, numbers, np.eye(3) * L


def bench_one(pot, n_atoms: int, repeat: int):
    from nnmd_kernels import descriptor_numba as K
    from nnmd_kernels.neighbors import neighbor_pairs
    from nnmd_kernels.network import forward, input_gradient

    pos, numbers, cell = lgps_like(n_atoms)
    types = pot.types_of(numbers)
    t = {"neighbours": [], "descriptors": [], "network": [], "forces": [], "total": []}
    cpu = []  # process CPU time of the total: robust when other work shares the machine
    for _ in range(repeat + 1):  # first round warms up (numba compile, caches)
        t0 = time.perf_counter()
        pairs = neighbor_pairs(pos, cell, True, pot.cutoff)
        t1 = time.perf_counter()
        tj = types[pairs.j]
        G = K.descriptors(pot.descriptor, pairs.vectors, pairs.i, tj, n_atoms)
        t2 = time.perf_counter()
        dG = np.zeros_like(G)
        for e, net in enumerate(pot.networks):
            idx = np.flatnonzero(types == e)
            x = (G[idx] - pot.feature_mean[e]) / pot.feature_std[e]
            y, cache = forward(net, x)
            dG[idx] = input_gradient(net, cache, np.full(net.n_models, 1.0 / net.n_models)) / pot.feature_std[e]
        t3 = time.perf_counter()
        g = K.descriptors_vjp(pot.descriptor, pairs.vectors, pairs.i, tj, n_atoms, dG)
        F = np.empty((n_atoms, 3))
        for k in range(3):
            F[:, k] = np.bincount(pairs.i, g[:, k], n_atoms) - np.bincount(pairs.j, g[:, k], n_atoms)
        t4 = time.perf_counter()
        # the whole public path, for the total (includes the Delta baseline and validation)
        c0 = time.process_time()
        pot.compute(pos, numbers, cell, True)
        t5 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            t[key].append(dt)
    best = {k: min(v[1:]) for k, v in t.items()}
    best["cpu"] = min(cpu[1:])
    npairs = len(pairs) / n_atoms
    return best, npairs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5400, 21600])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all cores)")
    args = ap.parse_args()

    import numba

    from nnmd_kernels import Potential

    if args.threads:
        numba.set_num_threads(args.threads)
    nthreads = numba.get_num_threads()
    pot = Potential.random(["Li", "Ge", "P", "S"], seed=0, density=LGPS_DENSITY)
    print(f"# nnmd kernels benchmark: LGPS-like, {pot.descriptor.n_radial}+{pot.descriptor.n_angular} Chebyshev, "
          f"Rc {pot.descriptor.r_radial} A, 2x40 {pot.activation}, Delta on, float64")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numba threads {nthreads}, python {platform.python_version()}, numpy {np.__version__}")
    hdr = ("atoms", "pairs/atom", "neigh", "descr", "network", "forces", "total (wall)",
           "us/atom-step/core (CPU time)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from services.runtime.threads import blas_one_thread

    for n in args.sizes:
        # BLAS on one thread, as `nnmd md` runs the engine (services/md/native.py): OpenBLAS's
        # idle threads spin after each network GEMM and add ~6 us of CPU per atom-step
        with blas_one_thread():
            b, npairs = bench_one(pot, n, args.repeat)
        us = 1e6 / n
        row = [f"{n}", f"{npairs:.1f}"] + [f"{b[k] * us:.2f}" for k in ("neighbours", "descriptors", "network", "forces")]
        row += [f"{b['total'] * us:.2f}", f"{b['cpu'] * us:.1f}"]
        print("| " + " | ".join(row) + " |")
    print("# neigh..total: wall-clock us per atom per energy+forces evaluation with all threads;")
    print("# total = Potential.compute end to end; per-core = its process CPU time per atom (all threads summed).")


if __name__ == "__main__":
    main()
