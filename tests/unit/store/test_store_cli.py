"""`nnmd store info|export|import` and the extxyz round trip."""

from __future__ import annotations

import json

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from store_records import make_record

from orchestrator.cli import main
from services.store.extxyz import export_extxyz, import_extxyz
from services.store.store import Store


def _labelled_frames(n=3):
    frames = []
    for k in range(n):
        atoms = bulk("Cu", cubic=True) * (1, 1, 1 + k)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(atoms)
    return frames


def test_extxyz_round_trip(tmp_path):
    src = tmp_path / "in.xyz"
    frames = _labelled_frames()
    ase.io.write(src, frames, format="extxyz")
    store = Store(tmp_path / "s")
    with store.writer() as w:
        assert import_extxyz(w, src, campaign="demo") == [0, 1, 2]
        w.append(make_record(0, 1))
    out = tmp_path / "out.xyz"
    assert export_extxyz(store, out, campaign="demo") == 3
    back = ase.io.read(out, index=":")
    for a, b in zip(frames, back):
        # extxyz writes per-atom columns with 8 decimals (ASE's format), scalars in full
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-8)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        assert a.get_potential_energy() == b.get_potential_energy()
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=1e-15, atol=0)
        assert b.info["nnmd_source"] == "import" and b.info["nnmd_campaign"] == "demo"
    rec = store.read(0, 1).record(0)
    assert (
        rec.provenance.source == "import"
        and rec.provenance.chain == "in"
        and rec.provenance.step == 0
    )


def test_cli(tmp_path, capsys):
    src = tmp_path / "frames.xyz"
    ase.io.write(src, _labelled_frames(2), format="extxyz")
    url = str(tmp_path / "s")
    assert main(["store", "import", str(src), "--store", url, "--campaign", "c1"]) == 0
    assert main(["store", "info", "--store", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["structures"] == 2 and info["campaigns"] == {"c1": 2}
    assert main(["store", "info", "--store", url]) == 0
    assert "structures   2" in capsys.readouterr().out
    out = tmp_path / "out.xyz"
    assert main(["store", "export", str(out), "--store", url]) == 0
    assert len(ase.io.read(out, index=":")) == 2
    # user errors: one line, exit code 2
    assert main(["store", "info", "--store", str(tmp_path / "missing")]) == 2
    assert main(["store", "import", str(src), "--store", url, "--campaign", "../evil"]) == 2
    assert "campaign" in capsys.readouterr().err
