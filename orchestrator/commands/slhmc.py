"""`nnmd slhmc`, `nnmd demo`, `nnmd report`: a local SLHMC campaign, the embedded demo, and
its report (CSV of every chain step, or an HTML page with plots)."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from orchestrator.commands._output import add_out, atomic_path, check_out
from services.reference.spec import SPEC_HELP
from services.runtime.convert import json_safe

# The demo: EMT copper, small descriptor and network so that it runs in ~1-2 minutes.
DEMO_TRAIN = {"descriptor": {"n_radial": 12, "n_angular": 6, "r_radial": 4.5, "r_angular": 4.0},
              "hidden": [16, 16], "max_epochs": 60, "warmup_epochs": 10,
              "validation_fraction": 0.1}
REPORT_FIELDS = ("campaign", "chain", "step", "phase", "move", "status", "accepted",
                 "energy_ref", "energy_proposal", "n_md_steps", "model_version", "volume")


def register(sub) -> None:
    p = sub.add_parser("slhmc", help="run (or resume) a local SLHMC campaign: bootstrap, "
                       "train, chains with the reference, re-train",
                       description=__doc__)
    p.add_argument("--reference", default="emt", metavar="SPEC",
                   help=f"the reference: {SPEC_HELP} (default emt)")
    p.add_argument("--structure", default="", metavar="FILE",
                   help="starting structure, any format ASE reads (default with qe:INPUT: "
                        "the QE input's structure)")
    p.add_argument("--store", required=True, metavar="DIR", help="Zarr store (folder or URL)")
    p.add_argument("--campaign", default="slhmc", help="campaign name in the store")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--steps", type=int, default=100, help="MC steps per chain")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--ensemble", choices=("nvt", "npt"), default="nvt")
    p.add_argument("--pressure", default="0", help="GPa (npt); e.g. 1 or 1GPa (1 bar = 1e-4 GPa)")
    p.add_argument("--md-steps", type=int, default=20,
                   help="initial NVE steps per HMC move (adapted within 10..2000)")
    p.add_argument("--md-steps-min", type=int, default=10)
    p.add_argument("--md-steps-max", type=int, default=2000)
    p.add_argument("--dt", type=float, default=1.0, help="MD time step, fs")
    p.add_argument("--retrain-every", type=int, default=100,
                   help="re-train after this many new labels (0 = never)")
    p.add_argument("--retrain-epochs", type=int, default=60)
    p.add_argument("--retrain-max-structures", type=int, default=250,
                   help="a re-training sees the labels new since the last model plus a "
                        "replay sample of the older ones, this many in all, so its cost "
                        "stays flat as the data grow (0 = every label)")
    p.add_argument("--retrain-full-every", type=int, default=0,
                   help="every k-th re-training sees every label (0 = only the run's "
                        "last one, the model that is exported)")
    p.add_argument("--bootstrap-steps", type=int, default=50,
                   help="first-principles MD steps before the first model")
    p.add_argument("--bootstrap-dt", type=float, default=1.0, help="bootstrap MD time step, fs")
    p.add_argument("--reference-workers", type=int, default=1,
                   help="reference calculations at once (e.g. pw.x runs; default 1)")
    p.add_argument("--delayed-acceptance", action="store_true",
                   help="screen moves with the NNP before calling the reference (exact)")
    p.add_argument("--volume-step", type=float, default=0.02,
                   help="cell step (npt): max |d ln V| (isotropic), max |d ln L| per length "
                        "(anisotropic), max |dL_ij| / V0^(1/3) (triclinic)")
    s = p.add_argument_group("sampling (docs/slhmc.md, 'What is exact')")
    s.add_argument("--burn-in", type=int, default=None, metavar="N",
                   help="steps 1..N of each chain learn (n_md adapts, re-training); after "
                        "that the model version and n_md are frozen and the chain samples "
                        "exactly (production). Default: the whole run learns")
    s.add_argument("--cell-moves", choices=("isotropic", "anisotropic", "triclinic"),
                   default="isotropic", help="npt cell moves: volume only, three lengths at "
                   "fixed angles, or the whole cell (default isotropic)")
    s.add_argument("--volume-every", type=int, default=2, metavar="K",
                   help="npt: every K-th step is a cell move (default 2)")
    s.add_argument("--fixed-md-steps", action="store_true",
                   help="never adapt n_md, not even in the burn-in")
    s.add_argument("--md-steps-jitter", type=float, default=0.0, metavar="F",
                   help="draw each trajectory length uniformly in [(1-F) n, n] (exact)")
    s.add_argument("--on-failure", choices=("stop", "reject"), default="stop",
                   help="a reference failure after its retries: stop the chain (state "
                        "failed; default) or reject the move (biased, reported as such)")
    p.add_argument("--train-config", default=None, metavar="FILE",
                   help="TrainConfig fields as JSON or YAML")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("Quantum ESPRESSO (qe:...)")
    g.add_argument("--ranks", type=int, default=1, help="MPI ranks per pw.x run (default 1)")
    g.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads per rank")
    g.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before one pw.x run is killed (a failed, rejected move)")
    g.add_argument("--attempts", type=int, default=3,
                   help="tries per structure when the SCF does not converge: more "
                        "iterations and lower mixing, then more smearing (default 3)")
    p.add_argument("-o", "--out", default=None, metavar="DIR",
                   help="export the final model here (model.nnmd, ffield.sannp)")
    p.add_argument("--force", action="store_true",
                   help="replace model.nnmd / ffield.sannp already in --out")
    p.set_defaults(func=cmd_slhmc)

    d = sub.add_parser("demo", help="the embedded demo: SLHMC on EMT copper, 4 chains, "
                       "re-training, model + store + report.html (~2 min)")
    d.add_argument("-o", "--out", default="nnmd-demo", metavar="DIR",
                   help="default ./nnmd-demo (a second demo there resumes and refreshes its "
                        "model and reports)")
    d.add_argument("--steps", type=int, default=24, help="MC steps per chain (default 24)")
    d.add_argument("--chains", type=int, default=4)
    d.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default): the reference runs in Ray actors serving it over "
                        "gRPC on a local Ray instance; local: threads in this process")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="a campaign report: CSV of every chain step, or HTML")
    r.add_argument("--store", required=True, metavar="DIR")
    r.add_argument("--campaign", default=None, help="default: every SLHMC campaign in the store")
    r.add_argument("--format", choices=("csv", "html", "stats"), default="csv",
                   help="csv: every chain step; html: plots; stats: production-phase "
                        "<E>, <V> and acceptance with blocking error bars (JSON)")
    add_out(r, help="file (csv, stats default: stdout; html default: report.html)")
    r.set_defaults(func=cmd_report)


def _train_overrides(path):
    if not path:
        return {}
    from services.trainer.run import load_config

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--train-config {path}: " + ("a directory, not a file" if p.is_dir()
                                                        else "no such file" if not p.exists() else "not a regular file"))
    try:
        text = p.read_text()
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"--train-config {path}: not valid "
                         f"{'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} ({exc})"
                         ) from None
    except Exception as exc:  # yaml.YAMLError
        raise ValueError(f"--train-config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--train-config {path}: must be a mapping of TrainConfig fields")
    load_config(path)  # validates the keys now, naming the bad ones
    return data


def cmd_slhmc(args) -> int:
    from nnmd_kernels.md.units import pressure_gpa
    from orchestrator.slhmc import CampaignConfig, run_campaign

    args.pressure = pressure_gpa(args.pressure, "--pressure")
    if args.out is not None:
        out = check_out(args.out, args.force, "--out", directory=True)
        for name in ("model.nnmd", "ffield.sannp") if out.is_dir() else ():
            check_out(out / name, args.force, "--out")
    cfg = CampaignConfig(
        reference=args.reference, structure=args.structure, campaign=args.campaign,
        chains=args.chains, steps=args.steps, temperature=args.temperature,
        ensemble=args.ensemble, pressure_gpa=args.pressure, md_steps=args.md_steps,
        md_steps_min=args.md_steps_min, md_steps_max=args.md_steps_max, dt=args.dt,
        retrain_every=args.retrain_every, retrain_epochs=args.retrain_epochs,
        retrain_max_structures=args.retrain_max_structures,
        retrain_full_every=args.retrain_full_every, seed=args.seed, bootstrap_steps=args.bootstrap_steps, bootstrap_dt=args.bootstrap_dt,
        reference_workers=args.reference_workers,
        qe={"ranks": args.ranks, "threads": args.threads, "timeout_s": args.timeout,
            "attempts": args.attempts},
        delayed_acceptance=args.delayed_acceptance, volume_step=args.volume_step,
        train=_train_overrides(args.train_config), burn_in=args.burn_in,
        cell_moves=args.cell_moves, volume_every=args.volume_every,
        adapt_md_steps=not args.fixed_md_steps, md_steps_jitter=args.md_steps_jitter,
        on_failure=args.on_failure)
    summary = run_campaign(cfg, args.store, export_dir=args.out)
    print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    return 0


def cmd_demo(args) -> int:
    from ase.build import bulk

    from orchestrator.slhmc import CampaignConfig

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    structure = out / "cu32.xyz"
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms
    atoms.write(structure, format="extxyz")
    cfg = CampaignConfig(reference="emt", structure=str(structure), campaign="demo",
                         chains=args.chains, steps=args.steps, temperature=600.0,
                         md_steps=10, md_steps_min=5, md_steps_max=80, dt=2.0,
                         retrain_every=32, retrain_epochs=25, bootstrap_steps=30,
                         bootstrap_dt=2.0, seed=0, train=DEMO_TRAIN, reference_workers=2,
                         burn_in=args.steps // 2)
    print(f"nnmd demo: SLHMC on 32-atom fcc Cu with the EMT reference, {cfg.chains} chains x "
          f"{cfg.steps} steps at {cfg.temperature:g} K -> {out}/", flush=True)
    summary = _run_demo(cfg, str(out / "store"), args.executor, out)
    html = out / "report.html"
    write_html(str(out / "store"), html, campaign="demo")
    write_csv(str(out / "store"), out / "report.csv", campaign="demo")
    acc = summary["acceptance"]
    print(f"done in {time.perf_counter() - t0:.0f} s: acceptance "
          f"{'-' if acc is None else format(acc, '.2f')}, "
          f"{summary['labels']} new labels this run, model v{summary['model_version']}")
    for st in production_stats(str(out / "store"), "demo"):
        e, a = st.get("energy_ref_ev"), st.get("acceptance")
        if e and e.get("mean") is not None:
            print(f"  production (steps {cfg.burn_in + 1}-{cfg.steps}, frozen kernel): "
                  f"<E_ref> = {e['mean']:.4f} +- {e['error'] or float('nan'):.4f} eV, "
                  f"acceptance {a['mean']:.2f} +- {a['error'] or float('nan'):.2f} "
                  f"({st['steps_production']} steps)")
    for p in summary.get("exported", []):
        print(f"  model: {p}")
    print(f"  store: {out / 'store'}   (nnmd store info {out / 'store'})")
    print(f"  report: {html}   (and report.csv)")
    return 0


def _run_demo(cfg, store_url: str, executor: str, out: Path) -> dict:
    """The demo through the coordinator's runner: chains as asyncio tasks, the reference
    in 2 Ray actors serving it over gRPC (a local Ray instance) or in local threads."""
    import asyncio
    import os

    from orchestrator.commands.campaign import _export_local
    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.spec import CampaignSpec, ReferenceResources

    if executor == "ray":
        import ray

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if not ray.is_initialized():
            print("  starting a local Ray instance ...", flush=True)
            ray.init(address=os.environ.get("RAY_ADDRESS") or "local", namespace="nnmd",
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
    spec = CampaignSpec(config=cfg, store=store_url, executor=executor,
                        reference_resources=ReferenceResources(num_cpus=0.5))
    run = CampaignRun(spec, log=lambda m: print("  " + m, flush=True))
    summary = asyncio.run(run.run())
    summary["exported"] = _export_local(spec, out)
    return summary


# ------------------------------------------------------------------ report


def campaigns(store) -> list[str]:
    names = list(store.info().get("campaigns", {}))
    from orchestrator.slhmc import CAMPAIGN_DOC

    return [c for c in names if store.read_checkpoint(c, CAMPAIGN_DOC) is not None]


def report_rows(store_url: str, campaign: str | None = None) -> list[dict]:
    """One row per chain step of every chain (from the chain checkpoints)."""
    from orchestrator.slhmc import CAMPAIGN_DOC, chain_history, is_history_segment
    from services.store import Store

    store = Store(store_url, read_only=True)
    names = [campaign] if campaign else campaigns(store)
    if campaign and store.read_checkpoint(campaign, CAMPAIGN_DOC) is None:
        raise ValueError(f"--campaign {campaign}: no SLHMC campaign of that name in {store_url} "
                         f"(found: {campaigns(store)})")
    rows = []
    for camp in names:
        for chain in store.list_checkpoints(camp):
            if chain == CAMPAIGN_DOC or is_history_segment(chain):
                continue
            doc = store.read_checkpoint(camp, chain)
            if doc.get("kind") == "mc":  # a Metropolis explorer's rounds, not chain steps
                continue
            for h in chain_history(store, camp, chain, doc):
                rows.append({"campaign": camp, "chain": chain, **h})
    return rows


def _groups_of(rows) -> dict:
    out: dict = {}
    for r in rows:
        key = (r["campaign"], float(r.get("temperature") or float("nan")))
        out.setdefault(key, {}).setdefault(r["chain"], []).append(r)
    return out


def _pooled(per_chain) -> dict:
    """Chains pooled: mean weighted by length, error from the chains' blocked errors."""
    import math

    per_chain = [b for b in per_chain if b.n > 0]
    n = sum(b.n for b in per_chain)
    if not n:
        return {"mean": None, "error": None, "n": 0}
    mean = sum(b.n * b.mean for b in per_chain) / n
    var = sum((b.n / n) ** 2 * b.error ** 2 for b in per_chain)
    return {"mean": mean, "error": math.sqrt(var) if math.isfinite(var) else None, "n": n,
            "converged": all(b.converged for b in per_chain)}


