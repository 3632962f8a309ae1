"""The `nnmd` command line.

Each sub-command lives in its own module under ``orchestrator/commands``; a module
exposes ``register(subparsers)`` which adds its parser and sets ``func`` (a
callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Adding a command means adding a module and one line to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in `nnmd --help`.
COMMAND_MODULES = [
    "orchestrator.commands.model",  # export, import, info
    "orchestrator.commands.train",  # fit a potential
    "orchestrator.commands.md",  # production MD: native engine or LAMMPS
    "orchestrator.commands.lammps",  # lammps plugin: build pair_style nnmd
    "orchestrator.commands.analyze",  # MSD, D, Nernst-Einstein sigma, RDF
    "orchestrator.commands.store",  # info, export, import (extxyz)
    "orchestrator.commands.convert",  # extxyz, mlearn JSON, n2p2, DeePMD, store -> files
    "orchestrator.commands.serve",  # run one service as a gRPC server
    "orchestrator.commands.label",  # label, bootstrap (reference: QE, EMT, ...)
    "orchestrator.commands.slhmc",  # slhmc, demo, report
    "orchestrator.commands.mc",  # Metropolis MC with a model; unknown structures
    "orchestrator.commands.campaign",  # campaign run/start/status/watch/stop/export
]


def build_parser() -> argparse.ArgumentParser:
    from nnmd_kernels import __version__

    parser = argparse.ArgumentParser(
        prog="nnmd",
        description="Neural-network potentials from first principles: train, sample, simulate.",
        epilog="Exit codes: 0 done; 2 a user error (one line on stderr names the input and "
               "the fix); 3 a run stopped by a physical guard (nnmd md); anything else "
               "with a traceback is a bug.",
    )
    parser.add_argument("--version", action="version", version=f"nnmd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _os_error_text(exc: OSError) -> str:
    """A missing, unreadable or wrong-kind path as one line that says what to do."""
    what = {FileNotFoundError: "no such file or directory",
            IsADirectoryError: "is a directory, not a file",
            NotADirectoryError: "is not a directory (or a parent is a file)",
            PermissionError: "permission denied",
            FileExistsError: "already exists"}.get(type(exc), exc.strerror or str(exc))
    name = exc.filename if exc.filename is not None else ""
    if not name:
        return str(exc)
    return f"{name}: {what}" + (" (give a readable path)" if isinstance(
        exc, (PermissionError, IsADirectoryError, NotADirectoryError)) else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
            FileExistsError) as exc:
        msg = _os_error_text(exc) if exc.filename is not None else str(exc)
        print(f"nnmd {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except ValueError as exc:
        # User errors: one clear line, no traceback (service errors are ValueErrors too).
        print(f"nnmd {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnmd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`nnmd report ... | head`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
