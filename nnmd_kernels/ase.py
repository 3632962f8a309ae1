"""ASE adapter: the potential as an ase.calculators.calculator.Calculator.

The only module of nnmd_kernels that imports ASE. Neighbour lists are kept
between calls with a Verlet skin, so MD with ASE integrators does not rebuild
them every step.
"""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

from .neighbors import NeighborList
from .potential import Potential


class NNPCalculator(Calculator):
    """energy, free_energy (eV), forces (eV/A), stress (eV/A^3, Voigt), energies (eV per atom).

    Extra results: 'energy_std' (ensemble spread of the total energy, eV) and
    'virial' (3x3, eV).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential: Potential | str, skin: float = 1.0, backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(potential, Potential):
            potential = Potential.load(potential)
        self.potential = potential
        self.backend = backend
        self.neighbors = NeighborList(potential.cutoff, skin=skin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        pbc = a.get_pbc()
        cell = a.cell.array if pbc.any() else None
        res = self.potential.compute(a.positions, a.numbers, cell, pbc, neighbors=self.neighbors,
                                     backend=self.backend)
        self.results["energy"] = res.energy
        self.results["free_energy"] = res.energy
        self.results["energies"] = res.energies
        self.results["forces"] = res.forces
        self.results["energy_std"] = res.energy_std
        self.results["virial"] = res.virial
        if res.stress is not None:
            s = 0.5 * (res.stress + res.stress.T)
            self.results["stress"] = s.flat[[0, 4, 8, 5, 2, 1]]
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
