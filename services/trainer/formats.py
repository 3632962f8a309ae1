"""Labelled structures in and out of files: the one reader and the one writer of nnmd.

``read_structures(path, format=None) -> list[ase.Atoms]`` and
``write_structures(atoms_list, path, format=None) -> int``.

Every structure is an ``ase.Atoms`` (positions and cell in Angstrom, ``pbc``, atomic
numbers); its labels, when the file has them, are a ``SinglePointCalculator``'s
results: ``energy`` (eV), ``forces`` (eV/Angstrom, (N, 3)) and ``stress`` (eV/Angstrom^3,
ASE's sign: positive = tensile). ``services.runtime.convert.from_atoms`` and
``atoms.get_potential_energy()`` read them.

Formats (``format`` names; ``None`` = detect from the name and the first bytes):

=========  =====  =====  =====================================================================
name       read   write  what
=========  =====  =====  =====================================================================
extxyz     yes    yes    extended XYZ (ASE): energy, forces, stress, info and per-atom columns
mlearn     yes    yes    mlearn JSON: a list of {"structure": pymatgen dict, "outputs": {...}};
                         energy and forces (its ``virial_stress`` is neither read nor written)
n2p2       yes    yes    n2p2/RuNNer ``input.data``: begin/comment/lattice/atom/energy/charge/end;
                         energy and forces, no stress; read as Angstrom and eV
deepmd     yes    no     a DeePMD system folder (type.raw, type_map.raw, set.*/*.npy or *.raw),
                         or a folder of such systems; virial -> stress = -virial / volume
store      yes    no     an nnmd Zarr store: a folder with zarr.json or a URL, "URL#campaign"
(ASE)      yes    (yes)  any other ``ase.io`` format name (vasp, espresso-in, traj, ...)
=========  =====  =====  =====================================================================

Bad input raises ``ValueError`` naming the file, the line or record when known, and
what is wrong; a missing file raises ``FileNotFoundError``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers

NATIVE_READ = ("extxyz", "mlearn", "n2p2", "deepmd", "store")
NATIVE_WRITE = ("extxyz", "mlearn", "n2p2")
# which labels each writable format keeps (an ASE format: whatever ASE writes)
FORMAT_LABELS = {"extxyz": ("energy", "forces", "stress"), "mlearn": ("energy", "forces"),
                 "n2p2": ("energy", "forces")}
_ALIASES = {
    "xyz": "extxyz", "ext-xyz": "extxyz",
    "mlearn-json": "mlearn", "mlearn_json": "mlearn",  # ("json" stays ASE's database format)
    "input.data": "n2p2", "runner": "n2p2", "n2p2-data": "n2p2",
    "deepmd-raw": "deepmd", "deepmd-npy": "deepmd", "deepmd/raw": "deepmd", "deepmd/npy": "deepmd",
    "dp": "deepmd",
    "zarr": "store", "nnmd-store": "store",
}
FORMATS_HELP = ("extxyz, mlearn (JSON), n2p2 (input.data), deepmd (folder, read only), store "
                "(nnmd Zarr store, read only), or any ase.io format name")

# ------------------------------------------------------------------ names and detection


def canonical_format(name: str) -> str:
    """The canonical name of a format (``extxyz``, ``mlearn``, ``n2p2``, ``deepmd``, ``store``)
    or an ase.io format name; ValueError for anything else."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in NATIVE_READ:
        return key
    from ase.io.formats import ioformats

    if key in ioformats:
        return key
    raise ValueError(f"unknown format {name!r}: use {FORMATS_HELP}")


def is_store(path: str) -> bool:
    """An nnmd store: a URL (``scheme://``) or a folder holding zarr.json; "#campaign" allowed."""
    path = str(path)
    base = path.split("#")[0]
    return "://" in base or (Path(base).is_dir() and (Path(base) / "zarr.json").is_file())


def _deepmd_systems(folder: Path) -> list[Path]:
    """DeePMD system folders (holding type.raw) at or below ``folder``, sorted."""
    if (folder / "type.raw").is_file():
        return [folder]
    return sorted({p.parent for p in folder.rglob("type.raw") if p.is_file()})


def _head(path: Path, n: int = 4096) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _looks_like_n2p2(head: bytes) -> bool:
    for line in head.decode("utf-8", "replace").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        return words[0].lower() == "begin"
    return False


