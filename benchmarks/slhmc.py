"""Where a local SLHMC campaign's time goes: NNP proposals, reference, store (labels +
per-step checkpoints: the campaign's own overhead), training. Prints a table.

    .venv/bin/python benchmarks/slhmc.py [--chains 4 16] [--steps 5]

EMT copper (32 atoms), the demo's small model, re-training off after the first model.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from ase.build import bulk

from orchestrator.commands.slhmc import DEMO_TRAIN
from orchestrator.slhmc import CampaignConfig, run_campaign


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chains", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| chains | steps | chain steps/s | MD s | reference s | store s | store ms/chain-step "
          "| training s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for chains in args.chains:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "cu.xyz"
            bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)).write(path)
            cfg = CampaignConfig(reference="emt", structure=str(path), campaign="bench",
                                 chains=chains, steps=args.steps, temperature=600.0,
                                 md_steps=10, md_steps_min=10, md_steps_max=10, dt=2.0,
                                 retrain_every=0, bootstrap_steps=20, bootstrap_dt=2.0,
                                 train=DEMO_TRAIN)
            s = run_campaign(cfg, str(Path(tmp) / "store"), log=lambda m: None)
            n = chains * args.steps
            total = s["seconds"]
            print(f"| {chains} | {args.steps} | {n / total:.1f} | {s['seconds_md']:.1f} | "
                  f"{s['seconds_reference']:.2f} | {s['seconds_store']:.2f} | "
                  f"{1e3 * s['seconds_store'] / n:.1f} | {s['seconds_training']:.1f} |")


if __name__ == "__main__":
    main()
