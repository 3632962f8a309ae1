"""Observers for MD runs (both engines): a thermo log and an extxyz trajectory.

Each is called as fn(frame) with an MDFrame: the engines build one at the observed steps
so that a writer never needs to know which engine produced the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnmd_kernels.md.state import MDState, kinetic_energy, kinetic_tensor
from nnmd_kernels.md.units import EV_PER_A3_TO_GPA, KB_EV_PER_K


@dataclass(frozen=True)
class MDFrame:
    """Positions (N, 3) A, velocities (N, 3) A/fs, cell (3, 3) A, energy eV, virial (3, 3) eV;
    forces (N, 3) eV/A or None."""

    step: int
    time_fs: float
    numbers: np.ndarray
    masses: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    virial: np.ndarray
    forces: np.ndarray | None = None

    @classmethod
    def from_state(cls, s: MDState) -> MDFrame:
        return cls(s.step, s.time_fs, s.numbers, s.masses, s.positions, s.velocities, s.cell,
                   s.pbc, s.energy, s.virial, s.forces)

    @property
    def kinetic(self) -> float:
        return kinetic_energy(self.velocities, self.masses)

    @property
    def temperature(self) -> float:
        dof = max(3 * len(self.masses) - 3, 1)
        return 2.0 * self.kinetic / (dof * KB_EV_PER_K)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @property
    def pressure_gpa(self) -> float:
        """Instantaneous pressure (virial + kinetic), GPa."""
        p = (kinetic_tensor(self.velocities, self.masses) + self.virial) / self.volume
        return float(np.trace(p)) / 3.0 * EV_PER_A3_TO_GPA

    def to_atoms(self):
        from ase import Atoms, units

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                      pbc=self.pbc, masses=self.masses)
        atoms.set_velocities(self.velocities / units.fs)  # A/fs -> ASE velocity units
        atoms.info.update(step=int(self.step), time_fs=float(self.time_fs),
                          potential_energy=float(self.energy))
        if self.forces is not None:
            atoms.arrays["forces"] = np.array(self.forces)
        return atoms


class ThermoLog:
    """Whitespace-separated columns: step time_fs T_K Epot_eV Ekin_eV Etot_eV P_GPa V_A3."""

    HEADER = "# step time_fs T_K Epot_eV Ekin_eV Etot_eV P_GPa V_A3\n"

    def __init__(self, stream, echo=None):
        self.stream = stream
        self.echo = echo
        self.stream.write(self.HEADER)

    def __call__(self, frame: MDFrame) -> None:
        k = frame.kinetic
        line = (f"{frame.step:d} {frame.time_fs:.3f} {frame.temperature:.3f} {frame.energy:.8f} "
                f"{k:.8f} {frame.energy + k:.8f} {frame.pressure_gpa:.7f} {frame.volume:.4f}\n")
        self.stream.write(line)
        self.stream.flush()
        if self.echo is not None:
            self.echo.write(line)


class ExtxyzTrajectory:
    """Appends frames (positions, momenta, cell, forces, time_fs, step) to an extxyz file."""

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "w")  # noqa: SIM115 - kept open across frames

    def __call__(self, frame: MDFrame) -> None:
        from ase.io import write

        write(self._file, frame.to_atoms(), format="extxyz")
        self._file.flush()

    def close(self):
        self._file.close()


def velocities_of(atoms):
    """Velocities (N, 3) A/fs of an ase.Atoms that carries momenta, else None."""
    from ase import units

    if "momenta" not in atoms.arrays:
        return None
    return atoms.get_velocities() * units.fs


class StoreTrajectory:
    """Appends frames to trajectory `name` of a Zarr store (services.store StoreWriter).

    Returns the number of frames committed after each call (the frame is durable then).
    """

    def __init__(self, writer, name: str):
        self.writer = writer
        self.name = name

    def __call__(self, frame: MDFrame) -> int:
        return self.writer.append_frames(
            self.name, np.asarray(frame.numbers), frame.positions[None], cell=frame.cell[None],
            step=np.array([frame.step]), time_fs=np.array([frame.time_fs]),
            energy=np.array([frame.energy]), temperature=np.array([frame.temperature]),
            velocities=frame.velocities[None])


def fan_out(*observers):
    """One observer calling each given one (None entries skipped); None if none given."""
    fns = [f for f in observers if f is not None]
    if not fns:
        return None

    def call(frame):
        for f in fns:
            f(frame)

    return call
