"""Model files (.nnmd) and the ffield.sannp format: exact round trips, refusals, CLI, ASE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kernels_testlib import SMALL, SPECIES4, jittered_cell, random_numbers

from nnmd_kernels import Potential
from nnmd_kernels.sannp import read_sannp, write_sannp
from orchestrator.cli import main as cli


@pytest.fixture()
def structure():
    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=21)
    return pos, random_numbers(len(pos), seed=9), cell


def test_nnmd_round_trip_is_exact(tmp_path, pot4, structure):
    pos, nums, cell = structure
    digest = pot4.save(tmp_path / "m.nnmd")
    back = Potential.load(tmp_path / "m.nnmd")
    assert back.content_hash == digest == pot4.content_hash
    a, b = pot4.compute(pos, nums, cell, True), back.compute(pos, nums, cell, True)
    assert a.energy == b.energy and np.array_equal(a.forces, b.forces)


def test_corrupted_and_future_files_are_refused(tmp_path, pot4):
    path = tmp_path / "m.nnmd"
    pot4.save(path)
    doc = json.loads(path.read_text())
    doc["model"]["energy_shift"]["Li"] = 1.0  # silently edited weights
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="content hash mismatch"):
        Potential.load(path)
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="newer nnmd"):
        Potential.load(path)
    pot4.save(path)
    path.write_bytes(path.read_bytes()[:500])  # truncated
    with pytest.raises(ValueError, match="corrupted or truncated"):
        Potential.load(path)
    with pytest.raises(FileNotFoundError):
        Potential.load(tmp_path / "missing.nnmd")


@pytest.mark.parametrize("weighting,cutoff_fn", [("z", "tanh"), ("blocks", "cos")])
def test_sannp_export_import_matches(weighting, cutoff_fn, structure):
    """Per-feature standardisation and e0 fold into the weights: same energies and forces."""
    pot = Potential.random(SPECIES4, seed=7, weighting=weighting, cutoff_fn=cutoff_fn, n_models=3,
                           **{**SMALL, "r_angular": SMALL["r_radial"]})
    from dataclasses import replace

    pot = replace(pot, energy_shift=np.array([-1.5, -3.0, -5.25, -2.0]))
    pos, nums, cell = structure
    text = write_sannp(pot)
    head = text.splitlines()[:5]
    assert head[0] == f"3 {1 if weighting == 'z' else 0} {1 if cutoff_fn == 'tanh' else 0} 1"
    assert head[3] == "2 12 5 3"  # 2 layers of 12, twisted tanh, 3 models
    back = read_sannp(text)
    a, b = pot.compute(pos, nums, cell, True), back.compute(pos, nums, cell, True)
    assert abs(a.energy - b.energy) < 1e-10 * abs(a.energy)
    assert np.abs(a.forces - b.forces).max() < 1e-10 * np.abs(a.forces).max()


def test_sannp_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="typespin"):
        write_sannp(Potential.random(SPECIES4, weighting="typespin", **SMALL))
    with pytest.raises(ValueError, match="2\\*theta/pi - 1"):
        write_sannp(Potential.random(SPECIES4, angle="cos", **SMALL))
    with pytest.raises(ValueError, match="aenet_twist"):
        write_sannp(Potential.random(SPECIES4, activation="aenet_twist", **SMALL))
    with pytest.raises(ValueError, match="expected .* weights"):
        read_sannp(write_sannp(Potential.random(("Si",), **SMALL)).rsplit(" ", 3)[0])
    with pytest.raises(ValueError, match="line 1: symmFunc 2"):
        read_sannp("2 1 1 0\n")


def test_cli_export_import(tmp_path, structure, capsys):
    pot = Potential.random(SPECIES4, seed=3, **{**SMALL, "r_angular": SMALL["r_radial"]})
    pot.save(tmp_path / "m.nnmd")
    assert cli(["export", str(tmp_path / "m.nnmd"), "--format", "sannp", "-o", str(tmp_path / "ffield.sannp")]) == 0
    assert cli(["import", str(tmp_path / "ffield.sannp"), "-o", str(tmp_path / "back.nnmd")]) == 0
    pos, nums, cell = structure
    a = pot.compute(pos, nums, cell, True)
    b = Potential.load(tmp_path / "back.nnmd").compute(pos, nums, cell, True)
    assert abs(a.energy - b.energy) < 1e-10 * abs(a.energy)
    assert cli(["model-info", str(tmp_path / "back.nnmd")]) == 0
    assert '"n_features": 14' in capsys.readouterr().out
    assert cli(["export", str(tmp_path / "nope.nnmd"), "-o", str(tmp_path / "x")]) == 2


def test_ase_calculator(pot4, structure):
    from ase import Atoms

    from nnmd_kernels.ase import NNPCalculator

    pos, nums, cell = structure
    atoms = Atoms(numbers=nums, positions=pos, cell=cell, pbc=True)
    atoms.calc = NNPCalculator(pot4)
    res = pot4.compute(pos, nums, cell, True)
    assert np.isclose(atoms.get_potential_energy(), res.energy, rtol=1e-14)
    assert np.allclose(atoms.get_forces(), res.forces, rtol=1e-12, atol=1e-12)
    assert np.allclose(atoms.get_potential_energies(), res.energies)
    s = atoms.get_stress(voigt=False)
    assert np.allclose(s, 0.5 * (res.stress + res.stress.T))
    # stress convention: ASE's numerical stress agrees
    from ase.calculators.fd import calculate_numerical_stress

    assert np.allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), atol=1e-6)
