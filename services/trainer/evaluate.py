"""A model's errors on a labelled data set (`nnmd test`, and training's test report).

``evaluate(pot, structures, groups)`` predicts every structure once and returns a
JSON-safe dict:

- ``overall``: ``n_structures``, ``n_atoms``, ``energy_rmse_mev_per_atom``,
  ``energy_mae_mev_per_atom``, ``force_rmse_mev_per_angstrom``,
  ``force_mae_mev_per_angstrom`` (over force components), ``force_max_mev_per_angstrom``
  (the largest error of one atom's force vector), and where the data carry stress
  ``stress_rmse_gpa`` / ``stress_mae_gpa`` (over the 6 independent components);
- ``groups``: the same per group (mlearn ``group``, extxyz ``config_type``, or any key
  the caller chose);
- ``worst``: the structures with the largest energy error per atom and with the largest
  force error of one atom;
- ``calibration`` (ensembles only): how the predicted spread of the members (energy
  std per atom) compares with the actual error: the fraction of structures within 1
  and 2 sigma, and the rank correlation of spread and error.

Errors are prediction - reference. Units: meV/atom, meV/A, GPa.
"""

from __future__ import annotations

import math

import numpy as np

from nnmd_kernels.md.units import EV_PER_A3_TO_GPA
from services.runtime.convert import json_safe

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def predict(pot, structures) -> list[dict]:
    """One row per structure: reference and predicted energy per atom, forces, stress
    (None where the reference has none) and the ensemble spread per atom (eV)."""
    rows = []
    for s in structures:
        r = pot.compute(s.positions, s.numbers, s.cell, s.pbc)
        n = len(s.numbers)
        has_stress = s.stress is not None and r.stress is not None
        rows.append({"name": s.name, "n_atoms": n, "e_ref": s.energy / n, "e_pred": r.energy / n,
                     "f_ref": s.forces, "f_pred": r.forces,
                     "s_ref": np.asarray(s.stress) if has_stress else None,
                     "s_pred": np.asarray(r.stress) if has_stress else None,
                     "e_std": r.energy_std / n})
    return rows


def errors(rows: list[dict]) -> dict:
    """Energy, force and stress errors of these rows (see the module docstring)."""
    out: dict = {"n_structures": len(rows), "n_atoms": int(sum(r["n_atoms"] for r in rows))}
    if not rows:
        return out
    e = np.array([r["e_pred"] - r["e_ref"] for r in rows])
    out["energy_rmse_mev_per_atom"] = 1e3 * float(np.sqrt(np.mean(e ** 2)))
    out["energy_mae_mev_per_atom"] = 1e3 * float(np.mean(np.abs(e)))
    df = [np.asarray(r["f_pred"]) - np.asarray(r["f_ref"]) for r in rows
          if r["f_ref"] is not None and r["f_pred"] is not None]
    if df:
        f = np.concatenate(df)
        out["force_rmse_mev_per_angstrom"] = 1e3 * float(np.sqrt(np.mean(f ** 2)))
        out["force_mae_mev_per_angstrom"] = 1e3 * float(np.mean(np.abs(f)))
        out["force_max_mev_per_angstrom"] = 1e3 * float(np.linalg.norm(f, axis=1).max())
    ds = [EV_PER_A3_TO_GPA * np.array([r["s_pred"][i, j] - r["s_ref"][i, j] for i, j in VOIGT])
          for r in rows if r["s_ref"] is not None]
    if ds:
        s = np.concatenate(ds)
        out["stress_rmse_gpa"] = float(np.sqrt(np.mean(s ** 2)))
        out["stress_mae_gpa"] = float(np.mean(np.abs(s)))
        out["n_with_stress"] = len(ds)
    return out


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def calibration(rows: list[dict]) -> dict:
    """Predicted ensemble spread against the actual energy error, per structure."""
    sd = np.array([r["e_std"] for r in rows])
    err = np.abs(np.array([r["e_pred"] - r["e_ref"] for r in rows]))
    out = {"n": len(rows), "mean_spread_mev_per_atom": 1e3 * float(sd.mean()),
           "rmse_mev_per_atom": 1e3 * float(np.sqrt(np.mean(err ** 2)))}
    ok = sd > 0
    out["within_1_sigma"] = float(np.mean(err[ok] <= sd[ok])) if ok.any() else None
    out["within_2_sigma"] = float(np.mean(err[ok] <= 2 * sd[ok])) if ok.any() else None
    if len(rows) >= 3 and np.ptp(sd) > 0 and np.ptp(err) > 0:
        out["spearman_spread_error"] = float(np.corrcoef(_rank(sd), _rank(err))[0, 1])
    else:
        out["spearman_spread_error"] = None
    return out


