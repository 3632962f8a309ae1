"""What a reference calculation returns: a labelled result or a typed failure.

Units (one place): energy eV, forces eV/A with shape (n_atoms, 3), stress eV/A^3
with shape (3, 3) in ASE's sign convention (positive = tensile, i.e. the cell
wants to shrink; pressure = -trace/3). A ``Failure`` carries no numbers at all,
so a failed calculation can never be mistaken for a label.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from ase import Atoms


class FailureReason(enum.StrEnum):
    NOT_CONVERGED = "not_converged"  # SCF did not converge (pw.x exit code 2)
    CRASHED = "crashed"  # the program or calculator stopped with an error
    TIMEOUT = "timeout"  # killed after the configured wall-clock limit
    MISSING_PSEUDO = "missing_pseudo"  # a pseudopotential file is not where the input says
    MISSING_EXECUTABLE = "missing_executable"  # pw.x or mpirun not found
    BAD_INPUT = "bad_input"  # the structure or the settings cannot be run as given


@dataclass(frozen=True)
class Result:
    """One converged reference calculation.

    energy: eV. forces: (n_atoms, 3) eV/A. stress: (3, 3) eV/A^3 (ASE sign) or None
    where the reference has none (non-periodic structures). info: provenance
    (backend, attempts, wall time, program-specific numbers such as energy_ry).
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    ok = True


@dataclass(frozen=True)
class Failure:
    """A calculation that produced no usable label, and why.

    scratch: the folder kept for inspection (None when it was cleaned up).
    """

    reason: FailureReason
    message: str
    attempts: int = 1
    scratch: str | None = None
    info: dict = field(default_factory=dict)

    ok = False

    def __str__(self) -> str:
        where = f" (kept in {self.scratch})" if self.scratch else ""
        return f"{self.reason.value}: {self.message}{where}"


Outcome = Result | Failure


@runtime_checkable
class ReferenceBackend(Protocol):
    """Anything that labels structures: ``compute(atoms_list) -> [Result | Failure]``.

    The output has one entry per input structure, in order. A backend never
    raises for a structure it cannot compute; it returns a ``Failure`` for it.
    """

    name: str

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]: ...


class ReferenceError(RuntimeError):
    """Raised where a caller needs a label and the reference returned a Failure."""

    def __init__(self, failure: Failure):
        super().__init__(str(failure))
        self.failure = failure
