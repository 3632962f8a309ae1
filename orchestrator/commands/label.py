"""`nnmd label` and `nnmd bootstrap`: the reference on the command line.

label      energy, forces and stress for every structure of any ASE-readable
           file; failed calculations are listed on stderr and never written.
bootstrap  first-principles MD with the reference from a starting structure
           (by default the QE input's own), every frame written as a label with
           provenance 'aimd'.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import ase.io

from services.reference import SPEC_HELP, QEBackend, QEConfig, RetryPolicy, label_all, make_backend
from services.reference.aimd import THERMOSTATS, AIMDConfig, aimd_record, run_aimd
from services.reference.spec import settings_hash


def _add_reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default="emt", metavar="SPEC",
                   help=f"which reference computes the labels: {SPEC_HELP} (default: emt)")
    g = p.add_argument_group("Quantum ESPRESSO (qe:...)")
    g.add_argument("--ranks", type=int, default=1, help="MPI ranks per pw.x run (default 1)")
    g.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads per rank")
    g.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds before one pw.x run is killed (default 3600)")
    g.add_argument("--attempts", type=int, default=3,
                   help="tries per structure; a non-converged SCF is retried with more "
                        "iterations and lower mixing, then more smearing (default 3)")
    g.add_argument("--keep-scratch", choices=("never", "failed", "always"), default="failed",
                   help="keep each run's scratch folder (default: only when it failed)")
    g.add_argument("--scratch", default=None, help="folder for scratch folders (default: $TMPDIR)")


def _backend(args):
    qe = QEConfig(ranks=args.ranks, threads=args.threads, timeout_s=args.timeout,
                  scratch_root=args.scratch, keep=args.keep_scratch,
                  retry=RetryPolicy(attempts=args.attempts))
    try:
        return make_backend(args.reference, qe=qe)
    except ImportError as exc:
        raise ValueError(str(exc)) from exc


def _report_failures(failed, total: int, what: str) -> None:
    for i, f in failed:
        print(f"  {what} {i}: {f}", file=sys.stderr)
    counts = Counter(f.reason.value for _, f in failed)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"{len(failed)} of {total} {what}s failed ({summary}); they are not written",
          file=sys.stderr)


def cmd_label(args) -> int:
    from ase.utils import string2index

    from orchestrator.commands._output import atomic_path, check_out
    from services.trainer.formats import canonical_format, read_structures_for

    out = check_out(args.out, args.force)
    src = Path(args.input)
    fmt = canonical_format(args.from_format) if getattr(args, "from_format", None) else None
    try:
        index = string2index(args.index)
    except ValueError:
        index = None
    if not isinstance(index, (int, slice)) or index == slice(None, None, 0):
        raise ValueError(f"--index {args.index!r}: not an index or slice like 0, -1, :, ::2")
    structures = read_structures_for("--in", src, fmt)
    try:
        structures = structures[index] if isinstance(index, slice) else [structures[index]]
    except IndexError:
        raise ValueError(f"--index {args.index}: {src} has {len(structures)} structures") from None
    backend = _backend(args)
    done, failed = label_all(backend, structures)
    ref_hash = settings_hash(backend)
    for a in done:  # `nnmd store import` keeps it
        a.info["nnmd_reference_settings_hash"] = ref_hash
    if done:
        with atomic_path(out) as tmp:
            ase.io.write(tmp, done, format="extxyz")
    print(f"labelled {len(done)} of {len(structures)} structures with {backend.name} -> "
          f"{out if done else '(nothing written)'}")
    if failed:
        _report_failures(failed, len(structures), "structure")
        return 1
    return 0


def cmd_bootstrap(args) -> int:
    backend = _backend(args)
    if args.structure:
        from services.trainer.formats import read_structure

        atoms = read_structure(args.structure)
    elif isinstance(backend, QEBackend):
        atoms = backend.template.atoms
    else:
        raise ValueError("--structure is required unless --reference is qe:INPUT (then the "
                         "structure of the QE input is used)")
    config = AIMDConfig(temperature_K=args.temperature, steps=args.steps,
                        timestep_fs=args.timestep, thermostat=args.thermostat,
                        friction_per_fs=args.friction, seed=args.seed, interval=args.interval)
    if not args.out and not args.store:
        raise ValueError("give --out FILE.extxyz and/or --store URL for the frames")
    from orchestrator.commands._output import check_out

    out = check_out(args.out, args.force) if args.out else None
    if out is not None and out.exists():
        out.unlink()  # --force: frames are appended as they come
    writer = None
    if args.store:
        from services.store import Store

        writer = Store(args.store).writer()
    ref_hash = settings_hash(backend)

    def write(frame):
        frame.info["nnmd_reference_settings_hash"] = ref_hash
        if out is not None:
            ase.io.write(out, frame, format="extxyz", append=True)
        if writer is not None:  # durable before the next MD step
            writer.append(aimd_record(frame, args.campaign, ref_hash))

    try:
        run = run_aimd(backend, atoms, config, on_frame=write)
    finally:
        if writer is not None:
            writer.close()
    where = " and ".join(x for x in (str(out) if out else "",
                                     f"{args.store} (campaign {args.campaign})"
                                     if args.store else "") if x)
    print(f"bootstrap: {len(run.frames)} frames ({config.thermostat}, "
          f"{config.temperature_K:g} K, {config.timestep_fs:g} fs) with {backend.name} -> {where}")
    if run.failure is not None:
        print(f"stopped early at step {len(run.frames) * config.interval}: {run.failure}",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("label", help="label structures with the reference (E, F, stress)",
                              description=cmd_label.__doc__ or __doc__)
    p.add_argument("--in", dest="input", required=True, metavar="FILE",
                   help="structures: any format ASE reads (extxyz, POSCAR, .pwi, ...), mlearn JSON, "
                        "n2p2 input.data, a DeePMD folder or a store")
    p.add_argument("--from", dest="from_format", default=None, metavar="FORMAT",
                   help="format of --in (default: detected)")
    p.add_argument("-o", "--out", required=True, metavar="OUT.extxyz", help="labelled structures")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--index", default=":", help="which structures of --in (ASE index, default ':')")
    _add_reference_args(p)
    p.set_defaults(func=cmd_label)

    b = subparsers.add_parser("bootstrap", help="first-principles MD with the reference -> "
                              "labelled frames (provenance aimd)")
    b.add_argument("--structure", default=None, metavar="FILE",
                   help="starting structure (default: the QE input's own structure)")
    b.add_argument("--steps", type=int, default=200, help="MD steps (default 200)")
    b.add_argument("--temperature", type=float, required=True, help="temperature in K")
    b.add_argument("--timestep", type=float, default=1.0, help="time step in fs (default 1.0)")
    b.add_argument("--thermostat", choices=THERMOSTATS, default="langevin")
    b.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs")
    b.add_argument("--interval", type=int, default=1, help="write every n-th frame")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("-o", "--out", default=None, metavar="OUT.extxyz", help="write frames here")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--store", default=None, metavar="URL",
                   help="also append frames to this Zarr store (folder or fsspec URL)")
    b.add_argument("--campaign", default="bootstrap", help="campaign name in the store")
    _add_reference_args(b)
    b.set_defaults(func=cmd_bootstrap)
