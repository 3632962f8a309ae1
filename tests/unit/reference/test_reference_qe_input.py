"""The pw.x input layer without pw.x: parsing with line numbers, validation
errors that name the line and the setting, and rendering that keeps the user's
settings. Pseudopotential files here are empty placeholders (only their
existence is checked before a run)."""

from __future__ import annotations

import textwrap

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from services.reference.qe import parse_pw_output
from services.reference.qe_input import QEInputError, load_template, parse_pw_input
from services.reference.types import FailureReason

SI = """\
&CONTROL
  calculation = 'md'   ! user's MD input: we label single points
  pseudo_dir = './pseudo'
  prefix = 'si, two'
/
&SYSTEM
  ibrav = 2, celldm(1) = 10.26
  nat = 2, ntyp = 1
  ecutwfc = 20.0
  occupations = 'smearing', smearing = 'mv', degauss = 0.02
/
&ELECTRONS
  conv_thr = 1.0d-9
  mixing_beta = 0.4
/
&IONS
  ion_temperature = 'rescaling'
/
ATOMIC_SPECIES
Si 28.0855 Si.pz-vbc.UPF  ! norm-conserving, LDA
ATOMIC_POSITIONS crystal
Si 0.00 0.00 0.00
Si 0.25 0.25 0.25
K_POINTS automatic
3 3 3 1 1 1
"""


def write_input(tmp_path, text=SI, pseudos=("Si.pz-vbc.UPF",), name="si.pwi"):
    (tmp_path / "pseudo").mkdir(exist_ok=True)
    for p in pseudos:
        (tmp_path / "pseudo" / p).write_text("placeholder\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text, **kw) -> QEInputError:
    with pytest.raises(QEInputError) as info:
        load_template(write_input(tmp_path, text, **kw))
    return info.value


def test_parse_keeps_raw_values_and_lines():
    pw = parse_pw_input(SI)
    assert pw.setting("electrons", "conv_thr").raw == "1.0d-9"
    assert pw.value("electrons", "conv_thr") == pytest.approx(1e-9)
    assert pw.setting("system", "celldm(1)").line == 7
    assert pw.setting("system", "ntyp").line == 8  # two settings on one line
    assert pw.value("control", "prefix") == "si, two"  # comma inside quotes is text
    assert pw.value("control", "calculation") == "md"  # comment stripped
    assert pw.cards["K_POINTS"].option == "automatic"
    assert pw.cards["ATOMIC_POSITIONS"].body[1] == (23, "Si 0.25 0.25 0.25")


def test_render_keeps_user_settings_and_round_trips_structure(tmp_path):
    t = load_template(write_input(tmp_path))
    atoms = bulk("Si", "diamond", a=5.43 * 1.01).repeat((1, 1, 2))
    atoms.rattle(0.05, seed=1)
    text = t.render(atoms)
    pw = parse_pw_input(text)
    # every user setting survives with its raw text, except the structure ones
    for section, settings in t.pw.namelists.items():
        for key, s in settings.items():
            if section == "ions" or key.startswith("celldm") or key in (
                    "calculation", "pseudo_dir", "ibrav", "nat"):
                continue
            assert pw.setting(section, key).raw == s.raw, (section, key)
    assert pw.value("control", "calculation") == "scf"
    assert pw.value("control", "tprnfor") is True and pw.value("control", "tstress") is True
    assert pw.value("system", "nat") == len(atoms) and pw.value("system", "ibrav") == 0
    assert "ions" not in pw.namelists
    assert pw.value("control", "pseudo_dir") == str((tmp_path / "pseudo").resolve())
    assert pw.cards["K_POINTS"].body == ((pw.cards["K_POINTS"].line + 1, "3 3 3 1 1 1"),)
    # ASE reads the rendered structure back exactly
    (tmp_path / "out.pwi").write_text(text)
    back = ase.io.read(tmp_path / "out.pwi", format="espresso-in")
    np.testing.assert_allclose(back.cell, atoms.cell, atol=1e-10)
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-10)


def test_ibrav_input_structure_matches_ase(tmp_path):
    t = load_template(write_input(tmp_path))
    ref = bulk("Si", "diamond", a=10.26 * 0.529177210903)
    assert abs(t.atoms.cell.volume - ref.cell.volume) < 1e-3
    assert t.labels == ("Si", "Si")


def test_species_labels_by_order_or_element(tmp_path):
    text = SI.replace("ntyp = 1", "ntyp = 2").replace(
        "Si 28.0855 Si.pz-vbc.UPF", "Si1 28.0855 Si.pz-vbc.UPF\nSi2 28.0855 Si.pz-vbc.UPF"
    ).replace("Si 0.25 0.25 0.25", "Si2 0.25 0.25 0.25").replace("Si 0.00", "Si1 0.00")
    t = load_template(write_input(tmp_path, text))
    assert t.labels_for(t.atoms) == ["Si1", "Si2"]
    with pytest.raises(ValueError, match="several species"):
        t.labels_for(t.atoms.repeat((2, 1, 1)))
    with pytest.raises(ValueError, match="element C has no species"):
        t.labels_for(bulk("C", "diamond", a=3.57))