def detect_format(path, for_writing: bool = False) -> str:
    """The format of ``path`` from its name and, for reading, its first bytes."""
    path = str(path)
    if for_writing:
        name = Path(path).name.lower()
        if name.endswith((".xyz", ".extxyz")):
            return "extxyz"
        if name.endswith(".json"):
            return "mlearn"
        if name == "input.data" or name.endswith((".data", ".n2p2")):
            return "n2p2"
        from ase.io.formats import filetype

        try:
            return filetype(path, read=False)
        except Exception:
            raise ValueError(f"{path}: cannot tell the format from the name; give it "
                             f"({FORMATS_HELP})") from None
    if is_store(path):
        return "store"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if p.is_dir():
        if _deepmd_systems(p):
            return "deepmd"
        raise ValueError(f"{path}: is a directory, but neither an nnmd store (no zarr.json) "
                         "nor a DeePMD system (no type.raw in it); give a data file")
    head = _head(p)
    if not head.strip():
        raise ValueError(f"{path}: the file is empty")
    if _looks_like_n2p2(head):
        return "n2p2"
    name = p.name.lower()
    if name.endswith(".json"):
        return "mlearn" if head.lstrip().startswith(b"[") else "json"  # ASE's database JSON
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name == "type.raw":
        raise ValueError(f"{path}: part of a DeePMD system; give its folder {p.parent}")
    from ase.io.formats import filetype

    try:
        return filetype(path, read=True)
    except Exception as exc:
        raise ValueError(f"{path}: unknown format ({exc}); give it ({FORMATS_HELP})") from None


# ------------------------------------------------------------------ labels on Atoms


def _attach(atoms: Atoms, energy=None, forces=None, stress=None) -> Atoms:
    results = {}
    if energy is not None and np.isfinite(energy):
        results["energy"] = float(energy)
    if forces is not None:
        results["forces"] = np.asarray(forces, np.float64)
    if stress is not None:
        results["stress"] = np.asarray(stress, np.float64)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def labels_of(atoms: Atoms) -> tuple[float | None, np.ndarray | None, np.ndarray | None]:
    """(energy eV or None, forces (N, 3) or None, stress (3, 3) ASE sign or None)."""
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy")
    if energy is None:
        energy = results.get("free_energy")
    forces = results.get("forces")
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, np.float64)
        if stress.shape == (6,):
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        else:
            stress = stress.reshape(3, 3)
    return (None if energy is None else float(energy),
            None if forces is None else np.asarray(forces, np.float64), stress)


def _symbol_number(symbol: str, where: str) -> int:
    z = atomic_numbers.get(symbol)
    if z is None:
        z = atomic_numbers.get(symbol.capitalize())
    if z is None:
        raise ValueError(f"{where}: unknown element {symbol!r}")
    return z


# ------------------------------------------------------------------ reading


def read_structures(path, format: str | None = None) -> list[Atoms]:
    """Every structure in ``path`` as ase.Atoms with its labels attached (see the module doc).

    ``format``: one of ``extxyz, mlearn, n2p2, deepmd, store`` or an ase.io format name;
    None = detect. A store path may end in ``#campaign``.
    """
    path = str(path)
    fmt = canonical_format(format) if format else detect_format(path)
    if fmt == "store":
        return _read_store(path)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if fmt == "deepmd":
        if not p.is_dir():
            raise ValueError(f"{path}: a DeePMD system is a folder (type.raw, set.*/), not a file")
        frames = _read_deepmd(p)
    else:
        if p.is_dir():
            raise ValueError(f"{path}: is a directory, not a {fmt} file")
        _head(p, 1)  # unreadable -> one clear line
        if fmt == "mlearn":
            frames = _read_mlearn(p)
        elif fmt == "n2p2":
            frames = _read_n2p2(p)
        else:
            frames = _read_ase(p, fmt)
    if not frames:
        raise ValueError(f"{path}: no structures in it")
    return frames


def _read_ase(path: Path, fmt: str) -> list[Atoms]:
    from ase.io import read

    try:
        frames = read(str(path), index=":", format=fmt)
    except Exception as exc:  # ASE raises many types for unreadable files
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {msg})") from None
    if isinstance(frames, Atoms):
        frames = [frames]
    return list(frames)


def _read_store(path: str) -> list[Atoms]:
    import math

    from services.runtime.convert import to_atoms
    from services.store.store import Store

    url, _, campaign = path.partition("#")
    frames = []
    for rec in Store(url, read_only=True).read(campaign=campaign or None):
        a = to_atoms(rec.structure, rec.labels)
        for key in ("campaign", "chain", "step", "source", "model_version",
                    "reference_settings_hash"):
            value = getattr(rec.provenance, key)
            if value != "" and not (isinstance(value, float) and math.isnan(value)) and not (
                    key == "model_version" and value == 0):
                a.info[f"nnmd_{key}"] = value
        frames.append(a)
    return frames


