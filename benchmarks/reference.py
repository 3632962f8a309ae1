"""Reference timings: pw.x seconds per structure on examples/si8.pwi for
several MPI ranks / BLAS threads, and EMT for scale. Prints a table.

    .venv/bin/python benchmarks/reference.py [--input examples/si8.pwi] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

import ase.io

from services.reference import QEConfig, make_backend


def time_backend(backend, structures, repeat):
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = backend.compute(structures)
        walls.append((time.perf_counter() - t0) / len(structures))
        bad = [o for o in out if not o.ok]
        if bad:
            raise SystemExit(f"{backend.name}: {bad[0]}")
    return statistics.median(walls), min(walls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", default="examples/si8.pwi")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    base = ase.io.read(args.input, format="espresso-in")
    structures = []
    for seed in range(2):
        a = base.copy()
        a.rattle(0.02, seed=seed)
        structures.append(a)
    cores = os.cpu_count() or 1
    copper = [a.copy() for a in structures]
    for a in copper:
        a.set_chemical_symbols(["Cu"] * len(a))  # EMT has no Si
    rows = [("emt (same cell, Cu)", "1", *time_backend(make_backend("emt"), copper, args.repeat))]
    if shutil.which("pw.x"):
        for ranks, threads in ((1, 1), (2, 1), (1, 2)):
            if ranks * threads > cores:
                continue
            b = make_backend(f"qe:{args.input}", qe=QEConfig(ranks=ranks, threads=threads,
                                                              keep="never"))
            rows.append((f"pw.x {ranks} rank(s) x {threads} thread(s)", f"{ranks * threads}",
                         *time_backend(b, structures, args.repeat)))
    else:
        print("pw.x not found: QE rows skipped (run scripts/install.sh)")
    print(f"\n{args.input}, {len(base)} atoms, {cores} cores, median and best of {args.repeat}")
    print(f"{'backend':36s} {'cores':>5s} {'s/structure':>12s} {'best':>8s}")
    for name, c, med, best in rows:
        print(f"{name:36s} {c:>5s} {med:12.3f} {best:8.3f}")


if __name__ == "__main__":
    main()
