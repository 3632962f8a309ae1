"""The one reader/writer of labelled structures (services/trainer/formats.py) and `nnmd convert`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from orchestrator.cli import main as cli
from services.trainer import formats
from services.trainer.data import read_training_data
from services.trainer.formats import detect_format, read_structures, write_structures

# the public mlearn Si data (Zuo et al. 2020), shipped in datasets/ (see its README)
MLEARN_TEST = Path(__file__).parents[3] / "datasets" / "mlearn-si" / "test.json"


def emt_frames(n=4, seed=0, cluster=False):
    """Rattled, strained Cu/Ag cells labelled by EMT (energy, forces, stress)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.03, 0.03)), cubic=True)
        a.numbers[rng.choice(len(a), size=1, replace=False)] = 47
        a.rattle(0.1, seed=int(rng.integers(1 << 30)))
        a.set_cell(a.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        if cluster:
            a.pbc = False
            a.cell = np.zeros((3, 3))
        a.calc = EMT()
        results = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if not cluster:
            results["stress"] = a.get_stress()
        a.calc = SinglePointCalculator(a, **results)
        out.append(a)
    return out


def assert_same(a_list, b_list, stress=True):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        np.testing.assert_allclose(b.positions, a.positions, rtol=1e-8, atol=0)
        np.testing.assert_allclose(b.cell.array, a.cell.array, rtol=1e-8, atol=0)
        np.testing.assert_allclose(b.get_potential_energy(), a.get_potential_energy(), rtol=1e-8)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), rtol=1e-8, atol=0)
        if stress:
            np.testing.assert_allclose(b.get_stress(voigt=False), a.get_stress(voigt=False),
                                       rtol=1e-8, atol=0)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("middle", ["input.data", "mid.json"])
def test_convert_round_trip_extxyz_through_n2p2_and_mlearn(tmp_path, middle, capsys):
    src = tmp_path / "src.extxyz"
    ase.io.write(src, emt_frames(5), format="extxyz")
    ref = ase.io.read(src, index=":")  # what extxyz holds (8 decimals per atom column)
    assert cli(["convert", str(src), str(tmp_path / middle)]) == 0
    out = capsys.readouterr()
    assert "converted 5 structures" in out.out
    assert "stress of 5 structures is not written" in out.err  # neither format has stress
    assert cli(["convert", str(tmp_path / middle), str(tmp_path / "back.extxyz")]) == 0
    back = ase.io.read(tmp_path / "back.extxyz", index=":")
    assert_same(ref, back, stress=False)
    assert all("stress" not in b.calc.results for b in back)
    # the middle file itself reads the same
    assert_same(ref, read_structures(tmp_path / middle), stress=False)


def test_extxyz_keeps_stress_and_n2p2_keeps_non_periodic(tmp_path):
    frames = emt_frames(3, seed=1)
    write_structures(frames, tmp_path / "a.xyz")
    ref = read_structures(tmp_path / "a.xyz")
    np.testing.assert_allclose(ref[0].get_stress(), frames[0].get_stress(), rtol=1e-12)
    clusters = emt_frames(2, seed=2, cluster=True)
    write_structures(clusters, tmp_path / "c.data")
    back = read_structures(tmp_path / "c.data")
    assert not back[0].pbc.any() and detect_format(tmp_path / "c.data") == "n2p2"
    assert_same(clusters, back, stress=False)  # written with full float64 precision


def test_n2p2_reads_the_documented_layout(tmp_path):
    text = """begin
comment two H and an O, periodic
lattice 10.0 0.0 0.0
lattice 0.0 10.0 0.0
lattice 0.0 0.0 10.0
atom 1.0 2.0 3.0 O -0.8 0.0 0.1 0.2 0.3
atom 1.5 2.0 3.0 H 0.4 0.0 -0.1 0.0 0.0
atom 0.5 2.0 3.0 H 0.4 0.0 0.0 -0.2 -0.3
energy -14.5
charge 0.0
end
begin
atom 0.0 0.0 0.0 Cu 0.0 0.0 1e-3 0 0
energy -3.5
charge 0.0
end
"""
    (tmp_path / "input.data").write_text(text)
    a, b = read_structures(tmp_path / "input.data")
    assert a.get_chemical_symbols() == ["O", "H", "H"] and a.pbc.all()
    np.testing.assert_allclose(a.cell.array, 10 * np.eye(3))
    assert a.get_potential_energy() == -14.5 and a.info["comment"] == "two H and an O, periodic"
    np.testing.assert_allclose(a.get_forces()[2], [0.0, -0.2, -0.3])
    np.testing.assert_allclose(a.get_initial_charges(), [-0.8, 0.4, 0.4])
    assert not b.pbc.any() and b.get_forces()[0, 0] == 1e-3