# ---- mlearn JSON


def _read_mlearn(path: Path) -> list[Atoms]:
    """mlearn's format: energies and forces. Its ``virial_stress`` is not read: its component
    order, unit and sign convention are not documented with the data, and a wrongly-signed
    stress would silently harm training. Measured on mlearn-Si (against a model trained on
    its energies and forces, 2026-12-03): kBar, compression positive (VASP's sign), but the
    off-diagonal order differs between groups of the same file: the Elastic cells' sheared
    components are (xy, yz, zx) in columns 3-5, while in Vacancy and AIMD-NVT columns 4 and
    5 correlate with the predicted xz and yz (0.98 and 0.97-0.98; against yz and xz 0.12-0.28
    and 0.22-0.33). No single reading is right for every entry."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (mlearn JSON expected)") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of mlearn entries "
                         "({\"structure\": ..., \"outputs\": ...}), got a JSON "
                         f"{type(data).__name__}")
    out = []
    for k, entry in enumerate(data):
        tag = f"{path}: entry {k}"
        if not isinstance(entry, dict):
            raise ValueError(f"{tag}: expected an object with 'structure' and 'outputs'")
        try:
            st = entry["structure"]
            cell = np.array(st["lattice"]["matrix"], dtype=np.float64)
            sites = st["sites"]
            pos = np.array([s["xyz"] for s in sites], dtype=np.float64)
            symbols = [s["species"][0]["element"] for s in sites]
            outputs = entry["outputs"]
            energy = float(outputs["energy"])
        except KeyError as exc:
            raise ValueError(f"{tag}: missing field {exc}") from None
        except (TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"{tag}: malformed structure or outputs ({exc})") from None
        if cell.shape != (3, 3):
            raise ValueError(f"{tag}: lattice matrix has shape {cell.shape}, expected (3, 3)")
        n = len(symbols)
        if n == 0 or pos.shape != (n, 3):
            raise ValueError(f"{tag}: sites need 3 Cartesian 'xyz' each (got shape {pos.shape})")
        numbers = [_symbol_number(str(s), f"{tag}, site {i}") for i, s in enumerate(symbols)]
        forces = outputs.get("forces")
        if forces is not None:
            try:
                forces = np.array(forces, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{tag}: outputs.forces is not numbers ({exc})") from None
            if forces.shape != (n, 3):
                raise ValueError(f"{tag}: outputs.forces has shape {forces.shape}, expected "
                                 f"({n}, 3) for {n} sites")
        a = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)
        for key in ("group", "tag"):
            if isinstance(entry.get(key), str) and entry[key]:
                a.info[key] = entry[key]
        out.append(_attach(a, energy, forces))
    return out


def _write_mlearn(frames: list[Atoms], path: str, shown: str) -> None:
    entries = []
    for k, a in enumerate(frames):
        tag = f"{shown}: structure {k}"
        if not a.pbc.all() or abs(a.cell.volume) < 1e-12:
            raise ValueError(f"{tag}: mlearn JSON (pymatgen Structure) needs a periodic cell "
                             f"(pbc {a.pbc.tolist()}); write extxyz instead")
        energy, forces, _ = labels_of(a)
        if energy is None:
            raise ValueError(f"{tag}: no energy; mlearn JSON needs labelled structures "
                             "(label them first, e.g. nnmd label)")
        frac = a.cell.scaled_positions(a.positions)
        symbols = a.get_chemical_symbols()
        sites = [{"species": [{"element": s, "occu": 1}], "abc": f.tolist(), "xyz": x.tolist(),
                  "label": s, "properties": {}} for s, f, x in zip(symbols, frac, a.positions)]
        outputs = {"energy": energy}
        if forces is not None:
            outputs["forces"] = forces.tolist()
        entries.append({
            "structure": {"@module": "pymatgen.core.structure", "@class": "Structure",
                          "charge": 0, "lattice": {"matrix": a.cell.array.tolist(),
                                                   "pbc": [True, True, True]},
                          "properties": {}, "sites": sites},
            "outputs": outputs, "num_atoms": len(a),
            "group": str(a.info.get("group", "")), "tag": str(a.info.get("tag", "")),
        })
    with open(path, "w") as fh:
        json.dump(entries, fh)


# ---- n2p2 input.data


def _read_n2p2(path: Path) -> list[Atoms]:
    """n2p2/RuNNer input.data, read as Angstrom and eV (the file does not say its units)."""
    name = str(path)
    out: list[Atoms] = []
    cur = None  # the structure being read: dict
    try:
        with open(path, encoding="utf-8") as fh:
            lines = list(fh)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (n2p2 input.data expected)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None

    def floats(words, lineno, what):
        try:
            return [float(w) for w in words]
        except ValueError:
            bad = next(w for w in words if not _is_float(w))
            raise ValueError(f"{name} line {lineno}: {what}: {bad!r} is not a number") from None

    for lineno, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key, rest = words[0].lower(), words[1:]
        if cur is None:
            if key != "begin":
                raise ValueError(f"{name} line {lineno}: expected 'begin', got {words[0]!r}")
            cur = {"line": lineno, "lattice": [], "symbols": [], "pos": [], "forces": [],
                   "charges": [], "energy": None, "charge": None, "comment": ""}
            continue
        if key == "begin":
            raise ValueError(f"{name} line {lineno}: 'begin' before the 'end' of the structure "
                             f"that begins on line {cur['line']}")
        if key == "comment":
            cur["comment"] = line.strip()[len(words[0]):].strip()
        elif key == "lattice":
            if len(rest) != 3:
                raise ValueError(f"{name} line {lineno}: lattice line needs 3 fields, "
                                 f"got {len(rest)}")
            cur["lattice"].append(floats(rest, lineno, "lattice"))
        elif key == "atom":
            if len(rest) != 9:
                raise ValueError(f"{name} line {lineno}: atom line needs 9 fields (x y z element "
                                 f"charge energy fx fy fz), got {len(rest)}")
            xyz = floats(rest[0:3], lineno, "atom position")
            _symbol_number(rest[3], f"{name} line {lineno}")
            q, _atom_energy = floats(rest[4:6], lineno, "atom charge/energy")
            f = floats(rest[6:9], lineno, "atom force")
            cur["symbols"].append(rest[3])
            cur["pos"].append(xyz)
            cur["charges"].append(q)
            cur["forces"].append(f)
        elif key in ("energy", "charge"):
            if len(rest) != 1:
                raise ValueError(f"{name} line {lineno}: {key} line needs 1 field, got {len(rest)}")
            if cur[key] is not None:
                raise ValueError(f"{name} line {lineno}: a second {key} line in the structure that "
                                 f"begins on line {cur['line']}")
            cur[key] = floats(rest, lineno, key)[0]
        elif key == "end":
            out.append(_n2p2_structure(cur, name, lineno))
            cur = None
        else:
            raise ValueError(f"{name} line {lineno}: unknown keyword {words[0]!r} (expected "
                             "comment, lattice, atom, energy, charge or end)")
    if cur is not None:
        raise ValueError(f"{name}: the structure that begins on line {cur['line']} has no 'end'")
    return out


def _is_float(w: str) -> bool:
    try:
        float(w)
        return True
    except ValueError:
        return False


def _n2p2_structure(cur: dict, name: str, lineno: int) -> Atoms:
    where = f"{name} line {lineno}"
    if not cur["symbols"]:
        raise ValueError(f"{where}: the structure that begins on line {cur['line']} has no atoms")
    n_lat = len(cur["lattice"])
    if n_lat not in (0, 3):
        raise ValueError(f"{where}: the structure that begins on line {cur['line']} has {n_lat} "
                         "lattice lines; need 3 (periodic) or none (not periodic)")
    numbers = [_symbol_number(s, where) for s in cur["symbols"]]
    a = Atoms(numbers=numbers, positions=np.array(cur["pos"]),
              cell=np.array(cur["lattice"]) if n_lat else None, pbc=n_lat == 3)
    if any(cur["charges"]):
        a.set_initial_charges(cur["charges"])
    if cur["comment"]:
        a.info["comment"] = cur["comment"]
    if cur["charge"]:
        a.info["charge"] = cur["charge"]
    return _attach(a, cur["energy"], np.array(cur["forces"], np.float64))


def _num(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same float64


def _write_n2p2(frames: list[Atoms], path: str, shown: str) -> None:
    lines = []
    for k, a in enumerate(frames):
        tag = f"{shown}: structure {k}"
        energy, forces, _ = labels_of(a)
        if energy is None or forces is None:
            raise ValueError(f"{tag}: no {'energy' if energy is None else 'forces'}; n2p2 "
                             "input.data needs energy and forces (label them first, e.g. "
                             "nnmd label)")
        pbc = a.pbc
        if pbc.any() and not pbc.all():
            raise ValueError(f"{tag}: pbc {pbc.tolist()}: input.data is periodic in all three "
                             "directions or none; write extxyz instead")
        comment = str(a.info.get("comment", a.info.get("name", ""))).replace("\n", " ").strip()
        lines.append("begin")
        if comment:
            lines.append(f"comment {comment}")
        if pbc.all():
            lines.extend("lattice " + " ".join(_num(x) for x in row) for row in a.cell.array)
        charges = a.get_initial_charges()
        for s, x, q, f in zip(a.get_chemical_symbols(), a.positions, charges, forces):
            lines.append(f"atom {_num(x[0])} {_num(x[1])} {_num(x[2])} {s} {_num(q)} 0.0 "
                         f"{_num(f[0])} {_num(f[1])} {_num(f[2])}")
        lines.append(f"energy {_num(energy)}")
        try:
            total_charge = float(a.info.get("charge", np.sum(charges)))
        except (TypeError, ValueError):
            total_charge = float(np.sum(charges))
        lines.append(f"charge {_num(total_charge)}")
        lines.append("end")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


# ---- DeePMD


def _read_deepmd(folder: Path) -> list[Atoms]:
    systems = _deepmd_systems(folder)
    if not systems:
        raise ValueError(f"{folder}: no DeePMD system in it (no type.raw)")
    out = []
    for system in systems:
        out.extend(_read_deepmd_system(system))
    return out


def _load(path: Path, shape_tail: int, n_frames: int | None = None) -> np.ndarray:
    """A DeePMD array (nframes, shape_tail) from .npy or .raw."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim > 2:  # e.g. coord as (frames, N, 3)
        arr = arr.reshape(arr.shape[0], -1)
    if arr.ndim == 1 and shape_tail == 1:
        arr = arr[:, None]
    if arr.ndim == 1 and n_frames == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != shape_tail or (n_frames is not None
                                                       and arr.shape[0] != n_frames):
        want = f"({n_frames if n_frames is not None else 'frames'}, {shape_tail})"
        raise ValueError(f"{path}: shape {arr.shape}, expected {want}")
    return arr


