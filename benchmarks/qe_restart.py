"""QE restarts along a chain: cold pw.x runs against runs restarted from the previous
structure's kept SCF (QEConfig.restart), on a 64-atom Si diamond cell.

The cell is the 2x2x2 conventional supercell of examples/si8.pwi's lattice, built
with ASE, with every setting of that input (20 Ry, LDA, MV smearing, conv_thr);
the k-point grid is scaled to the same k-point density (si8's 2x2x2 on the 8-atom
cell = 1x1x1 on the 2x2x2 supercell; --kpts to choose another). Structure 0 is the
perfect crystal with a random displacement, each next one the previous plus a
random displacement of --rms A (rms per atom), like a chain of HMC proposals.

Structure 0 is computed cold and kept; structures 1..N-1 are then computed cold and
restarted from their predecessor (density with the atomic charges moved to the new
positions, plus wavefunctions; --plain adds restarts with the density as kept).
Prints per structure the SCF iterations, the wall seconds of the whole compute_one
(staging the restart files, pw.x, keeping the new SCF) and pw.x's own CPU seconds
(rank 0; less disturbed than wall time when other work shares the cores), totals
over the restarted structures, and max |E_restart - E_cold| against 10 x conv_thr.

    .venv/bin/python benchmarks/qe_restart.py [--structures 5] [--rms 0.03] [--ranks 2]
        [--cells 2] [--kpts auto|"2 2 2"] [--ecutwfc RY] [--plain] [--repeat 1]
        [--json out.json]

About 3-4 minutes on 2 idle cores with the defaults (9 pw.x runs of ~20 s); --plain
adds N-1 runs, --repeat multiplies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk

from services.reference.qe import QEBackend, QEConfig
from services.reference.qe_input import load_template, parse_pw_input


def machine() -> dict:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else "?"
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model}


def build_input(src: Path, repeat: int, kpts: str, ecutwfc: float | None, out: Path):
    """The 64-atom (repeat^3 x 8) input with src's settings; returns (path, atoms, note)."""
    t = load_template(src)
    a0 = float(np.linalg.norm(t.atoms.cell[0]))
    atoms = bulk(t.atoms.get_chemical_symbols()[0], "diamond", a=a0, cubic=True)
    atoms = atoms.repeat((repeat, repeat, repeat))
    text = t.render(atoms)
    k = t.pw.cards["K_POINTS"]
    note = "k-points as given"
    if kpts == "auto":
        if k.option != "automatic":
            raise SystemExit(f"{src}: K_POINTS {k.option}; pass --kpts 'n1 n2 n3'")
        grid = [int(x) for x in k.body[0][1].split()[:3]]
        shift = k.body[0][1].split()[3:6]
        scaled = [max(1, -(-g // repeat)) for g in grid]
        kline = " ".join(map(str, scaled)) + " " + " ".join(shift)
        note = (f"K_POINTS {' '.join(map(str, grid))} of the 8-atom input scaled to "
                f"{' '.join(map(str, scaled))} on the {repeat}x{repeat}x{repeat} supercell "
                "(the same k-point density)")
    else:
        kline = kpts.strip() + (" 0 0 0" if len(kpts.split()) == 3 else "")
        note = f"K_POINTS automatic {kline} (--kpts)"
    text = re.sub(r"K_POINTS.*\n.*\n", f"K_POINTS automatic\n  {kline}\n", text)
    if ecutwfc is not None:
        text = re.sub(r"ecutwfc = \S+", f"ecutwfc = {ecutwfc}", text)
        note += f"; ecutwfc reduced to {ecutwfc} Ry (--ecutwfc)"
    out.write_text(text)
    return out, atoms, note


def chain(atoms, n: int, rms: float, seed: int):
    rng = np.random.default_rng(seed)
    sigma = rms / np.sqrt(3)  # per Cartesian component: rms of the displacement vector = rms
    out = []
    a = atoms.copy()
    for _ in range(n):
        a = a.copy()
        a.positions += rng.normal(0, sigma, a.positions.shape)
        out.append(a)
    return out


def run(backend, atoms, info=None, repeat=1):
    """One structure ``repeat`` times; the smallest wall and CPU seconds (other work on
    the machine only ever adds time), the numbers of the first run."""
    best = None
    for _ in range(repeat):
        a = atoms.copy()
        a.info = dict(info or {})
        t0 = time.perf_counter()
        r = backend.compute_one(a)
        wall = time.perf_counter() - t0
        if not r.ok:
            raise SystemExit(f"{backend.name}: {r}")
        one = {"energy_ev": r.energy, "iters": r.info["scf_iterations"], "wall_s": wall,
               "pw_wall_s": r.info["wall_s"],
               "pw_cpu_s": r.info.get("pw_cpu_s") or float("nan"),
               "stage_s": r.info["history"][-1].get("stage_s", 0.0),
               "restarted": r.info.get("restarted", False),
               "notes": r.info.get("restart_notes", [])}
        if best is None:
            best = one
        else:
            for k in ("wall_s", "pw_wall_s", "pw_cpu_s", "stage_s"):
                best[k] = min(best[k], one[k])
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default="examples/si8.pwi")
    p.add_argument("--cells", type=int, default=2, help="conventional cells per direction")
    p.add_argument("--structures", type=int, default=5)
    p.add_argument("--rms", type=float, default=0.03, help="rms displacement per step (A)")
    p.add_argument("--ranks", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--kpts", default="auto")
    p.add_argument("--ecutwfc", type=float, default=None)
    p.add_argument("--plain", action="store_true", help="also restart without extrapolation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", dest="times", type=int, default=1,
                   help="run each structure this many times and keep the fastest (noisy "
                        "machines)")
    p.add_argument("--json", default=None, help="write the numbers here too")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nnmd-bench-restart-"))
    inp, atoms, note = build_input(Path(args.input), args.cells, args.kpts, args.ecutwfc,
                                   work / "si-supercell.pwi")
    conv_thr = float(parse_pw_input(inp.read_text()).value("electrons", "conv_thr", 1e-6))
    tol_ev = 10 * conv_thr * units.Ry
    base = dict(ranks=args.ranks, timeout_s=1800, keep="never", scratch_root=str(work))
    rr = str(work / "restart")
    backends = {"cold": QEBackend(inp, QEConfig(**base, restart=False)),
                "restart": QEBackend(inp, QEConfig(**base, restart_root=rr)),
                "plain": QEBackend(inp, QEConfig(**base, restart_root=rr,
                                                 restart_extrapolation="none"))}
    modes = ["restart"] + (["plain"] if args.plain else [])
    structures = chain(atoms, args.structures, args.rms, args.seed)
    m = machine()
    print(f"{len(atoms)} Si atoms, {note}; {args.structures} structures, {args.rms} A rms "
          f"per step; conv_thr {conv_thr:g} Ry; {args.ranks} MPI rank(s); {m['cores']} cores "
          f"({m['cpu']}); fastest of {args.times} run(s) each", flush=True)
    t_start = time.perf_counter()
    rows = []
    for i, s in enumerate(structures):
        row = {"i": i}
        if i == 0:  # the chain's first structure: cold, kept under the id of each mode
            row["cold"] = run(backends["restart"], s, {"nnmd_id": "bench/seed/0"}, args.times)
        else:
            row["cold"] = run(backends["cold"], s, None, args.times)
            for mode in modes:
                src = "bench/seed/0" if i == 1 else f"bench/{mode}/{i - 1}"
                row[mode] = run(backends[mode], s, {"nnmd_id": f"bench/{mode}/{i}",
                                                    "nnmd_restart_from": src}, args.times)
                if not row[mode]["restarted"]:
                    print(f"  structure {i} {mode}: not restarted: {row[mode]['notes']}")
        rows.append(row)
        done = "  ".join(f"{k} {v['iters']} it {v['wall_s']:.1f} s" for k, v in row.items()
                         if k != "i")
        print(f"  structure {i}: {done}", flush=True)

    cols = [("it", "iters", "d"), ("wall s", "wall_s", ".1f"), ("cpu s", "pw_cpu_s", ".1f")]

    def cells(r):
        return " ".join(f"{r[k]:>7{fmt}}" for _, k, fmt in cols)

    names = " ".join(f"{c:>7s}" for c, _, _ in cols)
    head = f"{'structure':>9s} | {names}" + f" | {names} {'dE (eV)':>8s}" * len(modes)
    print(f"\n{'':>9s} | {'cold':^23s}" + "".join(f" | {mode:^32s}" for mode in modes))
    print(head)
    for row in rows:
        line = f"{row['i']:>9d} | {cells(row['cold'])}"
        for mode in modes:
            if mode in row:
                r = row[mode]
                line += f" | {cells(r)} {r['energy_ev'] - row['cold']['energy_ev']:>+8.0e}"
            else:
                line += f" | {'(= cold)':>23s} {'':>8s}"
        print(line)
    later = rows[1:]

    def total(mode):
        return {k: sum(r[mode][k] for r in later) for _, k, _ in cols}

    tot = f"{'sum 1..' + str(len(rows) - 1):>9s} | {cells(total('cold'))}"
    summary = {}
    for mode in modes:
        t = total(mode)
        de = max(abs(r[mode]["energy_ev"] - r["cold"]["energy_ev"]) for r in later)
        summary[mode] = {**t, "max_abs_de_ev": de,
                         "stage_s": sum(r[mode]["stage_s"] for r in later)}
        tot += f" | {cells(t)} {de:>8.0e}"
    print(tot)
    c = total("cold")
    for mode, s in summary.items():
        print(f"{mode}: {s['iters']} SCF iterations vs {c['iters']} cold "
              f"({100 * (s['iters'] / c['iters'] - 1):+.0f}%); pw.x CPU {s['pw_cpu_s']:.1f} s vs "
              f"{c['pw_cpu_s']:.1f} s ({100 * (s['pw_cpu_s'] / c['pw_cpu_s'] - 1):+.0f}%); wall "
              f"{s['wall_s']:.1f} s vs {c['wall_s']:.1f} s "
              f"({100 * (s['wall_s'] / c['wall_s'] - 1):+.0f}%, of which "
              f"{s['stage_s']:.1f} s staging the restart files); max |E_{mode} - E_cold| = "
              f"{s['max_abs_de_ev']:.1e} eV vs 10 x conv_thr = {tol_ev:.1e} eV: "
              f"{'ok' if s['max_abs_de_ev'] < tol_ev else 'EXCEEDED'}")
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": m, "ranks": args.ranks, "atoms": len(atoms), "note": note,
            "rms": args.rms, "conv_thr_ry": conv_thr, "repeat": args.times, "rows": rows,
            "summary": summary},
            indent=1))


if __name__ == "__main__":
    main()
