"""The tables of docs/llzo.md ("Full mode", "CHGNet distillation"), printed from the JSON
that benchmarks/llzo.py wrote, so that the numbers in the docs are the JSON's.

    .venv/bin/python benchmarks/llzo_tables.py [benchmarks/results/llzo.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from llzo import EXPERIMENT_SIGMA, SOURCE_SIGMA_600K  # noqa: E402


def _e(x, digits=2):
    return "-" if x is None else f"{x:.{digits}e}"


def _g(x, fmt=".3f"):
    return "-" if x is None else format(x, fmt)


def results_table(res: dict) -> list[str]:
    ex, acc = res["extra"], res["extra"].get("acceptance") or {}
    d_acc = {(r["phase"], float(r["T"])): r for r in acc.get("D", [])}
    out = ["| phase | T (K) | teacher D (cm^2/s) | student D (cm^2/s) | student / teacher | "
           "D check | teacher V (A^3) | student V (A^3) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, ph in res["phases"].items():
        e = ex["phases"][p]
        for k, t in enumerate(res["temperatures_K"]):
            td, te, sd, se = (ph["teacher_D"][k], ph["teacher_D_err"][k], ph["student_D"][k],
                              ph["student_D_err"][k])
            r = d_acc.get((p, float(t)), {})
            if r.get("verdict") is not None:
                check = "pass" if r["verdict"] else "FAIL"
            elif not (e["student"]["diffusive"][k] and e["teacher"]["diffusive"][k]):
                check = "undecided (MSD under the 5 A^2 floor)"
            else:
                check = "undecided (teacher error >= 15 %)"
            vt, vs = e["teacher"]["V_A3_per_T"][k], e["student"]["V_A3_per_T"][k]
            rel = f"{100 * (vs - vt) / vt:+.2f} %" if None not in (vt, vs) else "-"
            ratio = f"{sd / td:.2f}" if td and sd else "-"
            out.append(f"| {p} | {t:g} | {_e(td)} +- {_e(te, 1)} ({100 * te / td:.0f} %) | "
                       f"{_e(sd)} +- {_e(se, 1)} | {ratio} | {check} | {_g(vt, '.1f')} | "
                       f"{_g(vs, '.1f')} ({rel}) |")
    return out


def fits_table(res: dict) -> list[str]:
    ex = res["extra"]["phases"]
    out = ["| phase | teacher Ea (eV) | student Ea (eV) | teacher sigma 600 K (S/cm) | "
           "student sigma 600 K (S/cm) | source NNP-MD 600 K | experiment |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for p, ph in res["phases"].items():
        t, s = ex[p]["teacher"], ex[p]["student"]
        out.append(f"| {p} | {_g(ph['teacher_Ea_eV'])} +- {_g(t.get('Ea_err_eV'))} | "
                   f"{_g(ph['student_Ea_eV'])} +- {_g(s.get('Ea_err_eV'))} | "
                   f"{_g(t.get('sigma_600K_S_per_cm'))} +- {_g(t.get('sigma_600K_err_S_per_cm'))} | "
                   f"{_g(s.get('sigma_600K_S_per_cm'))} +- {_g(s.get('sigma_600K_err_S_per_cm'))} | "
                   f"{SOURCE_SIGMA_600K[p]:g} | {EXPERIMENT_SIGMA[p]:g} |")
    return out


def summary_lines(res: dict) -> list[str]:
    ex, acc = res["extra"], res["extra"].get("acceptance") or {}
    rm = ex["force_rmse"]
    out = ["force RMSE on the teacher's 192-atom frames: " + ", ".join(
        f"{t} K {v['force_rmse_meV_A']:.1f} meV/A ({v['n_structures']} frames, "
        f"{v['energy_rmse_meV_atom']:.3f} meV/atom)" for t, v in rm.items())]
    for p, r in (acc.get("Ea") or {}).items():
        out.append(f"Ea {p}: student {_g(r.get('student'))} vs teacher {_g(r.get('teacher'))} eV "
                   f"-> {r.get('verdict')}")
    vs = [r["rel"] for r in acc.get("V", []) if r.get("rel") is not None]
    if vs:
        out.append(f"V: student - teacher {100 * min(vs):+.2f} .. {100 * max(vs):+.2f} %")
    r = acc.get("ratio")
    if r:
        out.append(f"sigma_c/sigma_t 600 K: student {r['student']:.3g} vs teacher {r['teacher']:.3g} "
                   f"({100 * r['rel']:+.0f} %) -> {r['verdict']}")
    ds = [r["student_D"] / r["teacher_D"] for r in acc.get("D", [])
          if r.get("student_D") and r.get("teacher_D")]
    dec = [r["student_D"] / r["teacher_D"] for r in acc.get("D", []) if r.get("verdict") is not None]
    if ds:
        out.append(f"D student/teacher: all {min(ds):.2f}-{max(ds):.2f}; decided ({len(dec)}) "
                   + (f"{min(dec):.2f}-{max(dec):.2f}" if dec else "-"))
    out.append(f"all decided pass: {acc.get('all_decided_pass')}; undecided {acc.get('undecided')}")
    kinds: dict[str, list[float]] = {}
    for k, v in ex["stage_wall_s"].items():
        if not k.startswith("chgnet_"):
            kind = next((x for x in ("teacher_md", "student_md", "analysis", "campaign_start",
                                     "relax") if k.startswith(x)), k)
            kinds.setdefault(kind, []).append(v)
    out.append(f"labels {res['labels']}; wall_s {res['wall_s']:.0f}; stage wall s: " + ", ".join(
        f"{k} {v[0]:.0f}" if len(v) == 1 else f"{k} {len(v)} x {min(v):.0f}-{max(v):.0f}"
        for k, v in kinds.items()))
    return out


def chgnet_lines(res: dict) -> list[str]:
    c = res["extra"].get("chgnet")
    if not c:
        return ["(no CHGNet stages in this JSON)"]
    st, camp = c["start"], c["campaign"]
    h = camp.get("holdout") or {}
    out = [f"start: {st['steps']} FIRE steps, {st['P_GPa']:.2f} GPa, "
           f"{st['V_per_atom_A3']:.2f} A^3/atom",
           f"campaign: {camp['labels']} labels, {camp['wall_s'] / 60:.1f} min; held-out "
           f"({h.get('n')}): {h.get('energy_rmse_mev_per_atom', 0):.2f} meV/atom, "
           f"{h.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {h.get('stress_rmse_gpa', 0):.2f} GPa",
           "",
           "| round | its MD at 1000 K | student vs CHGNet on its frames | "
           "re-trained: held-out (campaign labels) |", "| --- | --- | --- | --- |"]
    for r in c["refine"]:
        pe, t = r.get("probe_errors") or {}, r.get("test") or {}
        v = r.get("V_per_atom_A3") or [None, None]
        md = (f"{r.get('probe_ps', 0):g} ps, {v[0]:.1f} -> {v[-1]:.1f} A^3/atom"
              + ("" if r.get("probe_exit", 0) == 0 else f" (guard stop, exit {r['probe_exit']})"))
        vs = (f"{pe.get('energy_rmse_mev_per_atom', 0):.1f} meV/atom, "
              f"{pe.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, "
              f"{pe.get('stress_rmse_gpa', 0):.1f} GPa" + (": holds" if r.get("held") else ""))
        tr = ("-" if r.get("held") else
              f"{t.get('energy_rmse_mev_per_atom', 0):.2f} meV/atom, "
              f"{t.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {t.get('stress_rmse_gpa', 0):.2f} "
              f"GPa ({r.get('train_s', 0):.0f} s)")
        out.append(f"| {r['round']} | {md} | {vs} | {tr} |")
    m = c["md"]
    tc = m.get("teacher_check") or {}
    out += ["", f"final MD: exit {m['exit']}, {m['ps']:g} ps, {m['wall_s']:.0f} s, "
            f"{m['ms_per_step']:.1f} ms/step, volume within {100 * m['max_volume_change']:.1f} % of its "
            f"mean ({m['mean_V_A3'] / 192:.2f} A^3/atom), vs CHGNet on {tc.get('n_structures')} frames: "
            f"{tc.get('energy_rmse_mev_per_atom', 0):.1f} meV/atom, "
            f"{tc.get('force_rmse_mev_per_angstrom', 0):.0f} meV/A, {tc.get('stress_rmse_gpa', 0):.2f} GPa; "
            f"stable {m['stable']}; model {Path(m['model']).name}"]
    stage = res["extra"]["stage_wall_s"]
    out.append("CHGNet stage wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in stage.items()
                                                 if k.startswith("chgnet_"))
               + f"; total {sum(v for k, v in stage.items() if k.startswith('chgnet_')) / 60:.1f} min")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else ROOT / "benchmarks" / "results" / "llzo.json"
    res = json.loads(path.read_text())
    for block in (results_table(res), fits_table(res), summary_lines(res), chgnet_lines(res)):
        print("\n".join(block), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
