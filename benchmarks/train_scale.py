"""Training at the source's scale: time per epoch, peak memory and held-out errors.

Synthetic 96-atom cells of a random 4-element fcc alloy (Ni, Cu, Ag, Au: 2x3x4 cubic
cells, lattice constant from the composition, strained +-3% and rattled 0.05-0.15 A),
labelled by ASE's EMT (cheap; it knows these four metals). The descriptor has 80
features (n_radial 50 + n_angular 30 Chebyshev orders at 6 A, as the source). Training
uses mini-batches (TrainConfig.batch_structures) so that memory stays bounded; 10% of the
structures are a held-out test set, never trained on.

    python benchmarks/train_scale.py                       # 250 structures, a quick run
    python benchmarks/train_scale.py --sizes 250 1000 2500 --epochs 30
    python benchmarks/train_scale.py --sizes 2500 --minutes 45

Each size runs in a fresh process (so that ru_maxrss is that run's peak). Labelled data
are cached in /tmp/nnmd_train_scale/ (EMT labels for 2,500 x 96 atoms take minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NNMD_SCALE_CACHE", "/tmp/nnmd_train_scale"))
ELEMENTS = ("Ni", "Cu", "Ag", "Au")
LATTICE = {"Ni": 3.52, "Cu": 3.61, "Ag": 4.09, "Au": 4.08}
DESCRIPTOR = {"n_radial": 50, "n_angular": 30, "weighting": "z"}  # 80 features, as the source (the
# multi-element default, "blocks", would give 4 x 50 + 10 x 30 = 500)


def make_data(n: int, seed: int = 0):
    """n labelled 96-atom cells: arrays positions (n,96,3), numbers (n,96), cells (n,3,3),
    energies (n,), forces (n,96,3); cached in CACHE."""
    path = CACHE / f"alloy96_{n}_seed{seed}.npz"
    if path.exists():
        d = np.load(path)
        return {k: d[k] for k in d.files}
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers

    rng = np.random.default_rng(seed)
    zs = np.array([atomic_numbers[e] for e in ELEMENTS])
    out = {k: [] for k in ("positions", "numbers", "cells", "energies", "forces")}
    for _ in range(n):
        frac = rng.dirichlet(np.ones(4))
        numbers = rng.choice(zs, size=96, p=frac)
        a0 = sum(f * LATTICE[e] for f, e in zip(frac, ELEMENTS))
        at = bulk("Cu", "fcc", a=a0 * (1 + rng.uniform(-0.03, 0.03)), cubic=True).repeat((2, 3, 4))
        at.numbers = numbers
        at.set_cell(at.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        at.rattle(rng.uniform(0.05, 0.15), seed=int(rng.integers(1 << 30)))
        at.calc = EMT()
        out["energies"].append(at.get_potential_energy())
        out["forces"].append(at.get_forces())
        out["positions"].append(at.positions.copy())
        out["numbers"].append(at.numbers.copy())
        out["cells"].append(at.cell.array.copy())
    arrays = {k: np.array(v) for k, v in out.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def structures(arrays, idx):
    from nnmd_kernels.training import Structure

    return [Structure(arrays["positions"][k], arrays["numbers"][k], arrays["cells"][k], np.ones(3, bool),
                      float(arrays["energies"][k]), arrays["forces"][k], name=f"alloy{k}") for k in idx]


def run_one(n: int, args) -> dict:
    """Train on 90% of n structures, test on the rest; in this process (for its peak RSS)."""
    sys.path.insert(0, str(ROOT))
    from nnmd_kernels.training import TrainConfig, train
    from services.trainer.run import error_table, predictions

    t0 = time.perf_counter()
    arrays = make_data(n, args.data_seed)
    t_data = time.perf_counter() - t0
    perm = np.random.default_rng(1).permutation(n)
    n_test = max(1, n // 10)
    test, tr = structures(arrays, perm[:n_test]), structures(arrays, perm[n_test:])
    cfg = TrainConfig(descriptor=dict(DESCRIPTOR), hidden=tuple(args.hidden), optimizer="adam",
                      batch_structures=args.batch, max_epochs=args.epochs, warmup_epochs=args.warmup,
                      adam_lr=args.lr, adam_lr_final=args.lr_final, force_weight=args.force_weight, patience=args.patience,
                      cache_gb=args.cache_gb, max_minutes=args.minutes, seed=0)
    c0 = time.process_time()
    w0 = time.perf_counter()
    def progress(member, epoch, row):  # one line per epoch on stderr
        if "val_loss" in row:
            print(f"  epoch {row['epoch']} {row['time']:.0f} s val E {1e3 * row['val_energy_rmse']:.2f} meV/at "
                  f"F {1e3 * row.get('val_force_rmse', np.nan):.0f} meV/A", file=sys.stderr, flush=True)

    res = train(tr, cfg, progress=progress)
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    hist = res.history[0]
    full = [h for h in hist if h.get("phase") == "full" and "val_energy_rmse" in h]
    epochs = len(full)
    t_train = [h["time"] for h in full]
    per_epoch = (t_train[-1] - t_train[0]) / max(epochs - 1, 1) if epochs > 1 else wall
    err = error_table(predictions(res.potential, test))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux

    def point(h, epoch0=0, t0=0.0):  # one validation row of the curve
        return {"epoch": epoch0 + h["epoch"], "time_s": round(t0 + h["time"], 1), "val_loss": h.get("val_loss"),
                "val_E_meV": 1e3 * h["val_energy_rmse"], "val_F_meV": 1e3 * h.get("val_force_rmse", np.nan)}

    curve = [point(h) for h in full]
    final_val = min(h["val_loss"] for h in full) if full and "val_loss" in full[0] else None
    # the converged loss: the schedule's model trained on at the final (small) rate for
    # --converge-minutes more, same data, same validation split (the same seed draws it),
    # the standardisation, e0 and baseline kept; a fresh Adam state
    tail = []
    if args.converge_minutes and final_val is not None:
        cfg2 = TrainConfig(**{**cfg.__dict__, "adam_lr": args.lr_final, "adam_lr_final": None, "warmup_epochs": 0,
                              "max_epochs": 10_000, "max_minutes": args.converge_minutes,
                              "patience": 10_000, "refit_on_warm_start": False})
        res2 = train(tr, cfg2, init=res.potential, progress=progress)
        t_end = t_train[-1] - res2.potential.metadata.get("setup_seconds", 0.0)  # its own setup not counted
        tail = [point(h, epochs, t_end) for h in res2.history[0]
                if h.get("phase") == "full" and "val_energy_rmse" in h]
    converged = min([final_val] + [h["val_loss"] for h in tail]) if final_val is not None else None
    # time (from the start of training) to come within 5% of the converged validation loss
    t5 = None
    if converged is not None:
        t5 = next((h["time_s"] for h in curve + tail if h["val_loss"] <= 1.05 * converged), None)
    return {"n_structures": n, "n_atoms_train": int(sum(len(s.numbers) for s in tr)),
            "features": res.potential.descriptor.n_features, "batch_structures": res.metrics["batch_structures"],
            "jacobian_cached": res.metrics.get("batches_cached"), "epochs": epochs,
            "s_per_epoch": per_epoch, "train_wall_s": wall, "train_cpu_s": cpu, "label_s": t_data,
            "setup_s": res.potential.metadata.get("setup_seconds"), "peak_rss_gb": rss_gb,
            "test": err, "time_to_5pct_s": t5, "best_val_loss": final_val, "converged_val_loss": converged,
            "converge_minutes": args.converge_minutes, "curve": curve, "converge_curve": tail}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250], help="numbers of structures (default: 250)")
    ap.add_argument("--epochs", type=int, default=10, help="passes over the training data (default: 10)")
    ap.add_argument("--minutes", type=float, default=None, help="stop training after this long (default: none)")
    ap.add_argument("--batch", type=int, default=8, help="structures per mini-batch (default: 8)")
    ap.add_argument("--warmup", type=int, default=20, help="energy-only warm-up steps (default: 20)")
    ap.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default: 5e-3)")
    ap.add_argument("--lr-final", type=float, default=2e-4,
                    help="Adam rate reached geometrically at the last epoch (default: 2e-4)")
    ap.add_argument("--force-weight", type=float, default=0.1, help="force loss weight (default: 0.1)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[40, 40], help="hidden layers (default: 40 40)")
    ap.add_argument("--patience", type=int, default=10, help="early-stopping patience, epochs (default: 10)")
    ap.add_argument("--cache-gb", type=float, default=2.0,
                    help="memory for cached batch Jacobians, GB (default: 2)")
    ap.add_argument("--converge-minutes", type=float, default=None,
                    help="after the schedule, train on at the final rate this long to find the converged "
                         "validation loss that 'within 5%%' is measured against (default: no; the best loss "
                         "of the schedule)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.one:
        sys.path.insert(0, str(ROOT))
        from services.runtime.threads import blas_one_thread

        # BLAS on one thread, as `nnmd train` and every campaign train (services/runtime/
        # threads.py): without it OpenBLAS's spinning threads and numba's share the 2 cores
        # and the descriptor kernels of a step took twice as long (38 against 16-18 ms)
        with blas_one_thread():
            print("RESULT " + json.dumps(run_one(args.one, args)))
        return
    rows = []
    for n in args.sizes:
        argv = [sys.executable, __file__, "--one", str(n), "--hidden", *map(str, args.hidden)]
        for flag in ("epochs", "minutes", "batch", "warmup", "lr", "lr_final", "force_weight", "patience",
                     "cache_gb", "data_seed", "converge_minutes"):
            if getattr(args, flag) is not None:
                argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # stderr: progress, passed on
        if proc.returncode:
            raise SystemExit(f"size {n} failed (exit {proc.returncode})")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        row = json.loads(line[7:])
        row["process_wall_s"] = time.perf_counter() - t0
        rows.append(row)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'structures':>10} {'atoms':>8} {'feat':>4} {'batch':>5} {'epochs':>6} {'s/epoch':>8} "
          f"{'train s':>8} {'CPU s':>8} {'to 5%':>7} {'peak RSS':>9} {'test E':>8} {'test F':>8}")
    print(f"{'':>10} {'':>8} {'':>4} {'':>5} {'':>6} {'':>8} {'':>8} {'':>8} {'s':>7} {'GB':>9} "
          f"{'meV/at':>8} {'meV/A':>8}")
    for r in rows:
        t = r["test"]
        print(f"{r['n_structures']:>10} {r['n_atoms_train']:>8} {r['features']:>4} {r['batch_structures']:>5} "
              f"{r['epochs']:>6} {r['s_per_epoch']:>8.1f} {r['train_wall_s']:>8.0f} {r['train_cpu_s']:>8.0f} "
              f"{(r['time_to_5pct_s'] or float('nan')):>7.0f} {r['peak_rss_gb']:>9.2f} "
              f"{t['energy_rmse_mev_per_atom']:>8.2f} {t['force_rmse_mev_per_angstrom']:>8.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
