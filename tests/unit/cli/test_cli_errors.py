"""Every command, fed bad input, exits 2 with one line that names the input, prints no
traceback, and leaves every existing file as it was.

Bad inputs: missing paths, directories where files are meant, malformed files (extxyz,
YAML, JSON, .nnmd, ffield.sannp), outputs that exist (no --force), and out-of-range
values. A traceback here is a bug in the command, not a user error.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from nnmd_kernels import Potential
from orchestrator.cli import main

ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with good and bad inputs, and existing outputs that must survive."""
    d = tmp_path_factory.mktemp("cli")
    Potential.random(["Cu"], seed=0, n_radial=6, n_angular=3, r_radial=4.0,
                     r_angular=3.5).save(d / "m.nnmd")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    write(d / "cu.extxyz", atoms)
    (d / "adir").mkdir()
    (d / "bad.extxyz").write_text("3\nnot an extxyz comment line =\nCu 0 0\nCu x y z\n")
    (d / "bad.yaml").write_text("name: [unclosed\n  reference: emt: :\n")
    (d / "bad.json").write_text("{\"max_epochs\": 3,,}")
    (d / "bad.nnmd").write_text("{\"format\": \"nnmd\", garbage")
    (d / "bad.sannp").write_text("this is not\n an ffield.sannp file\n1 2 3\n")
    (d / "exists.nnmd").write_text("precious")
    (d / "exists.extxyz").write_text("precious")
    (d / "exists.html").write_text("precious")
    (d / "afile").write_text("a file where a store folder is meant")
    return d


def snapshot(d: Path) -> dict:
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


