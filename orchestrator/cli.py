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
    parser = argparse.ArgumentParser(
        prog="nnmd",
        description="Neural-network potentials from first principles: train, sample, simulate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # User errors: one clear line, no traceback.
        print(f"nnmd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`nnmd report ... | head`): stop quietly, and keep Python
        # from complaining again when it flushes stdout at exit
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
