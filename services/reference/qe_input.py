"""The user's pw.x input: parse it with line numbers, validate it, and re-write it
for any structure while keeping every setting the user chose.

Parsing keeps the raw text of each value and the line it came from, so an error
names the line and the setting; the structure itself is read by ASE's
``espresso-in`` reader (ibrav/celldm, units, crystal coordinates). Rendering
writes the user's namelists back unchanged except for the few settings a
labelling run must control (``RENDER_OVERRIDES``), the user's cards verbatim
(ATOMIC_SPECIES, K_POINTS, HUBBARD, ...), and the new structure as
CELL_PARAMETERS/ATOMIC_POSITIONS in angstrom.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.data import chemical_symbols
from ase.io.espresso import pw_keys, str_to_value

from services.reference.types import FailureReason

NAMELIST_ORDER = ("control", "system", "electrons", "ions", "cell", "fcp", "rism")
CARD_NAMES = (
    "ATOMIC_SPECIES",
    "ATOMIC_POSITIONS",
    "K_POINTS",
    "ADDITIONAL_K_POINTS",
    "CELL_PARAMETERS",
    "CONSTRAINTS",
    "OCCUPATIONS",
    "ATOMIC_VELOCITIES",
    "ATOMIC_FORCES",
    "SOLVENTS",
    "HUBBARD",
)
# Settings of QE versions before 7.1 (Hubbard moved to a card) that ASE's key list
# (QE 7.x) lacks; Debian 12 ships QE 6.7, so these are valid there.
LEGACY_KEYS = {
    "system": {
        "lda_plus_u", "lda_plus_u_kind", "hubbard_u", "hubbard_j0", "hubbard_alpha",
        "hubbard_beta", "hubbard_j", "hubbard_v", "u_projection_type", "starting_ns_eigenvalue",
        "hub_pot_fix", "reserv", "reserv_back", "backall", "lback", "l1back",
    },
}
# Settings that describe the cell or the structure: the rendered input carries the
# structure explicitly (ibrav = 0, angstrom), so these are dropped.
STRUCTURE_KEYS = {
    "celldm", "a", "b", "c", "cosab", "cosac", "cosbc", "space_group", "uniqueb",
    "origin_choice", "rhombohedral",
}
# Cards that refer to one structure's atoms or to dynamics; not meaningful for a
# single-point label of another structure.
DROPPED_CARDS = ("CONSTRAINTS", "ATOMIC_VELOCITIES", "ATOMIC_FORCES")
KEPT_CARDS = ("K_POINTS", "ADDITIONAL_K_POINTS", "OCCUPATIONS", "SOLVENTS", "HUBBARD")


class QEInputError(ValueError):
    """A problem in the user's pw.x input, with the line and setting it concerns."""

    def __init__(self, path, message: str, *, line: int | None = None, setting: str | None = None,
                 reason: FailureReason = FailureReason.BAD_INPUT):
        where = f"{path}:{line}" if line else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.setting, self.reason = str(path), line, setting, reason


@dataclass(frozen=True)
class Setting:
    key: str  # lower case, index included: "starting_magnetization(1)"
    raw: str  # the value exactly as written: "1.0d-8", "'smearing'"
    value: object  # parsed: int, float, bool or str
    line: int  # 1-based

    @property
    def base(self) -> str:
        return self.key.split("(")[0]


@dataclass(frozen=True)
class Card:
    name: str  # upper case: "K_POINTS"
    option: str  # lower case, without braces: "automatic", "" when none
    line: int
    body: tuple[tuple[int, str], ...]  # (line, text) of every non-blank line, comments cut


@dataclass(frozen=True)
class PwInput:
    path: str
    namelists: dict[str, dict[str, Setting]]
    namelist_lines: dict[str, int]
    cards: dict[str, Card]

    def setting(self, section: str, key: str) -> Setting | None:
        return self.namelists.get(section, {}).get(key)

    def value(self, section: str, key: str, default=None):
        s = self.setting(section, key)
        return default if s is None else s.value


