"""`nnmd export`, `nnmd import`, `nnmd model-info`: model files and the ffield.sannp format."""

from __future__ import annotations

import json

from orchestrator.commands._output import add_out, check_out, write_text


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a .nnmd model to another format (ffield.sannp, LAMMPS pair_style nnmd)",
        description="--format sannp: one ffield.sannp file (-o FILE). --format lammps: a folder "
                    "(-o DIR) with nnmd.model, the model for pair_style nnmd (nnmd lammps plugin), "
                    "and in.nnmd, the input lines that load the plugin and the model.")
    p.add_argument("model", help="a model file (.nnmd or ffield.sannp)")
    p.add_argument("--format", choices=["sannp", "lammps"], default="sannp")
    add_out(p, required=True, help="output file (sannp), e.g. ffield.sannp, or folder (lammps)")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="import an ffield.sannp file as a .nnmd model")
    p.add_argument("file", help="an ffield.sannp file")
    add_out(p, required=True, help="output .nnmd model file")
    p.set_defaults(func=_import)

    p = sub.add_parser("model-info", help="print a model's settings and content hash")
    p.add_argument("model")
    p.set_defaults(func=_info)


def _export(args) -> int:
    from nnmd_kernels import Potential
    from nnmd_kernels.sannp import write_sannp

    if args.format == "lammps":
        return _export_lammps(args)
    out = check_out(args.out, args.force)
    pot = Potential.load(args.model)
    write_text(out, write_sannp(pot))
    print(f"wrote {out} (ffield.sannp, {len(pot.species)} elements, {pot.n_models} model(s)); "
          f"use with: pair_style nnp / pair_coeff * * {out.name} {' '.join(pot.species)}")
    return 0


def _export_lammps(args) -> int:
    from pathlib import Path

    from nnmd_kernels import Potential
    from services.md.lammps_plugin import PluginBuildError, input_snippet, model_text, plugin_path

    out = check_out(args.out, args.force, directory=True)
    model_file, snippet_file = out / "nnmd.model", out / "in.nnmd"
    for f in (model_file, snippet_file):
        if f.exists() and not args.force:
            raise ValueError(f"--out {out}: {f.name} exists; add --force to replace it, or choose "
                             "another folder")
    if out.parent != Path("") and not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist")
    pot = Potential.load(args.model)
    text = model_text(pot)
    try:  # the library's path; built or not (nnmd lammps plugin builds it)
        lib = plugin_path(build=False)
        built = lib.exists()
    except PluginBuildError:
        lib, built = Path("nnmdplugin.so"), False
    out.mkdir(exist_ok=True)
    write_text(model_file, text)
    write_text(snippet_file, input_snippet(lib, str(model_file.resolve()), pot.species, pot.coulomb))
    note = "" if built else "; build the plugin first: nnmd lammps plugin"
    print(f"wrote {model_file} and {snippet_file} ({len(pot.species)} elements, {pot.n_models} "
          f"model(s)); in LAMMPS (units metal): include {snippet_file}{note}")
    return 0


def _import(args) -> int:
    from nnmd_kernels.model_file import load_model

    out = check_out(args.out, args.force)
    pot = load_model(args.file)
    digest = pot.save(out)  # written under a temporary name, then renamed
    print(f"wrote {out} (sha256 {digest[:16]})")
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
