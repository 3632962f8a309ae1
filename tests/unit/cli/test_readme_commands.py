"""The README's command lines work as written.

Every `nnmd ...` line of the README's shell blocks must parse (a wrong flag or a missing
argument fails here, not in a new user's terminal). The cheap ones run for real, in a
workspace holding the files they name: a model, a labelled data set and a store.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from nnmd_kernels import Potential
from orchestrator.cli import build_parser, main

README = Path(__file__).parents[3] / "README.md"
CHEAP = ("export", "import", "model-info", "convert", "store", "label")  # report needs a campaign


def readme_commands() -> list[str]:
    text = README.read_text()
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for part in re.split(r"\s*(?:&&|;)\s*", line.split(" #")[0].strip()):
                part = part.strip().rstrip("&").strip()
                if part.startswith("nnmd "):
                    out.append(part)
    return out


COMMANDS = readme_commands()


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 15
    assert any(c.startswith("nnmd slhmc") for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_parses(line):
    argv = [a for a in shlex.split(line)[1:] if not (a.startswith("[") or a.endswith("]"))]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line does not parse ({exc.code}): {line}")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Potential.random(["Cu"], seed=0, n_radial=6, n_angular=3, r_radial=4.0,
                     r_angular=3.5).save(tmp_path / "model.nnmd")
    frames = []
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = bulk("Cu", "fcc", a=3.61, cubic=True)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = EMT()
        a.get_forces()
        frames.append(a)
    write(tmp_path / "labelled.extxyz", frames)
    write(tmp_path / "structures.extxyz", frames)
    assert main(["store", "import", "labelled.extxyz", "--store", "./store"]) == 0
    return tmp_path


def test_the_cheap_readme_commands_run(workspace, capsys):
    ran = []
    for line in COMMANDS:
        argv = shlex.split(line)[1:]
        if argv[0] not in CHEAP or "qe:" in line:  # QE labelling is not cheap
            continue
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 0, f"{line}: exit {rc}: {err}"
        ran.append(argv[0])
    assert {"export", "import", "model-info", "convert", "store"} <= set(ran), ran
    assert (workspace / "imported.nnmd").is_file() and (workspace / "input.data").is_file()