def production_stats(store_url: str, campaign: str | None = None,
                     rows: list[dict] | None = None) -> list[dict]:
    """<E_ref>, <V> and acceptance over the production phase only, per campaign and
    temperature, with blocking error bars (each chain blocked, the chains pooled).
    Burn-in steps never enter them: their kernel was still adapting."""
    from nnmd_kernels.analysis import blocked_mean
    from orchestrator.slhmc import CAMPAIGN_DOC
    from services.store import Store

    rows = report_rows(store_url, campaign) if rows is None else rows
    store = Store(store_url, read_only=True)
    out = []
    for (camp, temp), chains in sorted(_groups_of(rows).items()):
        cfg = (store.read_checkpoint(camp, CAMPAIGN_DOC) or {}).get("config", {})
        prod = {c: [r for r in rs if r.get("phase") == "production"] for c, rs in chains.items()}
        failed = {}
        for c in chains:
            doc = store.read_checkpoint(camp, c) or {}
            if doc.get("failed"):
                failed[c] = doc["failed"]["reason"]
        entry = {"campaign": camp, "temperature": temp, "chains": len(chains),
                 "burn_in": cfg.get("burn_in"), "on_failure": cfg.get("on_failure", "stop"),
                 "steps_burn_in": sum(len(rs) - len(prod[c]) for c, rs in chains.items()),
                 "steps_production": sum(len(p) for p in prod.values()),
                 "failed_chains": failed,
                 "rejected_failures": sum(r.get("status") == "failed" for rs in chains.values()
                                          for r in rs)}
        if entry["rejected_failures"] and not failed:
            entry["bias_warning"] = (
                f"{entry['rejected_failures']} moves were rejected because the reference "
                "failed (on_failure: reject): the chains are biased towards structures where "
                "the reference succeeds")
        if not entry["steps_production"]:
            entry["note"] = ("no production steps: set a burn-in (--burn-in N, spec "
                             "sampling.burn_in) shorter than the run" if cfg.get("burn_in")
                             is None else "the chains have not reached the end of the "
                             "burn-in yet")
            out.append(entry)
            continue
        for key, col, pick in (("energy_ref_ev", "energy_ref", lambda r: True),
                               ("volume_a3", "volume", lambda r: True),
                               ("acceptance", "accepted", lambda r: True),
                               ("acceptance_hmc", "accepted", lambda r: r["move"] == "hmc"),
                               ("acceptance_cell", "accepted",
                                lambda r: r["move"] == "volume")):
            series = [blocked_mean([float(r[col]) for r in p if pick(r)]) for p in prod.values()]
            entry[key] = _pooled(series)
        entry["model_versions"] = sorted({int(r["model_version"]) for p in prod.values()
                                          for r in p})
        entry["n_md_steps"] = {c: sorted({int(r["n_md_steps"]) for r in p if r["move"] == "hmc"})
                               for c, p in prod.items() if p}
        out.append(entry)
    return out


