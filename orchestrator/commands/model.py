"""`nnmd export`, `nnmd import`, `nnmd model-info`: model files and the ffield.sannp format."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export a .nnmd model to another format (ffield.sannp)")
    p.add_argument("model", help="a .nnmd model file")
    p.add_argument("--format", choices=["sannp"], default="sannp")
    p.add_argument("-o", "--output", required=True, help="output file, e.g. ffield.sannp")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="import an ffield.sannp file as a .nnmd model")
    p.add_argument("file", help="an ffield.sannp file")
    p.add_argument("-o", "--output", required=True, help="output .nnmd model file")
    p.set_defaults(func=_import)

    p = sub.add_parser("model-info", help="print a model's settings and content hash")
    p.add_argument("model")
    p.set_defaults(func=_info)


def _export(args) -> int:
    from nnmd_kernels import Potential
    from nnmd_kernels.sannp import write_sannp

    pot = Potential.load(args.model)
    Path(args.output).write_text(write_sannp(pot))
    print(f"wrote {args.output} (ffield.sannp, {len(pot.species)} elements, {pot.n_models} model(s)); "
          f"use with: pair_style nnp / pair_coeff * * {Path(args.output).name} {' '.join(pot.species)}")
    return 0


def _import(args) -> int:
    from nnmd_kernels.model_file import load_model

    pot = load_model(args.file)
    digest = pot.save(args.output)
    print(f"wrote {args.output} (sha256 {digest[:16]})")
    return 0


def _info(args) -> int:
    from nnmd_kernels import Potential

    pot = Potential.load(args.model)
    info = {
        "species": list(pot.species),
        "descriptor": pot.descriptor.to_dict(),
        "n_features": pot.descriptor.n_features,
        "hidden": list(pot.networks[0].hidden),
        "activation": pot.activation,
        "n_models": pot.n_models,
        "delta_baseline": pot.baseline is not None,
        "cutoff": pot.cutoff,
        "sha256": pot.content_hash,
        "metadata": pot.metadata,
    }
    print(json.dumps(info, indent=2))
    return 0