CASES = [
    # (id, argv with {d} for the workspace, a word the message must contain)
    ("export-missing", "export {d}/none.nnmd -o {d}/o.sannp", "none.nnmd"),
    ("export-dir", "export {d}/adir -o {d}/o.sannp", "adir"),
    ("export-bad-model", "export {d}/bad.nnmd -o {d}/o.sannp", "bad.nnmd"),
    ("export-out-exists", "export {d}/m.nnmd -o {d}/exists.nnmd", "--force"),
    ("export-out-dir", "export {d}/m.nnmd -o {d}/adir", "adir"),
    ("import-missing", "import {d}/none.sannp -o {d}/o.nnmd", "none.sannp"),
    ("import-bad", "import {d}/bad.sannp -o {d}/o.nnmd", "bad.sannp"),
    ("import-out-exists", "import {d}/bad.sannp -o {d}/exists.nnmd", "exists.nnmd"),
    ("info-missing", "model-info {d}/none.nnmd", "none.nnmd"),
    ("info-dir", "model-info {d}/adir", "adir"),
    ("info-bad", "model-info {d}/bad.nnmd", "bad.nnmd"),
    ("train-missing", "train --data {d}/none.extxyz --out {d}/o.nnmd", "none.extxyz"),
    ("train-bad-extxyz", "train --data {d}/bad.extxyz --out {d}/o.nnmd", "bad.extxyz"),
    ("train-dir-data", "train --data {d}/adir --out {d}/o.nnmd", "adir"),
    ("train-bad-yaml", "train --data {d}/cu.extxyz --config {d}/bad.yaml --out {d}/o.nnmd",
     "bad.yaml"),
    ("train-bad-json", "train --data {d}/cu.extxyz --config {d}/bad.json --out {d}/o.nnmd",
     "bad.json"),
    ("train-config-dir", "train --data {d}/cu.extxyz --config {d}/adir --out {d}/o.nnmd",
     "adir"),
    ("train-out-exists", "train --data {d}/cu.extxyz --out {d}/exists.nnmd", "--force"),
    ("train-out-dir", "train --data {d}/cu.extxyz --out {d}/adir", "adir"),
    ("md-model-missing", "md --model {d}/none.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature 300 --traj {d}/t.extxyz", "none.nnmd"),
    ("md-model-bad", "md --model {d}/bad.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature 300 --traj {d}/t.extxyz", "bad.nnmd"),
    ("md-structure-bad", "md --model {d}/m.nnmd --structure {d}/bad.extxyz --steps 2 "
     "--temperature 300 --traj {d}/t.extxyz", "bad.extxyz"),
    ("md-structure-dir", "md --model {d}/m.nnmd --structure {d}/adir --steps 2 "
     "--temperature 300 --traj {d}/t.extxyz", "adir"),
    ("md-negative-t", "md --model {d}/m.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature -5 --traj {d}/t.extxyz", "temperature"),
    ("md-traj-exists", "md --model {d}/m.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature 300 --traj {d}/exists.extxyz", "--force"),
    ("md-bar", "md --model {d}/m.nnmd --structure {d}/cu.extxyz --steps 2 --ensemble npt "
     "--temperature 300 --pressure 1000bar --traj {d}/t.extxyz", "GPa"),
    ("analyze-missing", "analyze {d}/none.extxyz --species Cu --temperature 300 "
     "--out {d}/an", "none.extxyz"),
    ("analyze-bad", "analyze {d}/bad.extxyz --species Cu --temperature 300 --out {d}/an",
     "bad.extxyz"),
    ("analyze-dir", "analyze {d}/adir --species Cu --temperature 300 --out {d}/an", "adir"),
    ("store-info-missing", "store info {d}/nostore", "nostore"),
    ("store-info-file", "store info {d}/afile", "afile"),
    ("store-import-bad", "store import {d}/bad.extxyz --store {d}/st", "bad.extxyz"),
    ("store-on-a-file", "store import {d}/cu.extxyz --store {d}/afile", "afile"),
    ("convert-missing", "convert {d}/none.extxyz {d}/o.json", "none.extxyz"),
    ("convert-bad", "convert {d}/bad.extxyz {d}/o.json", "bad.extxyz"),
    ("convert-out-exists", "convert {d}/cu.extxyz {d}/exists.extxyz", "--force"),
    ("label-missing", "label --reference emt --in {d}/none.extxyz --out {d}/o.extxyz",
     "none.extxyz"),
    ("label-bad", "label --reference emt --in {d}/bad.extxyz --out {d}/o.extxyz", "bad.extxyz"),
    ("label-out-exists", "label --reference emt --in {d}/cu.extxyz --out {d}/exists.extxyz",
     "--force"),
    ("label-bad-reference", "label --reference nosuch --in {d}/cu.extxyz --out {d}/o.extxyz",
     "nosuch"),
    ("bootstrap-bad-structure", "bootstrap --reference emt --structure {d}/bad.extxyz "
     "--steps 2 --temperature 300 --out {d}/b.extxyz", "bad.extxyz"),
    ("slhmc-structure-missing", "slhmc --store {d}/s1 --structure {d}/none.extxyz",
     "none.extxyz"),
    ("slhmc-structure-bad", "slhmc --store {d}/s1 --structure {d}/bad.extxyz", "bad.extxyz"),
    ("slhmc-hot", "slhmc --store {d}/s1 --structure {d}/cu.extxyz --temperature 1e9",
     "temperature"),
    ("slhmc-pressure", "slhmc --store {d}/s1 --structure {d}/cu.extxyz --ensemble npt "
     "--pressure 1e5", "GPa"),
    ("slhmc-store-is-a-file", "slhmc --store {d}/afile --structure {d}/cu.extxyz", "afile"),
    ("slhmc-train-config-bad", "slhmc --store {d}/s1 --structure {d}/cu.extxyz "
     "--train-config {d}/bad.yaml", "bad.yaml"),
    ("report-missing", "report --store {d}/nostore", "nostore"),
    ("report-out-exists", "report --store {d}/nostore --format html -o {d}/exists.html",
     "exists.html"),
    ("mc-model-missing", "mc --model {d}/none.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature 300", "none.nnmd"),
    ("mc-structure-bad", "mc --model {d}/m.nnmd --structure {d}/bad.extxyz --steps 2 "
     "--temperature 300", "bad.extxyz"),
    ("mc-training-bad", "mc --model {d}/m.nnmd --structure {d}/cu.extxyz --steps 2 "
     "--temperature 300 --training-data {d}/bad.json", "bad.json"),
    ("campaign-missing", "campaign run {d}/none.yaml", "none.yaml"),
    ("campaign-bad-yaml", "campaign run {d}/bad.yaml", "bad.yaml"),
    ("campaign-dir", "campaign run {d}/adir", "adir"),
]


@pytest.mark.parametrize("case, argv, word", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_exit_2_with_one_line(ws, capsys, case, argv, word):
    before = snapshot(ws)
    rc = main(argv.format(d=ws).split())
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    assert word in lines[0], lines[0]
    after = snapshot(ws)
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, f"a failed command changed {changed}"
    # and nothing half-written was left behind
    assert not [k for k in after if k not in before and k.endswith(".tmp")]


def test_unreadable_file_is_exit_2(ws, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads any file; permission errors cannot be produced")
    p = ws / "secret.nnmd"
    p.write_text("x")
    p.chmod(0)
    try:
        assert main(["model-info", str(p)]) == 2
        assert "secret.nnmd" in capsys.readouterr().err
    finally:
        p.chmod(0o600)


def test_version():
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--version"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith("nnmd ")


def test_closed_pipe_is_quiet(ws):
    """`nnmd ... | head -1`: the reader goes away; no BrokenPipeError traceback."""
    cmd = (f"{sys.executable} -m orchestrator.cli convert --help | head -1; "
           f"{sys.executable} -m orchestrator.cli --help | head -1")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True,
                         text=True, cwd=ROOT)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
