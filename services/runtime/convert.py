"""Proto <-> numpy <-> ase.Atoms, and validation of incoming structures.

The one place where the wire format (``nnmd.v1.Structure``/``Labels``, flat
arrays with units in the field names) meets arrays. Units: positions and cell
Angstrom, velocities Angstrom/fs (ASE's own velocity unit is Angstrom per ASE
time unit; the conversion is the factor ``ase.units.fs``), energy eV, forces
eV/Angstrom, stress eV/Angstrom^3 in ASE's sign convention, (3, 3) matrix.

Every structure that arrives over the network goes through
:func:`validate_structure`; a bad one raises :class:`InvalidArgument` naming
the field, which servers return as INVALID_ARGUMENT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from services.proto.nnmd.v1 import common_pb2
from services.runtime.errors import InvalidArgument

MAX_ATOMIC_NUMBER = len(chemical_symbols) - 1  # 118
DEFAULT_MAX_ATOMS = int(os.environ.get("NNMD_MAX_ATOMS", "1000000"))
MAX_ID_CHARS = 1024  # Structure.id and Structure.restart_from_id
# ase.Atoms.info keys of Structure.id and Structure.restart_from_id. "id" is still
# read (an older name of nnmd_id) when nnmd_id is absent.
ID_KEY = "nnmd_id"
RESTART_FROM_KEY = "nnmd_restart_from"


@dataclass(frozen=True)
class StructureArrays:
    """One structure as arrays. N atoms.

    positions (N, 3) Angstrom; numbers (N,) int32; cell (3, 3) Angstrom, rows
    a, b, c, or None; pbc (3,) bool; velocities (N, 3) Angstrom/fs or None.
    id: the caller's id (``Structure.id``, ase ``atoms.info["nnmd_id"]``);
    restart_from: ``Structure.restart_from_id`` (``atoms.info["nnmd_restart_from"]``).
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    velocities: np.ndarray | None = None
    id: str = ""
    # id of an earlier structure whose reference state (QE SCF) may seed this one's
    restart_from: str = ""

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])


@dataclass(frozen=True)
class LabelArrays:
    """Labels: energy eV (NaN = absent), forces (N, 3) eV/A or None, stress (3, 3) eV/A^3 or None."""

    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


@dataclass(frozen=True)
class Limits:
    """What a server accepts. allowed_numbers None = any element 1..118."""

    max_atoms: int = DEFAULT_MAX_ATOMS
    allowed_numbers: frozenset[int] | None = None
    allow_vacancy: bool = False
    # Smallest accepted |det(cell)| / (|a||b||c|): below it the cell is singular.
    min_cell_sine: float = 1e-6


# ---------------------------------------------------------------- validation


