"""`nnmd convert IN OUT`: labelled structures from one format to another.

Reads extxyz (and anything ASE reads), mlearn JSON, n2p2 input.data, DeePMD folders and
nnmd stores; writes extxyz, mlearn JSON, n2p2 input.data and the formats ASE writes. The
formats come from the names (and the first bytes of IN) unless --from/--to give them.
An existing OUT is replaced only with --force; OUT is written under a temporary name in
its folder and renamed at the end, so a failed conversion leaves no partial file.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    from services.trainer.formats import FORMATS_HELP

    p = sub.add_parser("convert", help="convert labelled structures between formats (extxyz, "
                       "mlearn JSON, n2p2 input.data, DeePMD, store)", description=__doc__)
    p.add_argument("input", metavar="IN", help="file, DeePMD folder or store (DIR, URL, URL#campaign)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--from", dest="from_format", default=None, metavar="FORMAT",
                   help=f"format of IN (default: detected). {FORMATS_HELP}")
    p.add_argument("--to", dest="to_format", default=None, metavar="FORMAT",
                   help="format of OUT (default: from its name: .xyz/.extxyz extxyz, .json mlearn, "
                        "input.data/.data n2p2, else ASE's guess)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from orchestrator.commands._output import check_out
    from services.trainer.formats import (
        canonical_format,
        detect_format,
        lost_labels,
        read_structures,
        write_structures,
    )

    out = check_out(args.output, args.force, "OUT")  # never clobbered without --force
    to_fmt = canonical_format(args.to_format) if args.to_format else detect_format(
        out, for_writing=True)
    from_fmt = canonical_format(args.from_format) if args.from_format else detect_format(args.input)
    frames = read_structures(args.input, from_fmt)
    n = write_structures(frames, out, to_fmt)  # a temporary file, renamed when complete
    print(f"converted {n} structures: {args.input} ({from_fmt}) -> {out} ({to_fmt})")
    for label, count in lost_labels(frames, to_fmt).items():
        print(f"note: the {label} of {count} structures is not written ({to_fmt} has no {label})",
              file=sys.stderr)
    return 0
