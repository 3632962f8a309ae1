"""Descriptor weighting for LLZO: z / typespin / blocks on the same teacher data.

(docs/llzo.md, "Side measurements".) Generates teacher NPT MD frames (96-atom tetragonal
and cubic cells at 800 K for training; 192-atom cells at 1000 K for testing) with
benchmarks/llzo.py's teacher_md, trains one model per weighting (same data, network,
max_epochs, stress weight) and scores each on the test frames.

    .venv/bin/python examples/llzo/weighting_check.py WORKDIR [z,typespin,blocks] [12+6]

Slow on CPUs: blocks at 12 + 6 trained for ~37 min of wall time on the loaded 2-core
machine. Models are saved as WORKDIR/model_<weighting>_<n_radial>.nnmd.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv) -> int:
    import llzo
    from ase.io import read

    from nnmd_kernels.training import TrainConfig, train
    from services.trainer.data import atoms_to_structure
    from services.trainer.evaluate import evaluate

    work = Path(argv[0])
    weightings = (argv[1] if len(argv) > 1 else "z,typespin,blocks").split(",")
    orders = [tuple(int(x) for x in v.split("+"))
              for v in (argv[2] if len(argv) > 2 else "12+6").split(",")]
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "test_c.extxyz").exists():
        train_md = llzo.replace(llzo.QUICK, equil_steps=500, prod_steps=3000, frame_every=15)
        test_md = llzo.replace(llzo.QUICK, equil_steps=500, prod_steps=2000, frame_every=200)
        llzo.teacher_md(read(llzo.EXAMPLE / "tetragonal_96.extxyz"), 800.0, train_md,
                        work / "train_t.extxyz", 3)
        llzo.teacher_md(read(llzo.EXAMPLE / "cubic_96.extxyz", index=0), 800.0, train_md,
                        work / "train_c.extxyz", 4)
        llzo.teacher_md(llzo.phase_structure("tetragonal"), 1000.0, test_md,
                        work / "test_t.extxyz", 5)
        llzo.teacher_md(llzo.phase_structure("cubic"), 1000.0, test_md,
                        work / "test_c.extxyz", 6)
    tr = [atoms_to_structure(a, f"{p}[{i}]") for p in ("train_t", "train_c")
          for i, a in enumerate(read(work / f"{p}.extxyz", index=":"))]
    te = [atoms_to_structure(a, f"{p}[{i}]") for p in ("test_t", "test_c")
          for i, a in enumerate(read(work / f"{p}.extxyz", index=":"))]
    print(f"{len(tr)} training, {len(te)} test structures", flush=True)
    out = {}
    for nr, na in orders:
        for w in weightings:
            cfg = TrainConfig.from_dict({
                "hidden": [20, 20], "max_epochs": 80, "stress_weight": 20.0,
                "descriptor": {"n_radial": nr, "n_angular": na, "r_radial": 5.0,
                               "r_angular": 5.0, "weighting": w}})
            t0 = time.perf_counter()
            res = train(tr, cfg)
            wall = time.perf_counter() - t0
            ev = evaluate(res.potential, te)["overall"]
            row = {"features": res.potential.descriptor.n_features, "train_s": round(wall, 1),
                   "force_rmse_meV_A": round(ev["force_rmse_mev_per_angstrom"], 1),
                   "energy_rmse_meV_atom": round(ev["energy_rmse_mev_per_atom"], 2),
                   "stress_rmse_GPa": round(ev.get("stress_rmse_gpa", float("nan")), 2)}
            out[f"{w} {nr}+{na}"] = row
            print(w, nr, na, row, flush=True)
            res.potential.save(work / f"model_{w}_{nr}.nnmd")
    (work / "weighting.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
