"""One training run as a user sees it: progress bar, model file, metrics JSON and plots."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from nnmd_kernels import Potential
from nnmd_kernels.training import TrainConfig, TrainResult, train
from services.runtime.threads import blas_one_thread

# one evaluation for training's report, campaigns' held-out errors and `nnmd test`
from services.trainer.evaluate import errors as error_table  # noqa: F401 (re-exported)
from services.trainer.evaluate import predict as predictions

# `nnmd train --preset NAME`: TrainConfig values under --config and explicit flags
PRESETS = {
    # minutes on a laptop: small descriptor and networks, few iterations
    "fast": {"descriptor": {"n_radial": 8, "n_angular": 4}, "hidden": [24, 24], "max_epochs": 100,
             "warmup_epochs": 10, "patience": 30, "n_models": 1, "optimizer": "lbfgs"},
    # TrainConfig's own defaults
    "default": {},
    # more orders and wider networks, 1,000 L-BFGS iterations on every structure (no
    # validation split, no early stopping); radial functions to 7 A, angular to 6 A. On
    # mlearn-Si (docs/benchmarks.md, mlearn section), seeds 0/1/2: test E 4.99/4.55/4.85
    # meV/atom, F 126.5/126.3/123.0 meV/A, every seed below n2p2 (6.93, 169.7); angular to
    # 5 A gave 5.23/7.00 and 121.3/120.2 (seeds 0/1), the energies held up by the Si
    # (3 1 0) slab
    "accurate": {"descriptor": {"n_radial": 16, "n_angular": 8, "r_radial": 7.0, "r_angular": 6.0},
                 "hidden": [64, 64], "max_epochs": 1000, "validation_fraction": 0.0,
                 "warmup_epochs": 50, "patience": 150, "n_models": 1, "optimizer": "lbfgs"},
}


def preset_config(name: str | None) -> dict:
    if name is None:
        return {}
    if name not in PRESETS:
        raise ValueError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)}")
    return json.loads(json.dumps(PRESETS[name]))


def load_config(path: str | None, overrides: dict | None = None, preset: str | None = None) -> TrainConfig:
    """TrainConfig from, in increasing precedence: the preset, the YAML/JSON file, overrides."""
    base = preset_config(preset)
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
    base.update(d)
    base.update(overrides or {})
    return TrainConfig.from_dict(base)


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


INVOCATION = "invocation.json"


def format_estimate(info: dict) -> str:
    """One line: the expected training time from train()'s announce(info)."""
    s = info["expected_s"]
    span = f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"
    if info.get("batch_structures"):
        how = (f"{info['s_per_epoch']:.1f} s per epoch (mini-batches of {info['batch_structures']} structures)"
               f" x {info['iterations'] // max(info.get('steps_per_epoch', 1), 1)} epochs")
    else:
        how = f"{info['s_per_iteration']:.2f} s per iteration x {info['iterations']}"
    return (f"expected training time: up to {span} ({how}, {info['n_models']} model(s); setup took "
            f"{info['setup_s']:.1f} s; early stopping may end sooner)")


def write_json_atomic(path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def run_training(structures, out, cfg: TrainConfig, init: Potential | None = None, test_structures=None,
                 report_dir=None, progress: bool = True, resume: bool = False,
                 invocation: dict | None = None, announce=None) -> tuple[TrainResult, dict]:
    """Train, save `out` (.nnmd), and write metrics.json + PNGs into report_dir.

    report_dir also receives checkpoint.npz (every cfg.checkpoint_every iterations,
    atomically) and, when given, invocation.json (what `nnmd train --resume DIR` needs to
    start again: data, test, format, out, init and the settings); resume=True continues
    from the checkpoint there. announce(line): the expected time, before training
    (default: printed to stderr)."""
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + "_training")
    report_dir.mkdir(parents=True, exist_ok=True)
    if invocation is not None:
        write_json_atomic(report_dir / INVOCATION, {**invocation, "config": _plain_config(cfg)})
    estimate = {}
    if announce is None:
        def announce(line):  # beside the progress bar; --no-progress: in metrics.json only
            if progress:
                print(line, file=sys.stderr, flush=True)
    bar = None
    if progress:
        from tqdm import tqdm

        total = cfg.n_models * (cfg.max_epochs + cfg.warmup_epochs)
        bar = tqdm(total=total, desc="training", unit="it", file=sys.stderr, dynamic_ncols=True)

    last = {}

    def report(member, epoch, row):
        if bar is not None:
            # full batch: one call per iteration (epoch 1, 2, ...); mini-batches: warm-up
            # steps 1..W, then epoch + fraction per step, so count the advance
            prev = last.get(member, 0.0)
            bar.update(round(epoch - prev if epoch >= prev else epoch, 6))
            last[member] = epoch
            msg = {"m": member, "E": row.get("val_energy_rmse", row.get("train_energy_rmse", np.nan)) * 1e3,
                   "F": row.get("val_force_rmse", row.get("train_force_rmse", np.nan)) * 1e3}
            bar.set_postfix_str(f"model {msg['m']} E {msg['E']:.2f} meV/at F {msg['F']:.0f} meV/A")

    t0 = time.perf_counter()
    with blas_one_thread():  # services.runtime.threads: 1.7x faster on 2 cores
        result = train(structures, cfg, init=init, progress=report, checkpoint_dir=report_dir,
                       resume=resume, announce=lambda info: (estimate.update(info),
                                                             announce(format_estimate(info))))
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
        "expected_seconds": estimate.get("expected_s"),
        "config": result.potential.metadata.get("config"),
    }
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (report_dir / "history.json").write_text(json.dumps(result.history))
    plot_learning_curve(result.history, report_dir / "learning_curve.png")
    plot_parity(rows, report_dir / "parity_energy.png", report_dir / "parity_forces.png")
    return result, metrics


def _plain_config(cfg: TrainConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
