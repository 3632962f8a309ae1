"""Molecular dynamics: integrators as (init_fn, step_fn) over a frozen MDState.

Units: Angstrom, fs, eV, amu (velocities A/fs); see nnmd_kernels.md.units.
"""

from nnmd_kernels.md.integrators import (
    bussi_factor,
    init,
    npt_scr,
    nve,
    nvt_bussi,
    nvt_langevin,
)
from nnmd_kernels.md.run import run, run_batch
from nnmd_kernels.md.state import (
    MDState,
    degrees_of_freedom,
    kinetic_energy,
    maxwell_boltzmann,
    pressure,
    pressure_tensor,
    temperature,
)

__all__ = [
    "MDState",
    "bussi_factor",
    "degrees_of_freedom",
    "init",
    "kinetic_energy",
    "maxwell_boltzmann",
    "npt_scr",
    "nve",
    "nvt_bussi",
    "nvt_langevin",
    "pressure",
    "pressure_tensor",
    "run",
    "run_batch",
    "temperature",
]
