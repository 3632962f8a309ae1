"""Accuracy on the mlearn Si benchmark, beside the published n2p2 / SNAP figures.

Trains on datasets/mlearn-si/training.json only, evaluates on test.json,
for several seeds, with and without the Delta-NNP baseline. Prints a table of
energy RMSE/MAE (meV/atom, per structure) and force RMSE/MAE (meV/A, per
component): mean +- standard deviation over seeds, and the training time.

    python benchmarks/train_mlearn_si.py [--seeds 0 1 2] [--no-delta-seeds 0] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets" / "mlearn-si"

# Zuo et al., J. Phys. Chem. A 124, 731 (2020) models, evaluated on these files (datasets/README.md, docs/benchmarks.md)
PUBLISHED = {
    "n2p2 NNP (test)": (6.93, 5.63, 169.7, 108.6),
    "n2p2 NNP (training)": (10.92, 7.49, 168.9, 102.8),
    "SNAP (test)": (8.06, 6.44, 205.3, 132.7),
    "qSNAP (test)": (5.51, 3.81, 176.9, 115.7),
}

DEFAULT = {
    "descriptor": {"n_radial": 30, "n_angular": 20, "r_radial": 6.0, "r_angular": 5.0},
    "hidden": [40, 40],
    "max_epochs": 1000,
    "warmup_epochs": 50,
    "force_weight": 0.03,
    "validation_fraction": 0.1,
    "patience": 150,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", help="JSON/YAML overriding the default training settings")
    ap.add_argument("--no-delta-seeds", type=int, nargs="*", default=[0],
                    help="seeds for the runs without the Delta baseline (none: skip them)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mlearn_si.json"))
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from nnmd_kernels.training import TrainConfig, train
    from services.runtime.threads import blas_one_thread
    from services.trainer.data import read_mlearn_json
    from services.trainer.run import error_table, load_config, predictions

    base = dict(DEFAULT)
    if args.config:
        base.update({k: getattr(load_config(args.config), k) for k in TrainConfig.__dataclass_fields__})
    train_set = read_mlearn_json(DATA / "training.json")
    test_set = read_mlearn_json(DATA / "test.json")
    print(f"# mlearn Si: {len(train_set)} training / {len(test_set)} test structures; "
          f"machine {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"# settings: {json.dumps(base)}")
    results = []
    plan = [(True, s) for s in args.seeds] + [(False, s) for s in args.no_delta_seeds]
    for delta, seed in plan:
        cfg = TrainConfig.from_dict({**base, "delta": delta, "seed": seed})
        t0 = time.perf_counter()
        with blas_one_thread():  # as `nnmd train` (services/runtime/threads.py)
            res = train(train_set, cfg)
        dt = time.perf_counter() - t0
        row = {"delta": delta, "seed": seed, "seconds": dt,
               "test": error_table(predictions(res.potential, test_set)),
               "training": error_table(predictions(res.potential, train_set)),
               "iterations": len(res.history[0])}
        results.append(row)
        t = row["test"]
        print(f"#   delta={delta} seed={seed}: test E {t['energy_rmse_mev_per_atom']:.2f}/"
              f"{t['energy_mae_mev_per_atom']:.2f} meV/atom, F {t['force_rmse_mev_per_angstrom']:.1f}/"
              f"{t['force_mae_mev_per_angstrom']:.1f} meV/A, {dt:.0f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": base, "runs": results}, indent=2))

    keys = ("energy_rmse_mev_per_atom", "energy_mae_mev_per_atom", "force_rmse_mev_per_angstrom",
            "force_mae_mev_per_angstrom")
    print("| model | set | E RMSE (meV/atom) | E MAE (meV/atom) | F RMSE (meV/A) | F MAE (meV/A) | train time (s) |")
    print("|---|---|---|---|---|---|---|")
    for delta in (True, False):
        runs = [r for r in results if r["delta"] == delta]
        if not runs:
            continue
        for split in ("test", "training"):
            cells = []
            for k in keys:
                v = np.array([r[split][k] for r in runs])
                cells.append(f"{v.mean():.2f} +- {v.std():.2f}" if len(v) > 1 else f"{v[0]:.2f}")
            secs = np.mean([r["seconds"] for r in runs])
            name = f"nnmd ({'Delta on' if delta else 'Delta off'}, {len(runs)} seeds)"
            print(f"| {name} | {split} | " + " | ".join(cells) + f" | {secs:.0f} |")
    for name, vals in PUBLISHED.items():
        model, split = name.split(" (")
        print(f"| {model} (published) | {split.rstrip(')')} | " + " | ".join(f"{v:.2f}" for v in vals) + " | - |")


if __name__ == "__main__":
    main()