def write_stats(store_url, out, campaign=None) -> list[dict]:
    stats = production_stats(store_url, campaign)
    text = json.dumps(json_safe(stats), indent=2, allow_nan=False)
    if out is None:
        print(text)
    else:
        Path(out).write_text(text + "\n")
    return stats


def write_csv(store_url, out, campaign=None) -> int:
    rows = report_rows(store_url, campaign)
    f = sys.stdout if out is None else open(out, "w", newline="")  # noqa: SIM115
    try:
        w = csv.DictWriter(f, fieldnames=REPORT_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            r = {**r, "phase": r.get("phase") or "burn_in"}  # older campaigns: all learning
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in REPORT_FIELDS})
    finally:
        if out is not None:
            f.close()
    return len(rows)


def write_html(store_url, out, campaign=None) -> None:
    """One self-contained HTML page (plots inlined as PNG): settings, wall time by phase,
    production statistics, chains, dataset, models with held-out errors, parity."""
    import base64
    import io
    from html import escape

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from orchestrator.slhmc import CAMPAIGN_DOC, campaign_models
    from services.store import Store

    rows = report_rows(store_url, campaign)
    store = Store(store_url, read_only=True)
    chains = sorted({(r["campaign"], r["chain"]) for r in rows})
    names = sorted({c for c, _ in chains}) or ([campaign] if campaign else [])
    # each campaign's document (settings, runs), read once for the whole page
    docs = {name: store.read_checkpoint(name, CAMPAIGN_DOC) or {} for name in names}
    configs = {name: doc.get("config") or {} for name, doc in docs.items()}

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return base64.b64encode(buf.getvalue()).decode()

    def label(key) -> str:
        return key[1] if len(names) <= 1 else f"{key[0]}/{key[1]}"

    def per_chain(ax, ycol, ylabel, step_plot=False):
        """One line per chain, each with its own colour and style; a legend outside."""
        styles = ["-", "--", ":", "-."]
        for i, key in enumerate(chains):
            rs = [r for r in rows if (r["campaign"], r["chain"]) == key]
            x = [r["step"] for r in rs]
            y = ycol(rs)
            kw = dict(label=label(key), ls=styles[(i // 10) % 4], lw=1.2)
            (ax.step(x, y, where="post", **kw) if step_plot else ax.plot(x, y, **kw))
        ax.set(xlabel="chain step", ylabel=ylabel)
        for cfg in configs.values():
            b = cfg.get("burn_in")
            if b:
                ax.axvline(b + 0.5, color="k", lw=0.8, alpha=0.6)
        if len(chains) <= 12:
            ax.legend(fontsize=7, ncol=2, title="chain", title_fontsize=7)

    figs = []
    if len(chains) > 12:  # aggregate: too many lines to tell apart
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        steps = sorted({r["step"] for r in rows})
        acc = [np.mean([r["accepted"] for r in rows if r["step"] == k]) for k in steps]
        nmd = [[r["n_md_steps"] for r in rows if r["step"] == k] for k in steps]
        axes[0].plot(steps, acc, label=f"mean of {len(chains)} chains")
        axes[1].fill_between(steps, [min(v) for v in nmd], [max(v) for v in nmd], alpha=0.3,
                             label="min-max over chains")
        axes[1].plot(steps, [np.median(v) for v in nmd], label="median")
        axes[0].set(xlabel="chain step", ylabel="acceptance per step", ylim=(0, 1.05))
        axes[1].set(xlabel="chain step", ylabel="NVE steps per move (n)")
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        per_chain(axes[0], lambda rs: np.cumsum([r["accepted"] for r in rs])
                  / np.arange(1, len(rs) + 1), "running acceptance rate")
        axes[0].set_ylim(0, 1.05)
        per_chain(axes[1], lambda rs: [r["n_md_steps"] for r in rs], "NVE steps per move (n)",
                  step_plot=True)
    figs.append(("Acceptance and trajectory length per chain (vertical line: end of the "
                 "burn-in)", png(fig)))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    per_chain(axes[0], lambda rs: [r["energy_ref"] for r in rs], "E_ref of the chain state (eV)")
    per_chain(axes[1], lambda rs: [r["volume"] for r in rs], "volume (A^3)")
    figs.append(("Reference energy and volume traces", png(fig)))

    batch = store.read(campaign=campaign) if campaign else store.read()
    src = batch.arrays["source"]
    fig, ax = plt.subplots(figsize=(11, 3.5))
    for kind in ("aimd", "hmc", "mc"):  # records are in the order they were stored
        if (src == kind).any():
            ax.plot(np.arange(1, len(src) + 1), np.cumsum(src == kind),
                    label={"aimd": "bootstrap (aimd)", "hmc": "chains (hmc)",
                           "mc": "explorers (mc)"}[kind])
    ax.set(xlabel="labels stored (all sources)", ylabel="labels of this source")
    ax.legend()
    figs.append(("Dataset growth", png(fig)))

    models = campaign_models(store, campaign)
    if models:
        fig, ax = plt.subplots(figsize=(11, 3.5))
        n_struct = [m.get("n_structures", 0) for _, m in models]
        ax.plot(n_struct, [m.get("energy_rmse_mev_per_atom", np.nan) for _, m in models], "o-",
                label="energy, training (meV/atom)")
        ax.plot(n_struct, [m.get("force_rmse_mev_per_angstrom", np.nan) for _, m in models],
                "s-", label="force, training (meV/A)")
        ax.plot(n_struct, [(m.get("holdout") or {}).get("energy_rmse_mev_per_atom", np.nan)
                           for _, m in models], "o--", label="energy, held out (meV/atom)")
        ax.plot(n_struct, [(m.get("holdout") or {}).get("force_rmse_mev_per_angstrom", np.nan)
                           for _, m in models], "s--", label="force, held out (meV/A)")
        ax.set(xlabel="training structures", ylabel="RMSE", yscale="log")
        ax.legend(fontsize=8)
        figs.append(("Error per model version: training and held-out labels", png(fig)))

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for v, m in models:
            h = np.array(m.get("history") or [[np.nan] * 5], dtype=float)
            for ax, col in ((axes[0], 1), (axes[1], 3)):
                (line,) = ax.plot(h[:, 0], 1e3 * h[:, col], label=f"v{v} train")
                if np.isfinite(h[:, col + 1]).any():
                    ax.plot(h[:, 0], 1e3 * h[:, col + 1], "--", color=line.get_color(),
                            label=f"v{v} val")
        axes[0].set(xlabel="iteration", ylabel="energy RMSE (meV/atom)", yscale="log")
        axes[1].set(xlabel="iteration", ylabel="force RMSE (meV/A)", yscale="log")
        axes[0].legend(fontsize=6, ncol=2)
        figs.append(("Learning curves (solid: training, dashed: validation)", png(fig)))
        figs.append(("Parity of the latest model, by label source (held-out labels: training "
                     "never saw them)", _parity_png(store, models[-1][0], batch, png, plt, max(
                         (float(c.get("holdout_fraction", 0.0)) for c in configs.values()),
                         default=0.0))))

    # settings and wall time, per campaign
    settings, timing = [], []
    for name in names:
        doc, cfg = docs[name], configs[name]
        conds = cfg.get("chain_groups") or [{"count": cfg.get("chains"), **{
            k: cfg.get(k) for k in ("temperature", "ensemble", "pressure_gpa")}}]
        cond_text = "; ".join(
            f"{g.get('count')} x {str(g.get('ensemble', cfg.get('ensemble'))).upper()} "
            f"{g.get('temperature', cfg.get('temperature'))} K"
            + (f", {g.get('pressure_gpa', cfg.get('pressure_gpa'))} GPa"
               if g.get("ensemble", cfg.get("ensemble")) == "npt" else "") for g in conds)
        items = [("reference", cfg.get("reference")), ("conditions", cond_text),
                 ("steps per chain", cfg.get("steps")),
                 ("burn-in", cfg.get("burn_in") if cfg.get("burn_in") is not None
                  else "none (the whole run learns)"),
                 ("cell moves", f"{cfg.get('cell_moves', 'isotropic')} every "
                  f"{cfg.get('volume_every', 2)} steps, step {cfg.get('volume_step')}"
                  if "npt" in cond_text.lower() else "-"),
                 ("MD", f"n {cfg.get('md_steps')} ({cfg.get('md_steps_min')}.."
                  f"{cfg.get('md_steps_max')}), dt {cfg.get('dt')} fs, jitter "
                  f"{cfg.get('md_steps_jitter', 0.0)}"),
                 ("delayed acceptance", cfg.get("delayed_acceptance")),
                 ("re-training", f"every {cfg.get('retrain_every')} labels, "
                  f"{cfg.get('retrain_epochs')} epochs (warm start)"),
                 ("held-out share", cfg.get("holdout_fraction", 0.0)),
                 ("bootstrap", f"{cfg.get('bootstrap_steps')} steps, dt "
                  f"{cfg.get('bootstrap_dt')} fs"),
                 ("on failure", cfg.get("on_failure", "reject (older campaign)")),
                 ("seed", cfg.get("seed"))]
        settings.append(f"<h3>{escape(name)}</h3><table>" + "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))}</td>"
            "</tr>" for k, v in items) + "</table>")
        runs = doc.get("runs", [])
        if runs:
            tot = {k: sum(float(r.get(k, 0.0)) for r in runs) for k in (
                "seconds", "seconds_bootstrap", "seconds_reference", "seconds_md",
                "seconds_training", "seconds_store", "seconds_mc")}
            timing.append(
                f"<tr><td>{escape(name)}</td><td>{len(runs)}</td>" + "".join(
                    f"<td>{tot[k]:.1f}</td>" for k in (
                        "seconds", "seconds_bootstrap", "seconds_reference", "seconds_md",
                        "seconds_training", "seconds_store", "seconds_mc")) + "</tr>")
    timing_html = ("<h2>Wall time by phase (s, summed over runs)</h2><table><tr><th>campaign"
                   "</th><th>runs</th><th>total</th><th>bootstrap</th><th>reference</th>"
                   "<th>MD proposals</th><th>training</th><th>store</th><th>MC explorers</th>"
                   "</tr>" + "".join(timing) + "</table><p>Reference and MD overlap across "
                   "chains (they run side by side), so the phases can add up to more than the "
                   "total.</p>") if timing else ""

    n = len(rows)
    acc = sum(r["accepted"] for r in rows) / n if n else float("nan")
    table = "".join(
        f"<tr><td>v{v}</td><td>{m.get('n_structures')}</td><td>{m.get('n_labels')}</td>"
        f"<td>{m.get('energy_rmse_mev_per_atom', float('nan')):.2f}</td>"
        f"<td>{m.get('force_rmse_mev_per_angstrom', float('nan')):.0f}</td>"
        f"<td>{(m.get('holdout') or {}).get('n', '-')}</td>"
        f"<td>{(m.get('holdout') or {}).get('energy_rmse_mev_per_atom', float('nan')):.2f}</td>"
        f"<td>{(m.get('holdout') or {}).get('force_rmse_mev_per_angstrom', float('nan')):.0f}"
        f"</td><td>{m.get('train_seconds', float('nan')):.1f}</td></tr>" for v, m in models)
    body = "".join(f"<h2>{t}</h2><img src='data:image/png;base64,{b}'>" for t, b in figs)
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>nnmd SLHMC report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} td,th{{padding:2px 8px}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body><h1>SLHMC report</h1>
<p>store {escape(str(store_url))}; campaign {escape(campaign or 'all')}; {len(chains)} chains,
{n} chain steps, acceptance {acc:.2f}; {len(batch)} labelled structures
({int((src == 'aimd').sum())} aimd, {int((src == 'hmc').sum())} hmc,
{int((src == 'mc').sum())} mc).</p>
<h2>Settings</h2>{''.join(settings)}
{timing_html}
{_stats_html(production_stats(store_url, campaign, rows))}
<h2>Models</h2>
<table><tr><th>model</th><th>structures</th><th>chain labels</th><th>E RMSE train meV/atom</th>
<th>F RMSE train meV/A</th><th>held-out labels</th><th>E RMSE held-out meV/atom</th>
<th>F RMSE held-out meV/A</th><th>training s</th></tr>{table}</table>{body}</body></html>"""
    Path(out).write_text(html)


def _stats_html(stats: list[dict]) -> str:
    """The production-phase statistics as a table, with failed chains and bias notes."""
    from html import escape

    def pm(d, scale=1.0, fmt="{:.4f}"):
        if not d or d.get("mean") is None:
            return "-"
        err = d.get("error")
        return fmt.format(scale * d["mean"]) + (
            " &plusmn; " + fmt.format(scale * err) if err is not None else "")

    rows, notes = [], []
    for e in stats:
        rows.append(f"<tr><td>{escape(e['campaign'])}</td><td>{e['temperature']:g}</td>"
                    f"<td>{e['steps_burn_in']}</td><td>{e['steps_production']}</td>"
                    f"<td>{pm(e.get('energy_ref_ev'))}</td>"
                    f"<td>{pm(e.get('volume_a3'), fmt='{:.3f}')}</td>"
                    f"<td>{pm(e.get('acceptance'), fmt='{:.3f}')}</td></tr>")
        for c, reason in e.get("failed_chains", {}).items():
            notes.append(f"<li>{escape(e['campaign'])} {escape(c)}: <b>failed</b>: "
                         f"{escape(reason)}</li>")
        for key in ("bias_warning", "note"):
            if e.get(key):
                notes.append(f"<li>{escape(e['campaign'])}: {escape(e[key])}</li>")
    return ("<h2>Production statistics (blocking error bars)</h2><table><tr><th>campaign"
            "</th><th>T (K)</th><th>burn-in steps</th><th>production steps</th>"
            "<th>&lt;E_ref&gt; (eV)</th><th>&lt;V&gt; (A^3)</th><th>acceptance</th></tr>"
            + "".join(rows) + "</table>" + (f"<ul>{''.join(notes)}</ul>" if notes else ""))


def _parity_png(store, version, batch, png, plt, fraction=0.0) -> str:
    """Energy per atom and force components: the model against the labels, coloured by
    source; the bootstrap's few points are drawn last, on top, and held-out labels (never
    trained on; `fraction`: the campaigns' holdout_fraction) get their own marker."""
    import numpy as np

    from nnmd_kernels.model_file import loads
    from orchestrator.slhmc import is_held_out
    from services.trainer.data import store_label_name

    data, _ = store.load_model(version)
    pot = loads(data, source=f"model v{version}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    a = batch.arrays
    groups = {}
    for kind in ("hmc", "mc", "aimd"):
        for k in np.flatnonzero(a["source"] == kind)[-400:]:
            rec = batch.record(int(k))
            s = rec.structure
            name = store_label_name(s.id, rec.provenance.step)
            held = is_held_out(name, fraction)
            try:
                res = pot.compute(s.positions, s.numbers, s.cell, s.pbc)
            except ValueError:  # other species than the model's
                continue
            g = groups.setdefault((kind, held), ([], [], [], []))
            n = len(s.numbers)
            g[0].append(rec.labels.energy / n)
            g[1].append(res.energy / n)
            if rec.labels.forces is not None:
                g[2].append(np.ravel(rec.labels.forces))
                g[3].append(np.ravel(res.forces))
    style = {"hmc": ("tab:blue", "chains (hmc)"), "mc": ("tab:green", "explorers (mc)"),
             "aimd": ("tab:red", "bootstrap (aimd)")}
    for (kind, held), (er, ep, fr, fp) in sorted(
            groups.items(), key=lambda kv: (kv[0][0] == "aimd", kv[0][1])):
        color, name = style[kind]
        marker, size = ("x", 6) if held else ("o", 3)
        lab = name + (", held out" if held else "")
        axes[0].plot(er, ep, marker, ms=size, color=color, label=f"{lab} ({len(er)})",
                     alpha=0.9 if kind == "aimd" else 0.6)
        if fr:
            axes[1].plot(np.concatenate(fr), np.concatenate(fp), marker, ms=size / 2 + 0.5,
                         color=color, label=lab, alpha=0.9 if kind == "aimd" else 0.4)
    for ax, what in ((axes[0], "energy (eV/atom)"), (axes[1], "force component (eV/A)")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.5)
        ax.set(xlabel=f"reference {what}", ylabel=f"model v{version} {what}")
        ax.legend(fontsize=7)
    return png(fig)


def cmd_report(args) -> int:
    from services.store import Store

    out = args.out or ("report.html" if args.format == "html" else None)
    if out is not None:
        out = check_out(out, args.force)
    Store(args.store, read_only=True)  # a missing or foreign store: one clear error
    writer = {"csv": write_csv, "stats": write_stats, "html": write_html}[args.format]
    if out is None:
        writer(args.store, None, args.campaign)
        return 0
    with atomic_path(out) as tmp:
        writer(args.store, tmp, args.campaign)
    if args.format == "html":
        print(f"wrote {out}")
    return 0