def worst(rows: list[dict], n: int = 10) -> dict:
    """The n structures with the largest |energy error| per atom, and with the largest
    force error of one atom."""
    e = [(1e3 * abs(r["e_pred"] - r["e_ref"]), r) for r in rows]
    f = [(1e3 * float(np.linalg.norm(np.asarray(r["f_pred"]) - np.asarray(r["f_ref"]),
                                     axis=1).max()), r)
         for r in rows if r["f_ref"] is not None and r["n_atoms"]]
    return {
        "energy": [{"name": r["name"], "n_atoms": r["n_atoms"], "error_mev_per_atom": v,
                    "reference_ev_per_atom": r["e_ref"]}
                   for v, r in sorted(e, key=lambda t: -t[0])[:n]],
        "force": [{"name": r["name"], "n_atoms": r["n_atoms"],
                   "max_atom_error_mev_per_angstrom": v}
                  for v, r in sorted(f, key=lambda t: -t[0])[:n]]}


def evaluate(pot, structures, groups: list[str] | None = None, *, n_worst: int = 10,
             rows: list[dict] | None = None) -> dict:
    """Errors of `pot` on labelled `structures` (module docstring); groups: one name per
    structure (empty: ungrouped)."""
    rows = predict(pot, structures) if rows is None else rows
    out = {"overall": errors(rows), "worst": worst(rows, n_worst)}
    if groups is not None and any(groups):
        by: dict[str, list] = {}
        for g, r in zip(groups, rows):
            by.setdefault(g or "(none)", []).append(r)
        out["groups"] = {g: errors(rs) for g, rs in sorted(by.items())}
    if getattr(pot, "n_models", 1) > 1:
        out["calibration"] = calibration(rows)
    return json_safe(out)


def plot(rows: list[dict], groups: list[str] | None, folder) -> list[str]:
    """Parity plots of energy, forces and stress (coloured by group) and, for ensembles,
    error against predicted spread. Returns the files written."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = groups if groups is not None and any(groups) else [""] * len(rows)
    names = sorted(set(groups))
    written = []

    def parity(path, pairs_of, xlabel, ylabel):
        fig, ax = plt.subplots(figsize=(5, 5))
        lo, hi = math.inf, -math.inf
        for g in names:
            xs, ys = pairs_of([r for r, gg in zip(rows, groups) if gg == g])
            if len(xs):
                ax.plot(xs, ys, ".", ms=3, label=g or None)
                lo, hi = min(lo, xs.min(), ys.min()), max(hi, xs.max(), ys.max())
        if not math.isfinite(lo):
            plt.close(fig)
            return
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if any(names):
            ax.legend(fontsize=7, markerscale=2)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    parity(folder / "parity_energy.png",
           lambda rs: (np.array([r["e_ref"] for r in rs]), np.array([r["e_pred"] for r in rs])),
           "reference energy (eV/atom)", "predicted energy (eV/atom)")

    def forces(rs):
        rs = [r for r in rs if r["f_ref"] is not None]
        if not rs:
            return np.zeros(0), np.zeros(0)
        return (np.concatenate([np.ravel(r["f_ref"]) for r in rs]),
                np.concatenate([np.ravel(r["f_pred"]) for r in rs]))

    parity(folder / "parity_forces.png", forces, "reference force component (eV/A)",
           "predicted (eV/A)")

    def stress(rs):
        rs = [r for r in rs if r["s_ref"] is not None]
        if not rs:
            return np.zeros(0), np.zeros(0)
        return (EV_PER_A3_TO_GPA * np.array([[r["s_ref"][i, j] for i, j in VOIGT] for r in rs]).ravel(),
                EV_PER_A3_TO_GPA * np.array([[r["s_pred"][i, j] for i, j in VOIGT] for r in rs]).ravel())

    parity(folder / "parity_stress.png", stress, "reference stress component (GPa)",
           "predicted (GPa)")
    sd = np.array([r["e_std"] for r in rows])
    if (sd > 0).any():
        err = np.abs(np.array([r["e_pred"] - r["e_ref"] for r in rows]))
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.loglog(1e3 * sd, 1e3 * np.maximum(err, 1e-9), ".", ms=3)
        lim = [1e3 * sd[sd > 0].min(), 1e3 * sd.max()]
        ax.plot(lim, lim, "k-", lw=0.5, label="error = spread")
        ax.set_xlabel("ensemble spread (meV/atom)")
        ax.set_ylabel("|energy error| (meV/atom)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "calibration.png", dpi=110)
        plt.close(fig)
        written.append(str(folder / "calibration.png"))
    return written