def _split_namelist_line(text: str) -> tuple[list[str], bool]:
    """Split one namelist line into 'key = value' chunks; report a '/' terminator.

    Commas, '!' and '/' inside quotes are text; outside quotes they separate
    settings, start a comment, end the namelist.
    """
    chunks, cur, quote, closed = [], [], None, False
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "!":
            break
        elif ch == "/":
            closed = True
            break
        elif ch == ",":
            chunks.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    chunks.append("".join(cur))
    return [c.strip() for c in chunks if c.strip()], closed


def parse_pw_input(text: str, path="<input>") -> PwInput:
    """Namelists and cards of a pw.x input, each setting with its line number."""
    namelists: dict[str, dict[str, Setting]] = {}
    namelist_lines: dict[str, int] = {}
    cards: dict[str, Card] = {}
    section = None
    card_name = card_opt = None
    card_line = 0
    body: list[tuple[int, str]] = []

    def close_card():
        if card_name is not None:
            cards[card_name] = Card(card_name, card_opt, card_line, tuple(body))

    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if section is None:
            if not line or line[0] in "!#":
                continue
            if line.startswith("&"):
                if card_name is not None:
                    raise QEInputError(path, f"namelist '{line.split()[0]}' after the cards; "
                                       "namelists (&CONTROL, &SYSTEM, ...) come before cards",
                                       line=lineno)
                name = line[1:].split()[0].split(",")[0].lower() if len(line) > 1 else ""
                if name not in NAMELIST_ORDER:
                    hint = difflib.get_close_matches(name, NAMELIST_ORDER, n=1)
                    fix = f"; did you mean &{hint[0].upper()}?" if hint else ""
                    raise QEInputError(path, f"unknown namelist '&{name}'{fix}", line=lineno)
                if name in namelists:
                    raise QEInputError(path, f"namelist &{name.upper()} appears twice (first on "
                                       f"line {namelist_lines[name]})", line=lineno)
                section = name
                namelists[name] = {}
                namelist_lines[name] = lineno
                line = line[1 + len(name):]
            else:
                word = line.split()[0].upper()
                if word in CARD_NAMES:
                    close_card()
                    if word in cards:
                        raise QEInputError(path, f"card {word} appears twice (first on line "
                                           f"{cards[word].line})", line=lineno)
                    card_name, card_line, body = word, lineno, []
                    rest = line[len(word):].strip()
                    card_opt = rest.strip("{}() \t").lower()
                    continue
                if card_name is None:
                    raise QEInputError(path, f"'{line}' is neither a namelist (&NAME ... /) nor a "
                                       f"known card ({', '.join(CARD_NAMES[:5])}, ...)", line=lineno)
                content = re.split(r"[!#]", line, maxsplit=1)[0].strip()  # inline comment
                if content:
                    body.append((lineno, content))
                continue
        # inside a namelist
        chunks, closed = _split_namelist_line(line)
        if chunks == ["&end"] or line.lower().startswith("&end"):
            chunks, closed = [], True
        for chunk in chunks:
            if "=" not in chunk:
                raise QEInputError(path, f"'{chunk}' in &{section.upper()} is not 'name = value'",
                                   line=lineno, setting=chunk)
            key, raw = (s.strip() for s in chunk.split("=", 1))
            key = re.sub(r"\s+", "", key).lower()
            if not raw:
                raise QEInputError(path, f"setting '{key}' in &{section.upper()} has no value",
                                   line=lineno, setting=key)
            if key in namelists[section]:
                raise QEInputError(path, f"setting '{key}' is set twice in &{section.upper()} "
                                   f"(also on line {namelists[section][key].line})",
                                   line=lineno, setting=key)
            namelists[section][key] = Setting(key, raw, str_to_value(raw), lineno)
        if closed:
            section = None
    if section is not None:
        raise QEInputError(path, f"namelist &{section.upper()} is not closed with '/'",
                           line=namelist_lines[section])
    close_card()
    return PwInput(str(path), namelists, namelist_lines, cards)


