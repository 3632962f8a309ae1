"""The cost of a campaign's re-trainings as the labels grow, and the held-out errors of
each model version (issue 17: bounded re-training).

    .venv/bin/python benchmarks/retrain_cost.py [--chains 4] [--steps 260]
        [--retrain-every 100] [--max-structures 250]

An EMT copper campaign (32-atom fcc cell, 800 K, NVT), the default training settings
(TrainConfig defaults; a warm-start re-training runs retrain_epochs = 60 iterations),
re-training every --retrain-every chain labels. --max-structures is the campaign's
retrain_max_structures: every new label plus a replay sample of the old ones (0 = every
label, the behaviour before issue 17). After the run, every model version is scored on
one fixed set: the campaign's held-out labels at the end (10% of the labels, chosen by a
hash of their id, never trained on), so the errors of the versions compare.

Prints a table (one row per model version: labels, structures trained on, new,
replayed, seconds, held-out energy and force RMSE) and writes
benchmarks/results/retrain_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--steps", type=int, default=260)
    ap.add_argument("--retrain-every", type=int, default=100)
    ap.add_argument("--max-structures", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "retrain_cost.json"))
    args = ap.parse_args()

    from orchestrator.slhmc import (
        Campaign,
        CampaignConfig,
        campaign_models,
        holdout_errors,
        is_held_out,
    )
    from services.store import Store
    from services.trainer.data import read_store

    load0 = os.getloadavg()[0]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load0:.1f}; EMT Cu 32 atoms, {args.chains} chains x {args.steps} steps, "
          f"re-training every {args.retrain_every}, retrain_max_structures "
          f"{args.max_structures}")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or str(Path(tmp) / "store")
        path = Path(tmp) / "cu.xyz"
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.write(path)
        cfg = CampaignConfig(reference="emt", structure=str(path), campaign="cost",
                             chains=args.chains, steps=args.steps, temperature=800.0,
                             md_steps=10, md_steps_min=5, md_steps_max=40, dt=2.0,
                             retrain_every=args.retrain_every, bootstrap_steps=50,
                             bootstrap_dt=2.0, seed=args.seed,
                             retrain_max_structures=args.max_structures)
        t0 = time.perf_counter()
        camp = Campaign(cfg, url, log=lambda m: print("  " + m, flush=True))
        try:
            summary = camp.run(atoms)
            wall = time.perf_counter() - t0
            store = Store(url, read_only=True)
            held = [s for s in read_store(url, "cost") if is_held_out(s.name, 0.1)]
            rows = []
            for version, meta in campaign_models(store, "cost"):
                err = holdout_errors(camp.model(version), held)
                rows.append({"version": version, "n_labels": meta.get("n_labels"),
                             "n_rows": meta.get("n_rows"),
                             "n_structures": meta.get("n_structures"),
                             "n_new": meta.get("n_new"), "n_replay": meta.get("n_replay"),
                             "sampled": bool(meta.get("sampled")),
                             "warm_start": bool(meta.get("warm_start")),
                             "train_seconds": float(meta.get("train_seconds", np.nan)),
                             "heldout_energy_rmse_mev_per_atom":
                                 err.get("energy_rmse_mev_per_atom"),
                             "heldout_force_rmse_mev_per_angstrom":
                                 err.get("force_rmse_mev_per_angstrom")})
        finally:
            camp.close()
    print(f"\n{len(held)} held-out labels (fixed set for every version); wall "
          f"{wall:.0f} s, acceptance {summary.get('acceptance')}")
    print("| model | chain labels | store rows | trained on | new | replayed | seconds "
          "| held-out E meV/atom | held-out F meV/A |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        kind = "first" if not r["warm_start"] else ("sample" if r["sampled"] else "all")
        print(f"| v{r['version']} ({kind}) | {r['n_labels']} | {r['n_rows']} | "
              f"{r['n_structures']} | {r['n_new'] if r['n_new'] is not None else '-'} | "
              f"{r['n_replay'] if r['n_replay'] is not None else '-'} | "
              f"{r['train_seconds']:.1f} | {r['heldout_energy_rmse_mev_per_atom']:.2f} | "
              f"{r['heldout_force_rmse_mev_per_angstrom']:.0f} |")
    warm = [r["train_seconds"] for r in rows if r["warm_start"] and r["sampled"]]
    if warm:
        print(f"\nbounded re-trainings: {len(warm)}, {min(warm):.1f}-{max(warm):.1f} s "
              f"(max/min {max(warm) / min(warm):.2f})")
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
           "load_at_start": load0, "args": vars(args), "wall_s": wall,
           "heldout_labels": len(held), "models": rows,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