# ------------------------------------------------------------------ DeePMD


def _write_deepmd(folder: Path, frames_per_set=(2, 1), raw=False, nopbc=False):
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    types = np.array([1, 0, 0, 1])  # type_map: Cu Ag -> Ag Cu Cu Ag
    (folder / "type.raw").write_text("\n".join(map(str, types)) + "\n")
    (folder / "type_map.raw").write_text("Cu\nAg\n")
    if nopbc:
        (folder / "nopbc").write_text("")
    expected = []
    chunks = [folder] if raw else [folder / f"set.{k:03d}" for k in range(len(frames_per_set))]
    for d, nf in zip(chunks, frames_per_set):
        d.mkdir(exist_ok=True)
        boxes = np.array([np.diag([5.0, 6.0, 7.0]) + rng.uniform(-0.2, 0.2, (3, 3))
                          for _ in range(nf)])
        coord = rng.uniform(0, 5, (nf, 4, 3))
        energy = rng.uniform(-20, -10, nf)
        force = rng.normal(size=(nf, 4, 3))
        virial = rng.normal(size=(nf, 3, 3))
        virial = virial + virial.transpose(0, 2, 1)
        arrays = {"coord": coord.reshape(nf, 12), "box": boxes.reshape(nf, 9), "energy": energy,
                  "force": force.reshape(nf, 12), "virial": virial.reshape(nf, 9)}
        if nopbc:
            del arrays["box"], arrays["virial"]
        for name, arr in arrays.items():
            if raw:
                np.savetxt(d / f"{name}.raw", arr.reshape(nf, -1))
            else:
                np.save(d / f"{name}.npy", arr)
        for i in range(nf):
            expected.append((coord[i], boxes[i], energy[i], force[i], virial[i]))
    return expected


@pytest.mark.parametrize("raw", [False, True])
def test_deepmd_system_reads_energies_forces_cells_species_stress(tmp_path, raw):
    expected = _write_deepmd(tmp_path / "sys", frames_per_set=(2, 1) if not raw else (3,), raw=raw)
    frames = read_structures(tmp_path / "sys")
    assert detect_format(tmp_path / "sys") == "deepmd" and len(frames) == 3
    for a, (coord, box, energy, force, virial) in zip(frames, expected):
        assert a.get_chemical_symbols() == ["Ag", "Cu", "Cu", "Ag"] and a.pbc.all()
        np.testing.assert_allclose(a.positions, coord, rtol=1e-12)
        np.testing.assert_allclose(a.cell.array, box, rtol=1e-12)
        np.testing.assert_allclose(a.get_potential_energy(), energy, rtol=1e-12)
        np.testing.assert_allclose(a.get_forces(), force, rtol=1e-12)
        np.testing.assert_allclose(a.get_stress(voigt=False), -virial / abs(np.linalg.det(box)),
                                   rtol=1e-12)