def _check_keys(pw: PwInput) -> None:
    for section, settings in pw.namelists.items():
        known = set(pw_keys.get(section, ())) | LEGACY_KEYS.get(section, set())
        known_lower = {k.lower() for k in known}
        for s in settings.values():
            if s.base not in known_lower:
                hint = difflib.get_close_matches(s.base, sorted(known_lower), n=1)
                fix = f"; did you mean '{hint[0]}'?" if hint else ""
                raise QEInputError(pw.path, f"unknown setting '{s.key}' in &{section.upper()}{fix}",
                                   line=s.line, setting=s.key)


def _require_int(pw: PwInput, section: str, key: str, what: str) -> int:
    s = pw.setting(section, key)
    if s is None:
        line = pw.namelist_lines.get(section)
        raise QEInputError(pw.path, f"&{section.upper()} has no '{key}' ({what}); add "
                           f"'{key} = ...'", line=line, setting=key)
    if not isinstance(s.value, int) or isinstance(s.value, bool):
        raise QEInputError(pw.path, f"'{key} = {s.raw}' must be a whole number ({what})",
                           line=s.line, setting=key)
    return s.value


def resolve_pseudo_dir(pw: PwInput, base_dir: Path) -> Path:
    """pseudo_dir as pw.x would see it, made absolute (relative = the input's folder)."""
    s = pw.setting("control", "pseudo_dir")
    if s is not None:
        d = Path(os.path.expanduser(str(s.value)))
        d = d if d.is_absolute() else (base_dir / d)
        if not d.is_dir():
            raise QEInputError(pw.path, f"pseudo_dir '{s.value}' is not a folder (looked in "
                               f"{d}); set pseudo_dir to the folder of your .UPF files",
                               line=s.line, setting="pseudo_dir",
                               reason=FailureReason.MISSING_PSEUDO)
        return d.resolve()
    # pw.x's own defaults, in its order
    for cand in (os.environ.get("ESPRESSO_PSEUDO"), os.path.expanduser("~/espresso/pseudo")):
        if cand and Path(cand).is_dir():
            return Path(cand).resolve()
    raise QEInputError(pw.path, "no pseudo_dir in &CONTROL and neither $ESPRESSO_PSEUDO nor "
                       "~/espresso/pseudo exists; add pseudo_dir = '/path/to/pseudos' "
                       "(Debian: /usr/share/espresso/pseudo)",
                       line=pw.namelist_lines.get("control"), setting="pseudo_dir",
                       reason=FailureReason.MISSING_PSEUDO)


@dataclass(frozen=True)
class Species:
    label: str  # as in ATOMIC_SPECIES: "Fe1"
    symbol: str  # chemical element: "Fe"
    line: int
    pseudo: Path  # absolute path of the pseudopotential file


def label_to_symbol(label: str) -> str | None:
    """'Fe1' -> 'Fe', 'Si_a' -> 'Si', 'O' -> 'O'; None when no element matches."""
    m = re.match(r"([A-Za-z]{1,2})", label)
    if not m:
        return None
    head = m.group(1)
    for cand in (head[:1].upper() + head[1:].lower(), head[:1].upper()):
        if cand in chemical_symbols[1:]:
            return cand
    return None


