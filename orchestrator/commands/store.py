"""`nnmd store info|check|export|import`: look into a Zarr store, check its chunks, move data
in and out as extxyz."""

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
    common(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_info)

    q = sub.add_parser(
        "check",
        help="read every committed chunk; list damaged ones (exit 1) or report clean (exit 0)",
    )
    q.add_argument("dir", nargs="?", default=None, help="store folder or URL (default: --store)")
    common(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_check)

    q = sub.add_parser("export", help="write labelled structures to an extxyz file")
    common(q)
    q.add_argument("output", help="extxyz file to write")
    q.add_argument("--campaign", default=None, help="only this campaign")
    q.add_argument("--start", type=int, default=0, help="first record (default 0)")
    q.add_argument("--stop", type=int, default=None, help="end record, exclusive (default: all)")
    q.set_defaults(func=_export)

    q = sub.add_parser("import", help="append the frames of an extxyz file (source 'import')")
    common(q)
    q.add_argument("input", help="extxyz file to read")
    q.add_argument("--campaign", default="import", help="campaign name to file them under")
    q.add_argument(
        "--reference-settings-hash", default="", help="hash of the settings that made the labels"
    )
    q.set_defaults(func=_import)


def _info(args) -> int:
    from services.store.store import Store

    info = Store(args.store, read_only=True).info()
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
    print(f"store        {url}: {report.arrays} arrays, {report.chunks} committed chunks read")
    if report.unchecksummed:
        print(
            f"no checksums {len(report.unchecksummed)} arrays written before per-chunk crc32c "
            "(only undecodable chunks are found there): " + ", ".join(report.unchecksummed)
        )
    if report.ok:
        print("clean        no damaged chunks")
        return 0
    print(f"DAMAGED      {len(report.damage)} chunk(s):")
    for d in report.damage:
        print(f"  {d.array}: {d.describe()}")
    print(f"to recover: {recovery_hint(url)}")
    return 1


def _export(args) -> int:
    from services.store.extxyz import export_extxyz
    from services.store.store import Store

    n = export_extxyz(
        Store(args.store, read_only=True), args.output, args.start, args.stop, args.campaign
    )
    print(f"wrote {n} structures to {args.output}")
    return 0


def _import(args) -> int:
    from pathlib import Path

    from services.store.extxyz import import_extxyz
    from services.store.store import Store

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input: no file {args.input}")
    with Store(args.store).writer() as writer:
        ids = import_extxyz(writer, args.input, args.campaign, args.reference_settings_hash)
    print(
        f"imported {len(ids)} structures into {args.store}"
        + (f" (records {ids[0]}..{ids[-1]})" if ids else "")
    )
    return 0
