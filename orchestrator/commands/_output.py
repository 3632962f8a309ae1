"""Output files of every command: `-o/--out PATH`, never clobbered without `--force`,
written under a temporary name in the same folder and renamed when complete, so a
command that fails leaves every existing file as it was and no partial file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def add_out(parser, *, required: bool = False, default=None, help: str = "output file",
            metavar: str = "PATH", force: bool = True) -> None:
    """-o/--out (and the older --output spelling) plus --force."""
    parser.add_argument("-o", "--out", "--output", dest="out", required=required,
                        default=default, metavar=metavar, help=help)
    if force:
        parser.add_argument("--force", action="store_true",
                            help="replace the output if it exists")


def check_out(path, force: bool, option: str = "--out", directory: bool = False) -> Path:
    """The output path, refused (ValueError, exit 2) when it exists and --force is not
    given, when it is a directory where a file is meant (or the reverse), or when its
    folder does not exist."""
    p = Path(path)
    if directory:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option} {p}: is a file; give a folder")
        return p
    if p.is_dir():
        raise ValueError(f"{option} {p}: is a directory; give a file name")
    if p.exists() and not force:
        raise ValueError(f"{option} {p} exists; add --force to replace it, or choose "
                         "another name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{option} {p}: the folder {parent} does not exist")
    return p


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path next to `path`; renamed onto `path` when the block succeeds,
    removed when it fails."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path) -> Iterator[Path]:
    """A temporary folder next to `path`, moved onto `path` when the block succeeds (an
    existing `path` is replaced only then), removed when it fails."""
    p = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or "."))
    try:
        yield tmp
        if p.exists():
            old = p.with_name(f".{p.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(p, old)
            os.replace(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