def _species(pw: PwInput, pseudo_dir: Path, ntyp: int) -> list[Species]:
    card = pw.cards.get("ATOMIC_SPECIES")
    if card is None:
        raise QEInputError(pw.path, "missing card ATOMIC_SPECIES; add one line per species: "
                           "'Si 28.0855 Si.pz-vbc.UPF'", setting="ATOMIC_SPECIES")
    out = []
    for lineno, text in card.body:
        parts = text.split()
        if len(parts) != 3:
            raise QEInputError(pw.path, f"ATOMIC_SPECIES line '{text}' must be 'label mass "
                               "pseudopotential-file'", line=lineno, setting="ATOMIC_SPECIES")
        label, mass, pseudo = parts
        symbol = label_to_symbol(label)
        if symbol is None:
            raise QEInputError(pw.path, f"species '{label}' does not start with an element symbol",
                               line=lineno, setting="ATOMIC_SPECIES")
        try:
            float(mass.lower().replace("d", "e"))
        except ValueError:
            raise QEInputError(pw.path, f"mass '{mass}' of species '{label}' is not a number",
                               line=lineno, setting="ATOMIC_SPECIES") from None
        path = pseudo_dir / pseudo
        if not path.is_file():
            raise QEInputError(pw.path, f"pseudopotential '{pseudo}' for {label} not found in "
                               f"pseudo_dir {pseudo_dir}; put the file there or fix the name",
                               line=lineno, setting="ATOMIC_SPECIES",
                               reason=FailureReason.MISSING_PSEUDO)
        out.append(Species(label, symbol, lineno, path))
    if len(out) != ntyp:
        s = pw.setting("system", "ntyp")
        raise QEInputError(pw.path, f"ntyp = {ntyp} but ATOMIC_SPECIES (line {card.line}) lists "
                           f"{len(out)} species; make them agree", line=s.line, setting="ntyp")
    return out


@dataclass(frozen=True)
class QETemplate:
    """A validated pw.x input, ready to be rendered for other structures."""

    pw: PwInput
    pseudo_dir: Path
    species: tuple[Species, ...]
    atoms: Atoms  # the input's own structure
    labels: tuple[str, ...]  # the species label of each atom of ``atoms``

    def labels_for(self, atoms: Atoms) -> list[str]:
        """Species label of each atom of another structure (raises ValueError)."""
        symbols = atoms.get_chemical_symbols()
        if symbols == self.atoms.get_chemical_symbols():
            return list(self.labels)
        by_symbol: dict[str, list[Species]] = {}
        for sp in self.species:
            by_symbol.setdefault(sp.symbol, []).append(sp)
        out = []
        for sym in symbols:
            cands = by_symbol.get(sym)
            if not cands:
                raise ValueError(f"element {sym} has no species in ATOMIC_SPECIES of "
                                 f"{self.pw.path}; add a line '{sym} <mass> <pseudo file>'")
            if len(cands) > 1:
                raise ValueError(f"element {sym} has several species ("
                                 f"{', '.join(c.label for c in cands)}) in {self.pw.path}; "
                                 "only structures with the input's atoms in its order can be "
                                 "assigned to them")
            out.append(cands[0].label)
        return out

    def render(self, atoms: Atoms, overrides: dict[tuple[str, str], str] | None = None) -> str:
        """pw.x input text for ``atoms`` with the user's settings.

        overrides: {(section, key): raw Fortran value}, applied last (retries).
        """
        if not atoms.pbc.all() or atoms.cell.rank < 3:
            raise ValueError("pw.x needs a periodic structure with a full 3x3 cell; this one has "
                             f"pbc={atoms.pbc.tolist()} and cell rank {atoms.cell.rank}")
        labels = self.labels_for(atoms)
        forced: dict[tuple[str, str], str] = {
            ("control", "calculation"): "'scf'",
            ("control", "tprnfor"): ".true.",
            ("control", "tstress"): ".true.",
            ("control", "outdir"): "'./out'",
            ("control", "pseudo_dir"): f"'{self.pseudo_dir}'",
            ("control", "restart_mode"): "'from_scratch'",
            ("system", "ibrav"): "0",
            ("system", "nat"): str(len(atoms)),
        }
        forced.update(overrides or {})
        dropped = {("control", "wfcdir")}
        out = io.StringIO()
        for section in NAMELIST_ORDER:
            if section in ("ions", "cell", "fcp"):
                continue  # a single-point 'scf' run reads none of these
            settings = {k: s.raw for k, s in self.pw.namelists.get(section, {}).items()}
            if section == "system":
                settings = {k: v for k, v in settings.items()
                            if k.split("(")[0] not in STRUCTURE_KEYS}
            for (sec, key), raw in forced.items():
                if sec == section:
                    settings[key] = raw
            settings = {k: v for k, v in settings.items() if (section, k) not in dropped}
            if not settings and section not in ("control", "system", "electrons"):
                continue
            out.write(f"&{section.upper()}\n")
            for k, v in settings.items():
                out.write(f"  {k} = {v}\n")
            out.write("/\n")
        sp = self.pw.cards["ATOMIC_SPECIES"]
        out.write("ATOMIC_SPECIES\n")
        for _, text in sp.body:
            out.write(f"  {text}\n")
        out.write("CELL_PARAMETERS angstrom\n")
        for row in np.asarray(atoms.cell):
            out.write("  " + " ".join(f"{x:.12f}" for x in row) + "\n")
        out.write("ATOMIC_POSITIONS angstrom\n")
        for label, pos in zip(labels, atoms.positions):
            out.write(f"  {label} " + " ".join(f"{x:.12f}" for x in pos) + "\n")
        for name in KEPT_CARDS:
            card = self.pw.cards.get(name)
            if card is not None:
                out.write(f"{name} {card.option}\n".replace(" \n", "\n"))
                for _, text in card.body:
                    out.write(f"  {text}\n")
        return out.getvalue()