def _read_deepmd_system(system: Path) -> list[Atoms]:
    try:
        types = np.loadtxt(system / "type.raw", dtype=np.int64, ndmin=1)
    except Exception as exc:
        raise ValueError(f"{system / 'type.raw'}: cannot read it ({exc})") from None
    types = types.ravel()
    if types.size == 0:
        raise ValueError(f"{system / 'type.raw'}: no atoms")
    map_file = system / "type_map.raw"
    if not map_file.is_file():
        raise ValueError(f"{system}: no type_map.raw, so the elements of the atom types are "
                         "unknown; write one element symbol per line (type 0 first)")
    type_map = map_file.read_text().split()
    if types.min() < 0 or types.max() >= len(type_map):
        raise ValueError(f"{system / 'type.raw'}: type {int(types.max())} but type_map.raw "
                         f"names {len(type_map)} elements")
    numbers = np.array([_symbol_number(type_map[t], str(map_file)) for t in types])
    n = numbers.size
    periodic = not (system / "nopbc").exists()
    sets = sorted(p for p in system.glob("set.*") if p.is_dir())
    if sets:
        chunks = [(s, ".npy") for s in sets]
        if any((s / "real_atom_types.npy").exists() for s in sets):
            raise ValueError(f"{system}: mixed-type DeePMD data (real_atom_types.npy) is not "
                             "supported")
    elif (system / "coord.raw").is_file():
        chunks = [(system, ".raw")]
    else:
        raise ValueError(f"{system}: no set.* folders and no coord.raw: no frames")
    out = []
    for d, ext in chunks:
        coord_file = d / f"coord{ext}"
        if not coord_file.is_file():
            raise ValueError(f"{d}: no coord{ext}")
        coord = _load(coord_file, 3 * n)
        nf = coord.shape[0]
        box = None
        if (d / f"box{ext}").is_file():
            box = _load(d / f"box{ext}", 9, nf)
        elif periodic:
            raise ValueError(f"{d}: no box{ext} (and no 'nopbc' file in {system})")
        energy = _load(d / f"energy{ext}", 1, nf)[:, 0] if (d / f"energy{ext}").is_file() else None
        force = _load(d / f"force{ext}", 3 * n, nf) if (d / f"force{ext}").is_file() else None
        virial = _load(d / f"virial{ext}", 9, nf) if (d / f"virial{ext}").is_file() else None
        for i in range(nf):
            cell = box[i].reshape(3, 3) if box is not None else None
            a = Atoms(numbers=numbers, positions=coord[i].reshape(n, 3),
                      cell=cell if periodic else None, pbc=periodic)
            stress = None
            if virial is not None and periodic:
                volume = abs(np.linalg.det(cell))
                if volume <= 0:
                    raise ValueError(f"{d / ('box' + ext)}: frame {i}: singular box")
                stress = -virial[i].reshape(3, 3) / volume
            _attach(a, None if energy is None else energy[i],
                    None if force is None else force[i].reshape(n, 3), stress)
            out.append(a)
    return out


