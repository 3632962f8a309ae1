"""`nnmd test`: a model's errors on labelled data, overall, per group, worst cases,
parity plots and ensemble calibration; one-line exit 2 on element mismatch or no labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from test_formats import emt_frames

from nnmd_kernels import Potential
from nnmd_kernels.md.units import EV_PER_A3_TO_GPA
from orchestrator.cli import main as cli
from services.trainer.data import atoms_to_structure
from services.trainer.evaluate import evaluate
from services.trainer.formats import write_structures


def _pot(n_models=1, species=("Cu", "Ag")):
    return Potential.random(list(species), seed=3, hidden=(4,), n_radial=4, n_angular=2,
                            r_radial=4.0, r_angular=3.5, n_models=n_models)


@pytest.fixture(scope="module")
def frames():
    out = emt_frames(8, seed=11)
    for k, a in enumerate(out):
        a.info["config_type"] = "strained" if k % 2 else "rattled"
    return out


def test_errors_match_a_direct_computation(frames):
    pot = _pot()
    structures = [atoms_to_structure(a, f"s{k}") for k, a in enumerate(frames)]
    groups = [a.info["config_type"] for a in frames]
    out = evaluate(pot, structures, groups, n_worst=3)
    de, df, ds = [], [], []
    for s in structures:
        r = pot.compute(s.positions, s.numbers, s.cell, s.pbc)
        de.append((r.energy - s.energy) / len(s.numbers))
        df.append(r.forces - s.forces)
        ds.append([r.stress[i, j] - s.stress[i, j]
                   for i, j in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))])
    de, df, ds = np.array(de), np.concatenate(df), np.array(ds) * EV_PER_A3_TO_GPA
    o = out["overall"]
    assert o["n_structures"] == 8 and o["n_atoms"] == 32
    assert o["energy_rmse_mev_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean(de ** 2)))
    assert o["energy_mae_mev_per_atom"] == pytest.approx(1e3 * np.mean(np.abs(de)))
    assert o["force_rmse_mev_per_angstrom"] == pytest.approx(1e3 * np.sqrt(np.mean(df ** 2)))
    assert o["force_max_mev_per_angstrom"] == pytest.approx(
        1e3 * np.linalg.norm(df, axis=1).max())
    assert o["stress_rmse_gpa"] == pytest.approx(np.sqrt(np.mean(ds ** 2)))
    # per group: the even structures are "rattled"
    g = out["groups"]["rattled"]
    assert g["n_structures"] == 4
    assert g["energy_rmse_mev_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean(de[::2] ** 2)))
    # worst cases, largest first
    worst = [w["error_mev_per_atom"] for w in out["worst"]["energy"]]
    assert worst == sorted(worst, reverse=True) and len(worst) == 3
    assert worst[0] == pytest.approx(1e3 * np.abs(de).max())
    assert out["worst"]["energy"][0]["name"] == f"s{int(np.abs(de).argmax())}"
    assert "calibration" not in out  # one model: no spread


def test_ensemble_calibration(frames):
    pot = _pot(n_models=3)
    structures = [atoms_to_structure(a, f"s{k}") for k, a in enumerate(frames)]
    cal = evaluate(pot, structures)["calibration"]
    assert cal["n"] == 8 and cal["mean_spread_mev_per_atom"] > 0
    assert 0 <= cal["within_1_sigma"] <= cal["within_2_sigma"] <= 1
    assert -1 <= cal["spearman_spread_error"] <= 1


def test_cli_on_extxyz_mlearn_and_store(frames, tmp_path, capsys):
    pot = _pot(n_models=2)
    pot.save(tmp_path / "m.nnmd")
    write(tmp_path / "d.extxyz", frames)
    mlearn = [a.copy() for a in frames]
    for a, b in zip(frames, mlearn):
        b.calc = a.calc
        b.info = {"group": a.info["config_type"]}
    write_structures(mlearn, tmp_path / "d.json")
    store = str(tmp_path / "store")
    assert cli(["store", "import", str(tmp_path / "d.extxyz"), "--store", store]) == 0
    capsys.readouterr()

    rc = cli(["test", str(tmp_path / "m.nnmd"), str(tmp_path / "d.extxyz"),
              "--json", str(tmp_path / "t.json"), "--plots", str(tmp_path / "plots")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "rattled" in out and "strained" in out and "ensemble (2 models)" in out
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["overall"]["energy_rmse_mev_per_atom"] > 0
    assert t["overall"]["force_rmse_mev_per_angstrom"] > 0
    assert set(t["groups"]) == {"rattled", "strained"} and "calibration" in t
    for name in ("parity_energy.png", "parity_forces.png", "parity_stress.png",
                 "calibration.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000

    # the same numbers from mlearn JSON (groups from its "group") and from a store
    for data in (str(tmp_path / "d.json"), store):
        rc = cli(["test", str(tmp_path / "m.nnmd"), data, "--json", str(tmp_path / "u.json"),
                  "--force"])
        assert rc == 0
        u = json.loads((tmp_path / "u.json").read_text())
        assert u["overall"]["energy_rmse_mev_per_atom"] == pytest.approx(
            t["overall"]["energy_rmse_mev_per_atom"], rel=1e-6)
        assert u["overall"]["force_rmse_mev_per_angstrom"] == pytest.approx(
            t["overall"]["force_rmse_mev_per_angstrom"], rel=1e-6)
    assert set(json.loads((tmp_path / "u.json").read_text()).get("groups", {})) <= {"(none)"}
    capsys.readouterr()
    # --json onto an existing file needs --force
    assert cli(["test", str(tmp_path / "m.nnmd"), str(tmp_path / "d.extxyz"),
                "--json", str(tmp_path / "t.json")]) == 2
    assert "--force" in capsys.readouterr().err


def test_cli_mismatch_and_unlabelled_exit_2(frames, tmp_path, capsys):
    _pot(species=("Cu",)).save(tmp_path / "cu.nnmd")
    write(tmp_path / "d.extxyz", frames)  # Cu and Ag
    assert cli(["test", str(tmp_path / "cu.nnmd"), str(tmp_path / "d.extxyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Ag" in err and "not in the model" in err
    _pot().save(tmp_path / "m.nnmd")
    bare = [a.copy() for a in frames]  # no calculator: no labels
    write(tmp_path / "bare.extxyz", bare)
    assert cli(["test", str(tmp_path / "m.nnmd"), str(tmp_path / "bare.extxyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no energy" in err and "bare.extxyz" in err
    assert cli(["test", str(tmp_path / "m.nnmd"), str(tmp_path / "nope.extxyz")]) == 2
    assert "nope.extxyz" in capsys.readouterr().err