def _ibrav_cell(ibrav: int, alat: float, b_over_a: float, c_over_a: float) -> np.ndarray | None:
    """Lattice vectors (rows, bohr) of pw.x's Bravais lattices, as in QE's latgen.f90."""
    a, h = alat, alat / 2
    cells = {
        1: [[a, 0, 0], [0, a, 0], [0, 0, a]],
        2: [[-h, 0, h], [0, h, h], [-h, h, 0]],
        3: [[h, h, h], [-h, h, h], [-h, -h, h]],
        -3: [[-h, h, h], [h, -h, h], [h, h, -h]],
        4: [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, a * c_over_a]],
        6: [[a, 0, 0], [0, a, 0], [0, 0, a * c_over_a]],
        8: [[a, 0, 0], [0, a * b_over_a, 0], [0, 0, a * c_over_a]],
    }
    cell = cells.get(ibrav)
    return None if cell is None else np.array(cell, dtype=float)


def _as_ibrav0(pw: PwInput) -> str:
    """The input with ibrav != 0 re-written as ibrav = 0 + CELL_PARAMETERS alat, for ASE
    (whose reader takes ibrav = 0 only). celldm(1) stays: 'alat' positions need it."""
    ib = pw.setting("system", "ibrav")
    sys_ = pw.namelists["system"]
    if "celldm(1)" in sys_:
        alat = float(sys_["celldm(1)"].value)
        ratios = [float(sys_[k].value) if k in sys_ else 0.0 for k in ("celldm(2)", "celldm(3)")]
    elif "a" in sys_:
        alat = float(sys_["a"].value) / units.Bohr
        ratios = [float(sys_[k].value) / float(sys_["a"].value) if k in sys_ else 0.0
                  for k in ("b", "c")]
    else:
        raise QEInputError(pw.path, f"ibrav = {ib.value} needs celldm(1) (bohr) or A (angstrom)",
                           line=ib.line, setting="ibrav")
    cell = _ibrav_cell(int(ib.value), alat, *ratios)
    if cell is None:
        raise QEInputError(pw.path, f"ibrav = {ib.value} is not supported here (1, 2, 3, -3, 4, "
                           "6, 8 are); write the cell as ibrav = 0 with CELL_PARAMETERS",
                           line=ib.line, setting="ibrav")
    out = io.StringIO()
    for section, settings in pw.namelists.items():
        out.write(f"&{section.upper()}\n")
        for k, st in settings.items():
            if section == "system" and k.split("(")[0] in STRUCTURE_KEYS:
                continue
            out.write(f"  {k} = {'0' if (section, k) == ('system', 'ibrav') else st.raw}\n")
        if section == "system":
            out.write(f"  celldm(1) = {float(alat)!r}\n")
        out.write("/\n")
    out.write("CELL_PARAMETERS alat\n")
    for row in cell / alat:
        out.write(" ".join(repr(float(x)) for x in row) + "\n")
    for card in pw.cards.values():
        out.write(f"{card.name} {card.option}\n")
        for _, line in card.body:
            out.write(line + "\n")
    return out.getvalue()