# ------------------------------------------------------------------ writing


def write_structures(atoms_list, path, format: str | None = None) -> int:
    """Writes the structures to ``path`` (extxyz, mlearn, n2p2 or an ase.io format that writes);
    returns how many. The file is written next to ``path`` under a temporary name and renamed
    over it at the end: a failed write leaves ``path`` as it was."""
    frames = [atoms_list] if isinstance(atoms_list, Atoms) else list(atoms_list)
    path = str(path)
    fmt = canonical_format(format) if format else detect_format(path, for_writing=True)
    if fmt in ("deepmd", "store"):
        hint = " (use nnmd store import)" if fmt == "store" else ""
        raise ValueError(f"{path}: writing {fmt} is not supported{hint}; write extxyz, mlearn or "
                         "n2p2")
    if fmt not in NATIVE_WRITE:
        from ase.io.formats import ioformats

        io = ioformats[fmt]
        if not io.can_write:
            raise ValueError(f"{path}: ASE cannot write the format {fmt!r}")
        if io.single and len(frames) != 1:
            raise ValueError(f"{path}: the format {fmt!r} holds one structure, got {len(frames)}; "
                             "write extxyz for several")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ValueError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        if fmt == "mlearn":
            _write_mlearn(frames, tmp, path)
        elif fmt == "n2p2":
            _write_n2p2(frames, tmp, path)
        else:
            _write_ase(frames, tmp, path, fmt)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(frames)