def validate_structure(
    s: StructureArrays, limits: Limits = Limits(), field: str = "structure"
) -> StructureArrays:
    """Checks sizes, finiteness, elements and cell; returns ``s`` (float64/int32/bool arrays)."""
    numbers = np.asarray(s.numbers)
    if numbers.ndim != 1:
        raise InvalidArgument(f"{field}.numbers", f"must be 1-D, got shape {numbers.shape}")
    n = numbers.shape[0]
    if n == 0:
        raise InvalidArgument(f"{field}.numbers", "no atoms", "send at least one atom")
    if n > limits.max_atoms:
        raise InvalidArgument(
            f"{field}.numbers",
            f"{n} atoms is more than the limit {limits.max_atoms}",
            "split the structure or raise the server's max_atoms (NNMD_MAX_ATOMS)",
        )
    if not np.issubdtype(numbers.dtype, np.integer):
        raise InvalidArgument(f"{field}.numbers", f"must be integers, got {numbers.dtype}")
    lo = 0 if limits.allow_vacancy else 1
    bad = (numbers < lo) | (numbers > MAX_ATOMIC_NUMBER)
    if limits.allowed_numbers is not None:
        allowed = set(limits.allowed_numbers) | ({0} if limits.allow_vacancy else set())
        bad |= ~np.isin(numbers, sorted(allowed))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        known = (
            "elements 1..118"
            if limits.allowed_numbers is None
            else "elements "
            + ", ".join(chemical_symbols[z] for z in sorted(limits.allowed_numbers))
        )
        raise InvalidArgument(
            f"{field}.numbers[{i}]",
            f"unknown element {int(numbers[i])}",
            f"this server accepts {known}",
        )

    positions = _float_array(s.positions, (n, 3), f"{field}.positions_angstrom")
    velocities = None
    if s.velocities is not None:
        velocities = _float_array(s.velocities, (n, 3), f"{field}.velocities_angstrom_per_fs")
    pbc = np.zeros(3, bool) if s.pbc is None else np.asarray(s.pbc)
    if pbc.shape != (3,):
        raise InvalidArgument(f"{field}.pbc", f"needs 3 flags, got shape {pbc.shape}")
    pbc = pbc.astype(bool)
    cell = None
    if s.cell is not None:
        cell = _float_array(s.cell, (3, 3), f"{field}.cell_angstrom")
        if not cell.any() and not pbc.any():
            cell = None  # an all-zero cell of a non-periodic structure = no cell
    if pbc.any():
        if cell is None:
            raise InvalidArgument(
                f"{field}.cell_angstrom", "periodic structure without a cell", "send a (3, 3) cell"
            )
        norms = np.linalg.norm(cell, axis=1)
        volume = abs(np.linalg.det(cell))
        if norms.min() == 0.0 or volume / np.prod(norms) < limits.min_cell_sine:
            raise InvalidArgument(
                f"{field}.cell_angstrom",
                f"singular cell (volume {volume:.3g} A^3)",
                "the three cell vectors must be linearly independent",
            )
    for name, value in (("id", s.id), ("restart_from_id", s.restart_from)):
        if len(value) > MAX_ID_CHARS:
            raise InvalidArgument(f"{field}.{name}", f"is {len(value)} characters long, more "
                                  f"than {MAX_ID_CHARS}", "send a shorter id, e.g. "
                                  "campaign/chain/step")
        if "\x00" in value:
            raise InvalidArgument(f"{field}.{name}", "contains a NUL character",
                                  "send printable text, e.g. campaign/chain/step")
    return StructureArrays(positions, numbers.astype(np.int32), cell, pbc, velocities, s.id,
                           s.restart_from)


