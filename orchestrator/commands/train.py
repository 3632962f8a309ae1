"""`nnmd train`: fit a potential to labelled structures."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("train", help="train a potential on energies and forces",
                       description="Train a Behler-Parrinello potential. Data: extxyz (or any ASE-readable "
                                   "file with energies and forces), mlearn JSON, n2p2 input.data, a DeePMD "
                                   "folder, or an nnmd store (DIR or URL, optionally URL#campaign); the "
                                   "format of each is detected (see docs/training.md, Data formats).")
    p.add_argument("--data", nargs="+", required=True, help="training data files, folders or stores")
    p.add_argument("--test", nargs="*", default=[], help="held-out test data (reported, never trained on)")
    p.add_argument("--format", dest="data_format", default=None, metavar="FORMAT",
                   help="format of every --data/--test file instead of detecting it: extxyz, mlearn, "
                        "n2p2, deepmd, store or an ase.io format name")
    p.add_argument("-o", "--out", dest="out", required=True, help="output model file (.nnmd)")
    p.add_argument("--force", action="store_true", help="replace the output model if it exists")
    p.add_argument("--config", help="YAML/JSON of training settings (TrainConfig fields)")
    p.add_argument("--init", help="warm start from this model (keeps its descriptor and baseline)")
    p.add_argument("--report-dir", help="where metrics.json and plots go (default: <out>_training/)")
    p.add_argument("--epochs", type=int, help="override max_epochs")
    p.add_argument("--models", type=int, help="override n_models (ensemble size)")
    p.add_argument("--seed", type=int, help="override seed")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from nnmd_kernels import Potential
    from orchestrator.commands._output import check_out
    from services.trainer.data import read_training_data
    from services.trainer.formats import canonical_format
    from services.trainer.run import load_config, run_training

    check_out(args.out, args.force)  # before hours of training, not after
    overrides = {k: v for k, v in (("max_epochs", args.epochs), ("n_models", args.models), ("seed", args.seed))
                 if v is not None}
    cfg = load_config(args.config, overrides)
    fmt = canonical_format(args.data_format) if args.data_format else None
    data = read_training_data(args.data, fmt)
    test = read_training_data(args.test, fmt) if args.test else None
    init = Potential.load(args.init) if args.init else None
    _, metrics = run_training(data, args.out, cfg, init=init, test_structures=test, report_dir=args.report_dir,
                              progress=not args.no_progress)
    print(json.dumps({"model": metrics["model"], "train_seconds": round(metrics["train_seconds"], 1),
                      **metrics["errors"]}, indent=2))
    return 0
