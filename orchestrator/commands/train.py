"""`nnmd train`: fit a potential to labelled structures; `nnmd test`: its errors on data."""

from __future__ import annotations

import json


def register(sub) -> None:
    from services.trainer.run import PRESETS

    presets = "; ".join(f"{k}: " + (", ".join(f"{kk}={json.dumps(vv)}" for kk, vv in v.items()) or
                                    "TrainConfig's defaults") for k, v in PRESETS.items())
    p = sub.add_parser("train", help="train a potential on energies and forces",
                       description="Train a Behler-Parrinello potential. Data: extxyz (or any ASE-readable "
                                   "file with energies and forces), mlearn JSON, n2p2 input.data, a DeePMD "
                                   "folder, or an nnmd store (DIR or URL, optionally URL#campaign); the "
                                   "format of each is detected (see docs/training.md, Data formats). "
                                   "Settings, in increasing precedence: --preset, --config, the flags "
                                   "below. The expected time is printed before training starts; a "
                                   "checkpoint is written into the report folder every checkpoint_every "
                                   "iterations, and --resume continues from it.",
                       epilog=f"presets: {presets}. Every other setting: TrainConfig's default "
                              "(docs/training.md, Settings).")
    p.add_argument("--data", nargs="+", help="training data files, folders or stores (required unless --resume)")
    p.add_argument("--test", nargs="*", default=[], help="held-out test data (reported, never trained on; "
                                                        "default: none)")
    p.add_argument("--format", dest="data_format", default=None, metavar="FORMAT",
                   help="format of every --data/--test file instead of detecting it: extxyz, mlearn, "
                        "n2p2, deepmd, store or an ase.io format name (default: detected per file)")
    p.add_argument("-o", "--out", dest="out", help="output model file (.nnmd; required unless --resume)")
    p.add_argument("--force", action="store_true", help="replace the output model if it exists (default: refuse)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a set of settings (listed below); --config and flags override it "
                        "(default: none, i.e. TrainConfig's defaults, as 'default')")
    p.add_argument("--config", help="YAML/JSON of training settings (TrainConfig fields; default: none)")
    p.add_argument("--init", help="warm start from this model (keeps its descriptor and baseline; default: "
                                  "random initial networks)")
    p.add_argument("--report-dir", help="where metrics.json, plots and checkpoints go (default: <out>_training/)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the interrupted training whose report folder is DIR, from its last "
                        "checkpoint, with the data and settings it started with (default: start afresh)")
    p.add_argument("--epochs", type=int, help="override max_epochs (default: the preset's or config's, else 300)")
    p.add_argument("--models", type=int, help="override n_models, the ensemble size (default: preset/config, "
                                              "else 1)")
    p.add_argument("--seed", type=int, help="override seed (default: preset/config, else 0)")
    p.add_argument("--batch-structures", help="override batch_structures: 'auto', 0 (full batch) or "
                                              "structures per mini-batch (default: preset/config, else auto)")
    p.add_argument("--checkpoint-every", type=int, help="override checkpoint_every, iterations between "
                                                        "checkpoints (default: preset/config, else 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    p.set_defaults(func=_train)
    register_test(sub)


def _train(args) -> int:
    from pathlib import Path

    from nnmd_kernels import Potential
    from nnmd_kernels.training import CHECKPOINT, TrainConfig
    from orchestrator.commands._output import check_out
    from services.trainer.data import read_training_data
    from services.trainer.formats import canonical_format
    from services.trainer.run import INVOCATION, load_config, run_training

    if args.resume:
        rdir = Path(args.resume)
        inv_path = rdir / INVOCATION
        if not inv_path.is_file():
            raise ValueError(f"--resume {rdir}: no {INVOCATION} there (not the report folder of an nnmd train run)")
        inv = json.loads(inv_path.read_text())
        cfg = TrainConfig.from_dict(inv["config"])
        resume = (rdir / CHECKPOINT).is_file()
        if not resume:
            print(f"--resume {rdir}: no checkpoint yet; training from the start", flush=True)
        data_paths, test_paths, fmt_name = inv["data"], inv.get("test") or [], inv.get("format")
        out, init_path, report_dir = inv["out"], inv.get("init"), str(rdir)
    else:
        if not args.data or not args.out:
            raise ValueError("train: --data and --out are required (or --resume DIR)")
        check_out(args.out, args.force)  # before hours of training, not after
        bs = args.batch_structures
        if bs is not None and bs != "auto":
            try:
                bs = int(bs)
            except ValueError:
                raise ValueError(f"--batch-structures {bs}: 'auto' or a number >= 0") from None
        overrides = {k: v for k, v in (("max_epochs", args.epochs), ("n_models", args.models),
                                       ("seed", args.seed), ("batch_structures", bs),
                                       ("checkpoint_every", args.checkpoint_every)) if v is not None}
        cfg = load_config(args.config, overrides, preset=args.preset)
        data_paths, test_paths, fmt_name = list(args.data), list(args.test or []), args.data_format
        out, init_path, report_dir, resume = args.out, args.init, args.report_dir, False
        if report_dir is None:
            report_dir = str(Path(out).with_name(Path(out).stem + "_training"))
    fmt = canonical_format(fmt_name) if fmt_name else None
    data = read_training_data(data_paths, fmt)
    test = read_training_data(test_paths, fmt) if test_paths else None
    init = Potential.load(init_path) if init_path else None
    invocation = {"data": [str(Path(p).resolve()) if Path(p).exists() else p for p in data_paths],
                  "test": [str(Path(p).resolve()) if Path(p).exists() else p for p in test_paths],
                  "format": fmt_name, "out": str(Path(out).resolve()),
                  "init": str(Path(init_path).resolve()) if init_path else None}
    _, metrics = run_training(data, out, cfg, init=init, test_structures=test, report_dir=report_dir,
                              progress=not args.no_progress, resume=resume, invocation=invocation)
    print(json.dumps({"model": metrics["model"], "train_seconds": round(metrics["train_seconds"], 1),
                      **metrics["errors"]}, indent=2))
    return 0


def register_test(sub) -> None:
    p = sub.add_parser(
        "test", help="a model's energy, force and stress errors on labelled data",
        description="Evaluate MODEL on labelled DATA (extxyz, mlearn JSON, n2p2, DeePMD, an nnmd "
                    "store: the formats of nnmd train): errors overall and per group, the worst "
                    "structures, parity plots and, for ensembles, the predicted spread against "
                    "the actual error. Exit 2 when DATA holds elements the model lacks or "
                    "structures without an energy.")
    p.add_argument("model", help="the model (.nnmd, or ffield.sannp)")
    p.add_argument("data", nargs="+", help="labelled data files, folders or stores")
    p.add_argument("--format", dest="data_format", default=None, metavar="FORMAT",
                   help="format of every DATA file instead of detecting it")
    p.add_argument("--group-by", default=None, metavar="KEY",
                   help="group errors by this per-structure key (default: extxyz config_type or "
                        "mlearn group when present; 'file' groups by DATA file)")
    p.add_argument("--worst", type=int, default=10, metavar="N",
                   help="list the N structures with the largest errors (default 10)")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE",
                   help="write every number as JSON (overall.energy_rmse_mev_per_atom, "
                        "overall.force_rmse_mev_per_angstrom, groups, worst, calibration)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write parity plots (energy, forces, stress) and the ensemble "
                        "calibration plot into DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    p.set_defaults(func=_test)


DEFAULT_GROUP_KEYS = ("config_type", "group")


def _test(args) -> int:
    from nnmd_kernels.model_file import load_model
    from orchestrator.commands._output import atomic_path, check_out
    from services.trainer.data import atoms_to_structure
    from services.trainer.evaluate import evaluate, plot, predict
    from services.trainer.formats import canonical_format, labels_of, read_structures_for

    if args.worst < 0:
        raise ValueError(f"--worst {args.worst}: must be >= 0")
    if args.json_out:
        check_out(args.json_out, args.force, option="--json")
    pot = load_model(args.model)
    fmt = canonical_format(args.data_format) if args.data_format else None
    species = set(pot.species)
    structures, groups = [], []
    for path in args.data:
        frames = read_structures_for("DATA", path, fmt)
        if not frames:
            raise ValueError(f"DATA {path}: no structures")
        for k, a in enumerate(frames):
            where = f"DATA {path}, structure {k}"
            missing = sorted(set(a.get_chemical_symbols()) - species)
            if missing:
                raise ValueError(f"{where}: element(s) {', '.join(missing)} not in the model "
                                 f"{args.model} (its elements: {', '.join(pot.species)}); test "
                                 "it on data of its own elements")
            if labels_of(a)[0] is None:
                raise ValueError(f"{where}: no energy (unlabelled); label it first (nnmd "
                                 "label) or test on labelled data")
            structures.append(atoms_to_structure(a, f"{path}[{k}]"))
            groups.append(_group_of(a, args.group_by, path))
    rows = predict(pot, structures)
    result = {"model": str(args.model), "data": list(args.data), "n_models": pot.n_models,
              **evaluate(pot, structures, groups, n_worst=args.worst, rows=rows)}
    if args.plots:
        result["plots"] = plot(rows, groups, args.plots)
    _print_test(result)
    if args.json_out:
        with atomic_path(args.json_out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json_out}")
    return 0


def _group_of(a, key: str | None, path) -> str:
    if key == "file":
        return str(path)
    for k in (key,) if key else DEFAULT_GROUP_KEYS:
        v = a.info.get(k)
        if v is not None and v != "":
            return str(v)
    return ""


def _fmt(d: dict, key: str, spec: str = "{:.2f}") -> str:
    v = d.get(key)
    return "-" if v is None else spec.format(v)


def _print_test(result: dict) -> None:
    rows = [("all", result["overall"])] + list((result.get("groups") or {}).items())
    stress = any("stress_rmse_gpa" in d for _, d in rows)
    width = max(12, *(len(name) for name, _ in rows))
    head = (f"{'group':<{width}} {'structs':>7} {'atoms':>7} {'E RMSE':>8} {'E MAE':>8} "
            f"{'F RMSE':>8} {'F MAE':>8} {'F max':>8}" + (f" {'S RMSE':>8}" if stress else ""))
    print(head)
    print(f"{'':<{width}} {'':>7} {'':>7} {'meV/at':>8} {'meV/at':>8} {'meV/A':>8} {'meV/A':>8} "
          f"{'meV/A':>8}" + (f" {'GPa':>8}" if stress else ""))
    for name, d in rows:
        print(f"{name:<{width}} {d['n_structures']:>7} {d['n_atoms']:>7} "
              f"{_fmt(d, 'energy_rmse_mev_per_atom'):>8} {_fmt(d, 'energy_mae_mev_per_atom'):>8} "
              f"{_fmt(d, 'force_rmse_mev_per_angstrom', '{:.1f}'):>8} "
              f"{_fmt(d, 'force_mae_mev_per_angstrom', '{:.1f}'):>8} "
              f"{_fmt(d, 'force_max_mev_per_angstrom', '{:.0f}'):>8}"
              + (f" {_fmt(d, 'stress_rmse_gpa', '{:.3f}'):>8}" if stress else ""))
    worst = result.get("worst") or {}
    if worst.get("energy"):
        print("largest energy errors: " + "; ".join(
            f"{w['name']} {w['error_mev_per_atom']:.2f} meV/atom" for w in worst["energy"][:3]))
    if worst.get("force"):
        print("largest force errors: " + "; ".join(
            f"{w['name']} {w['max_atom_error_mev_per_angstrom']:.0f} meV/A"
            for w in worst["force"][:3]))
    cal = result.get("calibration")
    if cal:
        print(f"ensemble ({result['n_models']} models): mean spread "
              f"{cal['mean_spread_mev_per_atom']:.2f} meV/atom; within 1 sigma "
              f"{_fmt(cal, 'within_1_sigma')}, 2 sigma {_fmt(cal, 'within_2_sigma')}; rank "
              f"correlation of spread and error {_fmt(cal, 'spearman_spread_error')}")