def _float_array(x, shape: tuple[int, ...], field: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size != int(np.prod(shape)):
        raise InvalidArgument(
            field, f"has {a.size} values, expected {int(np.prod(shape))} (shape {shape})"
        )
    a = a.reshape(shape)
    if not np.isfinite(a).all():
        i = np.unravel_index(int(np.flatnonzero(~np.isfinite(a))[0]), shape)
        raise InvalidArgument(
            f"{field}{list(int(k) for k in i)}", "is NaN or infinite", "send finite numbers"
        )
    return a


# ---------------------------------------------------------------- proto <-> numpy


def structure_from_proto(
    msg: common_pb2.Structure, limits: Limits = Limits(), field: str = "structure"
) -> StructureArrays:
    """Unpacks and validates a Structure message."""
    n = len(msg.numbers)
    s = StructureArrays(
        positions=np.array(msg.positions_angstrom, dtype=np.float64),
        numbers=np.array(msg.numbers, dtype=np.int64),
        cell=np.array(msg.cell_angstrom, dtype=np.float64) if len(msg.cell_angstrom) else None,
        pbc=np.array(msg.pbc, dtype=bool) if len(msg.pbc) else None,
        velocities=(
            np.array(msg.velocities_angstrom_per_fs, dtype=np.float64)
            if len(msg.velocities_angstrom_per_fs)
            else None
        ),
        id=msg.id,
        restart_from=msg.restart_from_id,
    )
    if s.positions.size != 3 * n:
        raise InvalidArgument(
            f"{field}.positions_angstrom",
            f"has {s.positions.size} values for {n} atoms",
            "send 3 values per atom (flattened (N, 3))",
        )
    return validate_structure(s, limits, field)


def structure_to_proto(s: StructureArrays) -> common_pb2.Structure:
    msg = common_pb2.Structure(
        positions_angstrom=np.asarray(s.positions, np.float64).ravel().tolist(),
        numbers=np.asarray(s.numbers).astype(int).tolist(),
        id=s.id,
        restart_from_id=s.restart_from,
    )
    if s.cell is not None:
        msg.cell_angstrom.extend(np.asarray(s.cell, np.float64).ravel().tolist())
    if s.pbc is not None:
        msg.pbc.extend(bool(p) for p in np.asarray(s.pbc).ravel())
    if s.velocities is not None:
        msg.velocities_angstrom_per_fs.extend(np.asarray(s.velocities, np.float64).ravel().tolist())
    return msg


def labels_from_proto(msg: common_pb2.Labels, n_atoms: int, field: str = "labels") -> LabelArrays:
    energy = msg.energy_ev if msg.HasField("energy_ev") else float("nan")
    forces = (
        _float_array(msg.forces_ev_per_angstrom, (n_atoms, 3), f"{field}.forces_ev_per_angstrom")
        if len(msg.forces_ev_per_angstrom)
        else None
    )
    stress = (
        _float_array(msg.stress_ev_per_angstrom3, (3, 3), f"{field}.stress_ev_per_angstrom3")
        if len(msg.stress_ev_per_angstrom3)
        else None
    )
    return LabelArrays(float(energy), forces, stress)


def labels_to_proto(labels: LabelArrays) -> common_pb2.Labels:
    msg = common_pb2.Labels()
    if not np.isnan(labels.energy):
        msg.energy_ev = float(labels.energy)
    if labels.forces is not None:
        msg.forces_ev_per_angstrom.extend(np.asarray(labels.forces, np.float64).ravel().tolist())
    if labels.stress is not None:
        msg.stress_ev_per_angstrom3.extend(stress_3x3(labels.stress).ravel().tolist())
    return msg


def stress_3x3(stress) -> np.ndarray:
    """ASE gives stress as Voigt (6,) [xx, yy, zz, yz, xz, xy] or (3, 3)."""
    stress = np.asarray(stress, np.float64)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress.reshape(3, 3)


# ---------------------------------------------------------------- numpy <-> ase


def to_atoms(s: StructureArrays, labels: LabelArrays | None = None) -> Atoms:
    """An ase.Atoms (velocities converted to ASE units; labels attached as a SinglePointCalculator)."""
    atoms = Atoms(
        numbers=np.asarray(s.numbers),
        positions=np.asarray(s.positions, np.float64),
        cell=None if s.cell is None else np.asarray(s.cell, np.float64),
        pbc=None if s.pbc is None else np.asarray(s.pbc, bool),
    )
    if s.velocities is not None:
        atoms.set_velocities(np.asarray(s.velocities, np.float64) / units.fs)
    if s.id:
        atoms.info[ID_KEY] = s.id
    if s.restart_from:
        atoms.info[RESTART_FROM_KEY] = s.restart_from
    if labels is not None:
        results = {}
        if not np.isnan(labels.energy):
            results["energy"] = float(labels.energy)
        if labels.forces is not None:
            results["forces"] = np.asarray(labels.forces, np.float64)
        if labels.stress is not None:
            results["stress"] = stress_3x3(labels.stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def from_atoms(atoms: Atoms) -> tuple[StructureArrays, LabelArrays]:
    """Arrays and labels (from a calculator's stored results, if any) of an ase.Atoms."""
    cell = np.array(atoms.cell[:], dtype=np.float64)
    velocities = None
    if atoms.has("momenta"):
        velocities = atoms.get_velocities() * units.fs
    s = StructureArrays(
        positions=np.array(atoms.positions, dtype=np.float64),
        numbers=np.array(atoms.numbers, dtype=np.int32),
        cell=cell if cell.any() else None,
        pbc=np.array(atoms.pbc, dtype=bool),
        velocities=velocities,
        id=str(atoms.info.get(ID_KEY) or atoms.info.get("id") or ""),
        restart_from=str(atoms.info.get(RESTART_FROM_KEY) or ""),
    )
    energy, forces, stress = float("nan"), None, None
    results = atoms.calc.results if atoms.calc is not None else {}
    if "energy" in results:
        energy = float(results["energy"])
    if "forces" in results:
        forces = np.array(results["forces"], dtype=np.float64)
    if "stress" in results:
        stress = stress_3x3(results["stress"])
    return s, LabelArrays(energy, forces, stress)


def json_safe(x):
    """x as plain JSON values: NaN/inf become null, numpy arrays lists, numpy scalars
    Python numbers (integers stay integers), other objects strings. Always valid JSON."""
    import math

    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f if math.isfinite(f) else None