def test_deepmd_folder_of_systems_nopbc_and_errors(tmp_path, capsys):
    _write_deepmd(tmp_path / "data" / "a", (2,))
    _write_deepmd(tmp_path / "data" / "b", (1,), nopbc=True)
    frames = read_structures(tmp_path / "data")
    assert len(frames) == 3 and frames[0].pbc.all() and not frames[2].pbc.any()
    assert "stress" not in frames[2].calc.results
    # converts to extxyz; a training set reads it
    assert cli(["convert", str(tmp_path / "data"), str(tmp_path / "d.extxyz")]) == 0
    assert len(read_training_data([tmp_path / "d.extxyz"])) == 3
    # no type_map.raw: a clear line
    (tmp_path / "data" / "a" / "type_map.raw").unlink()
    assert cli(["convert", str(tmp_path / "data"), str(tmp_path / "e.extxyz")]) == 2
    assert "no type_map.raw" in one_line_error(capsys)
    # a mis-shaped array names the file and the shapes
    np.save(tmp_path / "data" / "b" / "set.000" / "force.npy", np.zeros((1, 9)))
    with pytest.raises(ValueError, match=r"force.npy: shape \(1, 9\), expected \(1, 12\)"):
        read_structures(tmp_path / "data" / "b")


# ------------------------------------------------------------------ errors


def test_bad_n2p2_lines_name_file_line_and_problem(tmp_path, capsys):
    good = "begin\nlattice 3 0 0\nlattice 0 3 0\nlattice 0 0 3\natom 0 0 0 Cu 0 0 0 0 0\n"
    cases = {
        "atom 1 1 1 Cu 0 0 0\n": "input.data line 6: atom line needs 9 fields (x y z element "
                                 "charge energy fx fy fz), got 7",
        "atom 1 1 x Cu 0 0 0 0 0\n": "input.data line 6: atom position: 'x' is not a number",
        "atom 1 1 1 Qq 0 0 0 0 0\n": "input.data line 6: unknown element 'Qq'",
        "energy 1\nend\nbegin\n": "input.data line 10: the structure that begins on line 8 has "
                                   "no atoms",
        "lattice 1 2\n": "input.data line 6: lattice line needs 3 fields, got 2",
        "stress 1\n": "input.data line 6: unknown keyword 'stress'",
    }
    for tail, message in cases.items():
        (tmp_path / "input.data").write_text(good + tail + "energy 1\nend\n")
        assert cli(["convert", str(tmp_path / "input.data"), str(tmp_path / "o.xyz")]) == 2
        err = one_line_error(capsys)
        assert message in err, err
        assert not (tmp_path / "o.xyz").exists()
    (tmp_path / "input.data").write_text(good + "energy 1\n")
    with pytest.raises(ValueError, match="the structure that begins on line 1 has no 'end'"):
        read_structures(tmp_path / "input.data")
    (tmp_path / "input.data").write_text("begin\nlattice 3 0 0\natom 0 0 0 Cu 0 0 0 0 0\nend\n")
    with pytest.raises(ValueError, match="line 4: .* has 1 lattice lines; need 3"):
        read_structures(tmp_path / "input.data")


def test_bad_mlearn_json_and_bad_paths_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('[{"structure": {"lattice": {"matrix": [[1,0,0]]}')
    assert cli(["convert", str(tmp_path / "bad.json"), str(tmp_path / "o.xyz")]) == 2
    assert "bad.json: not valid JSON (line 1, column" in one_line_error(capsys)
    entry = {"structure": {"lattice": {"matrix": np.eye(3).tolist()},
                           "sites": [{"species": [{"element": "Si"}], "xyz": [0, 0, 0]}]},
             "outputs": {"forces": [[0, 0, 0]]}}
    (tmp_path / "noenergy.json").write_text(json.dumps([entry]))
    assert cli(["convert", str(tmp_path / "noenergy.json"), str(tmp_path / "o.xyz")]) == 2
    assert "noenergy.json: entry 0: missing field 'energy'" in one_line_error(capsys)
    entry["outputs"] = {"energy": 1.0, "forces": [[0, 0]]}
    (tmp_path / "shape.json").write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=r"entry 0: outputs.forces has shape \(1, 2\)"):
        read_structures(tmp_path / "shape.json")
    # missing file, a plain directory, an empty file, binary junk
    assert cli(["convert", str(tmp_path / "nope.xyz"), str(tmp_path / "o.xyz")]) == 2
    assert "nope.xyz: no such file or directory" in one_line_error(capsys)
    (tmp_path / "plain").mkdir()
    assert cli(["convert", str(tmp_path / "plain"), str(tmp_path / "o.xyz")]) == 2
    assert "is a directory, but neither an nnmd store" in one_line_error(capsys)
    assert cli(["convert", str(tmp_path / "plain"), str(tmp_path / "o.xyz"), "--from", "n2p2"]) == 2
    assert "is a directory, not a n2p2 file" in one_line_error(capsys)
    (tmp_path / "empty.xyz").write_text("")
    assert cli(["convert", str(tmp_path / "empty.xyz"), str(tmp_path / "o.xyz")]) == 2
    assert "empty.xyz: the file is empty" in one_line_error(capsys)
    (tmp_path / "junk.xyz").write_bytes(bytes(range(256)) * 4)
    assert cli(["convert", str(tmp_path / "junk.xyz"), str(tmp_path / "o.xyz")]) == 2
    assert "junk.xyz: cannot read it as extxyz" in one_line_error(capsys)
    assert cli(["convert", str(tmp_path / "junk.xyz"), str(tmp_path / "o.xyz"), "--from", "nope"]) == 2
    assert "unknown format 'nope'" in one_line_error(capsys)


