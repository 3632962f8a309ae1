"""A reference backend seen as an ASE calculator, so ASE's integrators can run
first-principles MD with it. A failed calculation raises ReferenceError: the
dynamics stop instead of stepping on numbers that do not exist."""

from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

from services.reference.types import ReferenceBackend, ReferenceError, Result


class ReferenceCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, backend: ReferenceBackend, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        self.last_result: Result | None = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        outcome = self.backend.compute([self.atoms])[0]
        if not isinstance(outcome, Result):
            raise ReferenceError(outcome)
        self.last_result = outcome
        self.results = {"energy": outcome.energy, "free_energy": outcome.energy,
                        "forces": outcome.forces}
        if outcome.stress is not None:
            self.results["stress"] = outcome.stress