@pytest.mark.parametrize(
    "old, new, line, words",
    [
        ("ecutwfc = 20.0", "ecutwf = 20.0", 9, ["ecutwf", "did you mean 'ecutwfc'"]),
        ("Si.pz-vbc.UPF  !", "Si.missing.UPF  !", 20, ["Si.missing.UPF"]),
        ("Si 0.25 0.25 0.25", "Ge 0.25 0.25 0.25", 23, ["'Ge'", "ATOMIC_SPECIES"]),
        ("nat = 2, ntyp = 1", "nat = 3, ntyp = 1", 8, ["nat = 3", "2 atoms"]),
        ("Si 28.0855 Si.pz-vbc.UPF", "Xq 28.0855 Si.pz-vbc.UPF", 20, ["Xq"]),
        ("Si 28.0855 Si.pz-vbc.UPF", "Si 28.0855 ", 20, ["label mass pseudopotential"]),
        ("&ELECTRONS", "&ELECTRON", 12, ["&electron", "ELECTRONS"]),
        ("mixing_beta = 0.4", "mixing_beta = 0.4\n  conv_thr = 1e-6", 15, ["twice", "line 13"]),
        ("pseudo_dir = './pseudo'", "pseudo_dir = './nowhere'", 3, ["nowhere", "pseudo_dir"]),
        ("nat = 2, ntyp = 1", "nat = 2.5, ntyp = 1", 8, ["whole number"]),
    ],
)
def test_input_errors_name_line_and_setting(tmp_path, old, new, line, words):
    assert old in SI
    err = error_of(tmp_path, SI.replace(old, new, 1))
    assert err.line == line, str(err)
    assert f"si.pwi:{line}:" in str(err)
    for w in words:
        assert w in str(err), str(err)


def test_missing_pseudo_and_species_card_reasons(tmp_path):
    err = error_of(tmp_path, SI, pseudos=())
    assert err.reason == FailureReason.MISSING_PSEUDO
    no_species = SI.replace("ATOMIC_SPECIES\nSi 28.0855 Si.pz-vbc.UPF  ! norm-conserving, LDA\n",
                            "")
    assert no_species != SI
    err = error_of(tmp_path, no_species)
    assert "missing card ATOMIC_SPECIES" in str(err) and err.reason == FailureReason.BAD_INPUT


def test_unclosed_namelist_and_stray_line(tmp_path):
    err = error_of(tmp_path, SI.replace("  mixing_beta = 0.4\n/\n", "  mixing_beta = 0.4\n"))
    assert "not closed" in str(err) or "ELECTRONS" in str(err)
    err = error_of(tmp_path, SI.replace("K_POINTS automatic", "K_POINT automatic"))
    assert err.line is not None and "K_POINT" in str(err)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(QEInputError, match="not found"):
        load_template(tmp_path / "nope.pwi")


def test_render_rejects_non_periodic(tmp_path):
    t = load_template(write_input(tmp_path))
    a = t.atoms.copy()
    a.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        t.render(a)


OUT_OK = """
!    total energy              =     -15.80000000 Ry
     convergence has been achieved in   7 iterations
     Forces acting on atoms (cartesian axes, Ry/au):

     atom    1 type  1   force =     0.01000000   -0.02000000    0.03000000
     atom    2 type  1   force =    -0.01000000    0.02000000   -0.03000000

     The non-local contrib.  to forces
     atom    1 type  1   force =     9.00000000    9.00000000    9.00000000
     atom    2 type  1   force =     9.00000000    9.00000000    9.00000000

     total   stress  (Ry/bohr**3)                   (kbar)     P=      -10.00
  -0.00010000   0.00000000   0.00000000          -10.00        0.00        0.00
   0.00000000  -0.00010000   0.00000000            0.00      -10.00        0.00
   0.00000000   0.00000000  -0.00010000            0.00        0.00      -10.00
   JOB DONE.
"""


def test_output_parser_reads_first_force_block_and_stress():
    out = parse_pw_output(OUT_OK, 2)
    assert out.energy_ry == -15.8 and out.converged and out.job_done
    np.testing.assert_allclose(out.forces_ry_bohr, [[0.01, -0.02, 0.03], [-0.01, 0.02, -0.03]])
    np.testing.assert_allclose(np.diag(out.stress_ry_bohr3), [-1e-4] * 3)
    bad = OUT_OK.replace("convergence has been achieved in   7 iterations",
                         "convergence NOT achieved after   2 iterations: stopping")
    out = parse_pw_output(bad, 2)
    assert out.not_converged and not out.converged