def _write_ase(frames: list[Atoms], tmp: str, shown: str, fmt: str) -> None:
    from ase.io import write

    try:
        write(tmp, frames if len(frames) != 1 else frames[0], format=fmt)
    except Exception as exc:
        msg = " ".join(str(exc).replace(tmp, shown).split()) or type(exc).__name__
        raise ValueError(f"{shown}: cannot write it as {fmt} ({type(exc).__name__}: {msg})") from None


def lost_labels(frames: list[Atoms], fmt: str) -> dict[str, int]:
    """Labels the structures carry that ``fmt`` does not keep: {label: structures}."""
    keeps = FORMAT_LABELS.get(fmt)
    if keeps is None:
        return {}
    lost: dict[str, int] = {}
    for a in frames:
        for key, value in zip(("energy", "forces", "stress"), labels_of(a)):
            if value is not None and key not in keeps:
                lost[key] = lost.get(key, 0) + 1
    return lost


__all__ = ["FORMATS_HELP", "FORMAT_LABELS", "canonical_format", "detect_format", "is_store",
           "labels_of", "lost_labels", "read_structures", "write_structures"]


def read_structure(path, option: str = "--structure", index=-1) -> Atoms:
    """One structure from any file ASE reads (the last frame by default), or a one-line
    ValueError naming the option, the file and what is wrong with it."""
    import ase.io

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{option} {path}: no such file")
    if p.is_dir():
        raise ValueError(f"{option} {path}: is a directory; give a structure file")
    try:
        atoms = ase.io.read(p, index=index)
    except Exception as exc:  # ASE raises many kinds for a malformed file
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{option} {path}: cannot read a structure from it ({why}); give "
                         "a file ASE reads (extxyz, cif, POSCAR, QE input, ...)") from None
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise ValueError(f"{option} {path}: holds no atoms")
    return atoms


def read_structures_for(option: str, path, format: str | None = None) -> list[Atoms]:
    """read_structures with the command-line option that named the file in every error."""
    try:
        return read_structures(path, format)
    except FileNotFoundError:
        raise FileNotFoundError(f"{option} {path}: no such file") from None
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