def load_template(path) -> QETemplate:
    """Read and validate a pw.x input file; raises QEInputError naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise QEInputError(path, "QE input file not found; pass the path of your pw.x input "
                           "(e.g. qe:examples/si8.pwi)")
    source_text = path.read_text()
    pw = parse_pw_input(source_text, path)
    _check_keys(pw)
    if "system" not in pw.namelists:
        raise QEInputError(path, "missing namelist &SYSTEM (ibrav, nat, ntyp, ecutwfc)")
    nat = _require_int(pw, "system", "nat", "number of atoms")
    ntyp = _require_int(pw, "system", "ntyp", "number of species")
    _require_int(pw, "system", "ibrav", "Bravais lattice; 0 = give CELL_PARAMETERS")
    if pw.setting("system", "ecutwfc") is None:
        raise QEInputError(path, "&SYSTEM has no 'ecutwfc' (plane-wave cutoff in Ry); add "
                           "'ecutwfc = ...'", line=pw.namelist_lines["system"], setting="ecutwfc")
    pseudo_dir = resolve_pseudo_dir(pw, path.parent)
    species = _species(pw, pseudo_dir, ntyp)
    pos = pw.cards.get("ATOMIC_POSITIONS")
    if pos is None:
        raise QEInputError(path, "missing card ATOMIC_POSITIONS (the structure pw.x starts from)",
                           setting="ATOMIC_POSITIONS")
    known = {sp.label for sp in species}
    labels = []
    for lineno, text in pos.body:
        parts = text.split()
        if parts[0] not in known:
            card = difflib.get_close_matches(parts[0].upper(), CARD_NAMES, n=1, cutoff=0.8)
            hint = f"; a misspelled card {card[0]}?" if card else ""
            raise QEInputError(path, f"atom species '{parts[0]}' is not in ATOMIC_SPECIES "
                               f"({', '.join(sorted(known))}){hint}", line=lineno,
                               setting="ATOMIC_POSITIONS")
        if len(parts) < 4:
            raise QEInputError(path, f"ATOMIC_POSITIONS line '{text}' needs a label and three "
                               "coordinates", line=lineno, setting="ATOMIC_POSITIONS")
        try:
            [float(x.lower().replace("d", "e")) for x in parts[1:4]]
        except ValueError:
            raise QEInputError(path, f"coordinates in '{text}' are not numbers", line=lineno,
                               setting="ATOMIC_POSITIONS") from None
        labels.append(parts[0])
    if len(pos.body) != nat:
        s = pw.setting("system", "nat")
        raise QEInputError(path, f"nat = {nat} but ATOMIC_POSITIONS (line {pos.line}) lists "
                           f"{len(pos.body)} atoms; make them agree", line=s.line, setting="nat")
    if pw.value("system", "ibrav") == 0 and "CELL_PARAMETERS" not in pw.cards:
        raise QEInputError(path, "ibrav = 0 needs a CELL_PARAMETERS card",
                           line=pw.setting("system", "ibrav").line, setting="ibrav")
    source = source_text if pw.value("system", "ibrav") == 0 else _as_ibrav0(pw)
    try:
        atoms = ase.io.read(io.StringIO(source), format="espresso-in")
    except Exception as exc:
        raise QEInputError(path, f"could not build the structure: {exc}") from exc
    return QETemplate(pw, pseudo_dir, tuple(species), atoms, tuple(labels))