def test_unreadable_file_is_one_line(tmp_path, capsys, monkeypatch):
    f = tmp_path / "locked.xyz"
    ase.io.write(f, emt_frames(1), format="extxyz")
    f.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: make opening it fail as it would for a user
        real_open = open

        def locked_open(path, *args, **kwargs):
            if str(path) == str(f):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(formats, "open", locked_open, raising=False)
    assert cli(["convert", str(f), str(tmp_path / "o.xyz")]) == 2
    assert "locked.xyz: cannot read it (Permission denied)" in one_line_error(capsys)


def test_convert_never_clobbers_and_leaves_no_partial_file(tmp_path, capsys):
    ase.io.write(tmp_path / "in.xyz", emt_frames(2), format="extxyz")
    (tmp_path / "out.data").write_text("precious\n")
    assert cli(["convert", str(tmp_path / "in.xyz"), str(tmp_path / "out.data")]) == 2
    assert "--force" in one_line_error(capsys)
    assert (tmp_path / "out.data").read_text() == "precious\n"
    assert cli(["convert", str(tmp_path / "in.xyz"), str(tmp_path / "out.data"), "--force"]) == 0
    assert "converted 2 structures" in capsys.readouterr().out
    assert len(read_structures(tmp_path / "out.data")) == 2
    # an unlabelled structure cannot go to input.data: the old file stays, no temporary left
    before = (tmp_path / "out.data").read_text()
    ase.io.write(tmp_path / "bare.xyz", [emt_frames(1)[0], Atoms("Cu", pbc=False)],
                 format="extxyz")
    assert cli(["convert", str(tmp_path / "bare.xyz"), str(tmp_path / "out.data"), "--force"]) == 2
    assert "structure 1: no energy" in one_line_error(capsys)
    assert (tmp_path / "out.data").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.xyz", "in.xyz", "out.data"]
    # --to overrides the name; a one-structure ASE format refuses several
    assert cli(["convert", str(tmp_path / "in.xyz"), str(tmp_path / "o.txt"), "--to", "n2p2"]) == 0
    capsys.readouterr()
    assert detect_format(tmp_path / "o.txt") == "n2p2"
    assert cli(["convert", str(tmp_path / "in.xyz"), str(tmp_path / "POSCAR")]) == 2
    assert "holds one structure, got 2" in one_line_error(capsys)
    assert not (tmp_path / "POSCAR").exists()


@pytest.mark.skipif(not MLEARN_TEST.exists(), reason="shared mlearn-si dataset not present")
def test_real_mlearn_file_converts_to_n2p2_and_back_exactly(tmp_path):
    ref = read_structures(MLEARN_TEST)
    assert len(ref) == 25 and ref[0].info["group"] == "Vacancy"
    write_structures(ref, tmp_path / "input.data")
    write_structures(read_structures(tmp_path / "input.data"), tmp_path / "back.json")
    back = read_structures(tmp_path / "back.json")
    assert_same(ref, back, stress=False)
    data = read_training_data([MLEARN_TEST])
    assert data[0].name == "test.json[0] Vacancy" and data[0].energy == ref[0].get_potential_energy()
