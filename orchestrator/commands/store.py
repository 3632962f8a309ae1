"""`nnmd store info|check|export|import`: look into a Zarr store, check its chunks, move data
out as extxyz and in from any format the reader knows (services/trainer/formats.py)."""

from __future__ import annotations

import argparse
import json

from services.store.store import DEFAULT_STORE_URL


def register(subparsers) -> None:
    p = subparsers.add_parser("store", help="inspect a dataset store; import/export extxyz")
    sub = p.add_subparsers(dest="store_command", metavar="ACTION")
    sub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--store",
            default=DEFAULT_STORE_URL,
            help="store folder or fsspec URL (default: $NNMD_STORE or ./nnmd-store)",
        )

    q = sub.add_parser("info", help="counts of structures, campaigns, models, trajectories")
    q.add_argument("dir", nargs="?", default=None, help="store folder or URL (default: --store)")
    common(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_info)

    q = sub.add_parser(
        "check",
        help="read every committed chunk and log segment; check every row is there once and "
        "the leases; list problems (exit 1) or report clean (exit 0)",
    )
    q.add_argument("dir", nargs="?", default=None, help="store folder or URL (default: --store)")
    common(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_check)

    q = sub.add_parser("export", help="write labelled structures to an extxyz file")
    common(q)
    q.add_argument("output", nargs="?", default=None, help="extxyz file to write (or -o)")
    q.add_argument("-o", "--out", dest="out", default=None, metavar="PATH",
                   help="extxyz file to write")
    q.add_argument("--force", action="store_true", help="replace the output if it exists")
    q.add_argument("--campaign", default=None, help="only this campaign")
    q.add_argument("--start", type=int, default=0, help="first record (default 0)")
    q.add_argument("--stop", type=int, default=None, help="end record, exclusive (default: all)")
    q.set_defaults(func=_export)

    q = sub.add_parser(
        "import",
        help="append labelled structures (extxyz, mlearn JSON, n2p2 input.data, DeePMD, ...) "
        "with source 'import'",
    )
    common(q)
    q.add_argument(
        "input",
        help="file to read: extxyz (or anything ASE reads), mlearn JSON, n2p2 input.data, "
        "a DeePMD folder, or another store",
    )
    q.add_argument(
        "--from",
        dest="from_format",
        default=None,
        metavar="FORMAT",
        help="format of the input (default: detected)",
    )
    q.add_argument("--campaign", default="import", help="campaign name to file them under")
    q.add_argument(
        "--reference-settings-hash", default="", help="hash of the settings that made the labels"
    )
    q.set_defaults(func=_import)


def _info(args) -> int:
    from services.store.store import Store

    info = Store(args.dir or args.store, read_only=True).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store        {info['url']} (schema {info['schema']})")
    print(f"structures   {info['structures']} ({info['atoms']} atoms)")
    for name, n in info.get("campaigns", {}).items():
        print(f"  campaign   {name or '(none)'}: {n}")
    print(f"models       {info['models'][-1] if info['models'] else 'none'} (latest version)")
    for name, n in info["trajectories"].items():
        print(f"trajectory   {name}: {n} frames")
    return 0


def _check(args) -> int:
    from services.store.integrity import recovery_hint
    from services.store.store import Store

    url = args.dir or args.store
    report = Store(url, read_only=True).check()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    print(f"store        {url}: {report.records} records, {report.arrays} arrays, "
          f"{report.chunks} committed chunks, {report.segments} log segments read")
    if report.unchecksummed:
        print(
            f"no checksums {len(report.unchecksummed)} arrays written before per-chunk crc32c "
            "(only undecodable chunks are found there): " + ", ".join(report.unchecksummed)
        )
    for note in report.notes:
        print(f"note         {note}")
    if report.ok:
        print("clean        no damaged chunks, every row once, leases sane")
        return 0
    for problem in report.problems:
        print(f"PROBLEM      {problem}")
    if report.damage:
        print(f"DAMAGED      {len(report.damage)} chunk(s):")
        for d in report.damage:
            print(f"  {d.array}: {d.describe()}")
        print(f"to recover: {recovery_hint(url)}")
    return 1


def _export(args) -> int:
    from orchestrator.commands._output import atomic_path, check_out
    from services.store.extxyz import export_extxyz
    from services.store.store import Store

    if args.output and args.out and args.output != args.out:
        raise ValueError("give the output file once (OUTPUT or -o/--out)")
    if not (args.output or args.out):
        raise ValueError("give the extxyz file to write (-o FILE)")
    out = check_out(args.output or args.out, args.force)
    store = Store(args.store, read_only=True)
    with atomic_path(out) as tmp:
        n = export_extxyz(store, str(tmp), args.start, args.stop, args.campaign)
    print(f"wrote {n} structures to {out}")
    return 0


def _import(args) -> int:
    from pathlib import Path

    from services.runtime.convert import from_atoms
    from services.store.store import Provenance, Record, Store, safe_name
    from services.trainer.formats import canonical_format, read_structures

    fmt = canonical_format(args.from_format) if args.from_format else None
    try:
        frames = read_structures(args.input, fmt)
    except FileNotFoundError:
        raise FileNotFoundError(f"input: no file {args.input}") from None
    chain = safe_name(
        Path(args.input.split("#")[0].rstrip("/")).stem.replace(" ", "_") or "file", "chain"
    )
    # the store is opened (created) before the names are checked, as it always was
    with Store(args.store).writer() as writer:
        safe_name(args.campaign, "campaign")
        records = [
            Record(
                *from_atoms(atoms),
                Provenance(
                    campaign=args.campaign,
                    chain=chain,
                    step=k,
                    source="import",
                    reference_settings_hash=args.reference_settings_hash
                    or str(atoms.info.get("nnmd_reference_settings_hash", "")),
                ),
            )
            for k, atoms in enumerate(frames)
        ]
        ids = writer.append(records) if records else []
    print(
        f"imported {len(ids)} structures into {args.store}"
        + (f" (records {ids[0]}..{ids[-1]})" if ids else "")
    )
    return 0
