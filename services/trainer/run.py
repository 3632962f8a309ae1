"""One training run as a user sees it: progress bar, model file, metrics JSON and plots."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from nnmd_kernels import Potential
from nnmd_kernels.training import TrainConfig, TrainResult, train

# one evaluation for training's report, campaigns' held-out errors and `nnmd test`
from services.trainer.evaluate import errors as error_table  # noqa: F401 (re-exported)
from services.trainer.evaluate import predict as predictions


def load_config(path: str | None, overrides: dict | None = None) -> TrainConfig:
    d = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"training config {path}: " + (
                "a directory, not a file" if p.is_dir() else "no such file"
                if not p.exists() else "not a regular file"))
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
        try:
            text = p.read_text()
            if kind == "YAML":
                import yaml

                d = yaml.safe_load(text) or {}
            else:
                d = json.loads(text)
        except Exception as exc:  # OSError, UnicodeDecodeError, JSON or YAML syntax
            where = " ".join(str(exc).split())
            raise ValueError(f"training config {path}: not valid {kind} ({where})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the training config must be a mapping of TrainConfig fields")
    d.update(overrides or {})
    return TrainConfig.from_dict(d)


def plot_learning_curve(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m, hist in enumerate(history):
        ep = [h["epoch"] for h in hist]
        for key, ax, scale in (("energy_rmse", axes[0], 1e3), ("force_rmse", axes[1], 1e3)):
            for split, ls in (("train", "-"), ("val", "--")):
                y = [h.get(f"{split}_{key}", np.nan) * scale for h in hist]
                if np.isfinite(y).any():
                    ax.semilogy(ep, y, ls, label=f"model {m} {split}")
    axes[0].set_ylabel("energy RMSE (meV/atom)")
    axes[1].set_ylabel("force RMSE (meV/A)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_parity(rows_by_set: dict, path_e, path_f):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, rows in rows_by_set.items():
        ax.plot([r["e_ref"] for r in rows], [r["e_pred"] for r in rows], ".", label=name)
    lims = ax.get_xlim()
    ax.plot(lims, lims, "k-", lw=0.5)
    ax.set_xlabel("reference energy (eV/atom)")
    ax.set_ylabel("predicted energy (eV/atom)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_e, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, rows in rows_by_set.items():
        fr = [np.ravel(r["f_ref"]) for r in rows if r["f_ref"] is not None]
        fp = [np.ravel(r["f_pred"]) for r in rows if r["f_ref"] is not None]
        if fr:
            ax.plot(np.concatenate(fr), np.concatenate(fp), ".", ms=2, label=name)
    lims = ax.get_xlim()
    ax.plot(lims, lims, "k-", lw=0.5)
    ax.set_xlabel("reference force component (eV/A)")
    ax.set_ylabel("predicted (eV/A)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_f, dpi=110)
    plt.close(fig)


def run_training(structures, out, cfg: TrainConfig, init: Potential | None = None, test_structures=None,
                 report_dir=None, progress: bool = True) -> tuple[TrainResult, dict]:
    """Train, save `out` (.nnmd), and write metrics.json + PNGs into report_dir."""
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + "_training")
    report_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        total = cfg.n_models * (cfg.max_epochs + cfg.warmup_epochs)
        bar = tqdm(total=total, desc="training", unit="it", file=sys.stderr, dynamic_ncols=True)

    def report(member, epoch, row):
        if bar is not None:
            bar.update(1)
            msg = {"m": member, "E": row.get("val_energy_rmse", row.get("train_energy_rmse", np.nan)) * 1e3,
                   "F": row.get("val_force_rmse", row.get("train_force_rmse", np.nan)) * 1e3}
            bar.set_postfix_str(f"model {msg['m']} E {msg['E']:.2f} meV/at F {msg['F']:.0f} meV/A")

    t0 = time.perf_counter()
    result = train(structures, cfg, init=init, progress=report)
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    digest = result.potential.save(out)
    rows = {"training": predictions(result.potential, structures)}
    if test_structures:
        rows["test"] = predictions(result.potential, test_structures)
    metrics = {
        "model": str(out),
        "sha256": digest,
        "train_seconds": seconds,
        "errors": {name: error_table(r) for name, r in rows.items()},
        "fit": result.metrics,
        "dropped_outliers": result.dropped,
        "config": result.potential.metadata.get("config"),
    }
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (report_dir / "history.json").write_text(json.dumps(result.history))
    plot_learning_curve(result.history, report_dir / "learning_curve.png")
    plot_parity(rows, report_dir / "parity_energy.png", report_dir / "parity_forces.png")
    return result, metrics
