"""Generalisation with the default training settings: EMT copper, held-out vs training.

    .venv/bin/python benchmarks/train_cu_emt.py [--draws 1 2 3 4] [--config FILE]

Draw d makes 60 training cells (random seed d) and 20 test cells (seed 100 + d) of
32-atom fcc Cu (random strain of up to +-3% per cell component, half that off the
diagonal, then a Gaussian rattle whose width is drawn uniformly in 0.03-0.15 A per
cell), labelled with ASE's EMT, and trains with
`nnmd train`'s defaults (or --config). Reported per draw: training and held-out force
RMSE, their ratio, the held-out force RMSE as a share of the held-out forces' standard
deviation, and the largest force error of one atom. Issue 17's bar: held-out force RMSE
< 10% of the force standard deviation and <= 1.5 x the training force RMSE.
Writes benchmarks/results/train_cu_emt.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cells(n: int, seed: int):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from services.trainer.data import atoms_to_structure

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3)) * (
            np.eye(3) + 0.5 * (1 - np.eye(3)))
        a.set_cell(a.cell @ strain, scale_atoms=True)
        a.positions += rng.normal(0.0, rng.uniform(0.03, 0.15), a.positions.shape)
        a.calc = EMT()
        a.get_forces(), a.get_stress()  # energy, forces and stress into a.calc.results
        out.append(atoms_to_structure(a, f"cu{seed}-{i}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--config", default=None, help="TrainConfig fields (JSON/YAML)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_cu_emt.json"))
    args = ap.parse_args()

    from dataclasses import asdict

    from nnmd_kernels.training import TrainConfig, train
    from services.runtime.threads import blas_one_thread
    from services.trainer.evaluate import errors, predict
    from services.trainer.run import load_config

    base = asdict(TrainConfig())
    cfg = load_config(args.config, {"seed": args.seed})  # nnmd train's reader and defaults
    extra = {k: v for k, v in asdict(cfg).items() if v != base[k] and k != "seed"}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; settings: defaults{' + ' + str(extra) if extra else ''}")
    print("| draw | train F RMSE meV/A | test F RMSE meV/A | test / train | test F std meV/A "
          "| test / std | test max atom error meV/A | test E RMSE meV/atom | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for draw in args.draws:
        tr, te = cells(60, draw), cells(20, 100 + draw)
        t0 = time.perf_counter()
        with blas_one_thread():  # as `nnmd train` (services/runtime/threads.py)
            res = train(tr, cfg)
        secs = time.perf_counter() - t0
        e_tr = errors(predict(res.potential, tr))
        e_te = errors(predict(res.potential, te))
        std = 1e3 * float(np.concatenate([s.forces.ravel() for s in te]).std())
        f_tr, f_te = e_tr["force_rmse_mev_per_angstrom"], e_te["force_rmse_mev_per_angstrom"]
        row = {"draw": draw, "train_force_rmse": f_tr, "test_force_rmse": f_te,
               "ratio": f_te / f_tr, "test_force_std": std, "share_of_std": f_te / std,
               "test_force_max": e_te.get("force_max_mev_per_angstrom"),
               "test_energy_rmse": e_te["energy_rmse_mev_per_atom"], "train_seconds": secs}
        rows.append(row)
        print(f"| {draw} | {f_tr:.1f} | {f_te:.1f} | {row['ratio']:.2f} | {std:.0f} | "
              f"{100 * row['share_of_std']:.1f}% | {row['test_force_max']:.0f} | "
              f"{row['test_energy_rmse']:.2f} | {secs:.0f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(
        {"machine": platform.processor() or platform.machine(), "settings": extra,
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "draws": rows},
        indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
