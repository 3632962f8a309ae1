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
    forces (N, 3) eV/A or None; max_force_dev eV/A (an ensemble's model deviation) or None."""

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
    max_force_dev: float | None = None

    @classmethod
    def from_state(cls, s: MDState, max_force_dev: float | None = None) -> MDFrame:
        return cls(s.step, s.time_fs, s.numbers, s.masses, s.positions, s.velocities, s.cell,
                   s.pbc, s.energy, s.virial, s.forces, max_force_dev)

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
        if self.max_force_dev is not None:
            atoms.info["max_force_dev"] = float(self.max_force_dev)  # eV/A
        if self.forces is not None:
            atoms.arrays["forces"] = np.array(self.forces)
        return atoms


class ThermoLog:
    """Whitespace-separated columns: step time_fs T_K Epot_eV Ekin_eV Etot_eV P_GPa V_A3,
    then max_force_dev_eV_A (the ensemble's model deviation) with deviation=True.

    echo (e.g. sys.stdout) gets the same lines plus an ETA column: the remaining wall
    time, h:mm:ss, from the mean wall time per step so far (`-` on the first line);
    total_steps is the run's length (no ETA column without it). The header goes to the
    stream, and to echo when echo_header (default True).
    """

    HEADER = "# step time_fs T_K Epot_eV Ekin_eV Etot_eV P_GPa V_A3\n"
    DEVIATION_COLUMN = "max_force_dev_eV_A"

    def __init__(self, stream, echo=None, *, deviation: bool = False,
                 total_steps: int | None = None, echo_header: bool = True, clock=None):
        import time

        self.stream = stream
        self.echo = echo
        self.deviation = deviation
        self.total_steps = total_steps
        self.clock = clock or time.monotonic
        self._t0 = None  # (wall time, step) of the first line
        self.header = self.header_line(deviation)
        self.stream.write(self.header)
        if echo is not None and echo_header:
            echo.write(self.echo_header_line(deviation, total_steps is not None))

    @classmethod
    def header_line(cls, deviation: bool = False) -> str:
        return cls.HEADER[:-1] + (f" {cls.DEVIATION_COLUMN}\n" if deviation else "\n")

    @classmethod
    def echo_header_line(cls, deviation: bool = False, eta: bool = True) -> str:
        return cls.header_line(deviation)[:-1] + (" ETA\n" if eta else "\n")

    def eta(self, step: int) -> str:
        """Remaining wall time as h:mm:ss ('-' before any step has been timed)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = (now, step)
        t0, s0 = self._t0
        if self.total_steps is None or step <= s0:
            return "-"
        left = max(self.total_steps - step, 0) * (now - t0) / (step - s0)
        left = int(round(left))
        return f"{left // 3600:d}:{left // 60 % 60:02d}:{left % 60:02d}"

    def __call__(self, frame: MDFrame) -> None:
        k = frame.kinetic
        line = (f"{frame.step:d} {frame.time_fs:.3f} {frame.temperature:.3f} {frame.energy:.8f} "
                f"{k:.8f} {frame.energy + k:.8f} {frame.pressure_gpa:.7f} {frame.volume:.4f}")
        if self.deviation:
            dev = frame.max_force_dev
            line += " nan" if dev is None else f" {dev:.6g}"
        eta = self.eta(frame.step)
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.echo is not None:
            self.echo.write(line + (f" {eta}\n" if self.total_steps is not None else "\n"))
            flush = getattr(self.echo, "flush", None)
            if flush is not None:
                flush()

    def note(self, text: str) -> None:
        """A comment line (`# text`) in the log, e.g. why the run stopped."""
        self.stream.write(f"# {text}\n")
        self.stream.flush()


class ExtxyzTrajectory:
    """Appends frames (positions, momenta, cell, forces, time_fs, step) to an extxyz file."""

    def __init__(self, path):
        self.path = str(path)
        self._file = open(self.path, "w")  # noqa: SIM115 - kept open across frames

    def __call__(self, frame: MDFrame) -> None:
        from ase.io import write

        # parallel=False: under MPI (LAMMPS ranks) ASE's write is otherwise collective
        # (it broadcasts from rank 0), and only rank 0 writes frames
        write(self._file, frame.to_atoms(), format="extxyz", parallel=False)
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
