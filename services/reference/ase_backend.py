"""Any ASE calculator as a reference: EMT (the embedded default), tblite
(GFN1-xTB), CHGNet (a pretrained GNN teacher) or a user's factory
``pkg.mod:make_calc``.

A calculator exception, or non-finite numbers, become a typed ``Failure``;
they are never returned as a label.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from services.reference.types import Failure, FailureReason, Outcome, Result


class ASEBackend:
    """Label structures with an ASE calculator made by ``factory()``.

    One calculator is made per backend and reused; stress is asked for only for
    fully periodic structures.
    """

    def __init__(self, factory: Callable[[], Calculator], name: str):
        self.name = name
        self._factory = factory
        self._calc: Calculator | None = None

    @property
    def calculator(self) -> Calculator:
        if self._calc is None:
            self._calc = self._factory()
            if not hasattr(self._calc, "get_potential_energy"):
                raise TypeError(f"reference '{self.name}': the factory returned "
                                f"{type(self._calc).__name__}, not an ASE calculator")
        return self._calc

    def compute_one(self, atoms: Atoms) -> Outcome:
        a = atoms.copy()
        a.calc = self.calculator
        t0 = time.monotonic()
        try:
            energy = float(a.get_potential_energy())
            forces = np.array(a.get_forces(), dtype=float)  # (n_atoms, 3) eV/A
            stress = None
            if a.pbc.all() and a.cell.rank == 3:
                stress = np.array(a.get_stress(voigt=False), dtype=float)  # (3, 3) eV/A^3
        except Exception as exc:  # any calculator error is a failed label, not a crash
            return Failure(FailureReason.CRASHED, f"{type(exc).__name__}: {exc}",
                           info={"backend": self.name})
        finite = np.isfinite(energy) and np.isfinite(forces).all() and (
            stress is None or np.isfinite(stress).all())
        if not finite:
            return Failure(FailureReason.CRASHED, "the calculator returned non-finite numbers",
                           info={"backend": self.name})
        return Result(energy, forces, stress,
                      info={"backend": self.name, "attempts": 1,
                            "wall_s": time.monotonic() - t0})

    def compute(self, atoms_list: Sequence[Atoms]) -> list[Outcome]:
        return [self.compute_one(a) for a in atoms_list]


def _emt() -> Calculator:
    from ase.calculators.emt import EMT

    return EMT()


def _tblite_factory(method: str) -> Callable[[], Calculator]:
    def make() -> Calculator:
        from tblite.ase import TBLite

        return TBLite(method=method, verbosity=0)

    return make


def _chgnet() -> Calculator:
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(model=CHGNet.load(), use_device="cpu")


def load_factory(target: str) -> Callable[[], Calculator]:
    """'pkg.mod:make_calc' -> the callable (ValueError naming what is wrong)."""
    if ":" not in target:
        raise ValueError(f"reference 'ase:{target}': expected 'ase:module.path:factory', e.g. "
                         "'ase:ase.calculators.emt:EMT'")
    mod_name, attr = target.rsplit(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"reference 'ase:{target}': cannot import module '{mod_name}' ({exc})"
                         ) from exc
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"reference 'ase:{target}': module '{mod_name}' has no callable "
                         f"'{attr}'")
    return factory


def optional_available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def emt_backend() -> ASEBackend:
    return ASEBackend(_emt, "emt")


def tblite_backend(method: str = "GFN1-xTB") -> ASEBackend:
    if not optional_available("tblite.ase"):
        raise ImportError("reference 'tblite' needs the tblite package: "
                          "pip install 'nnmd[tblite]' (or pip install tblite)")
    return ASEBackend(_tblite_factory(method), f"tblite:{method}")


def chgnet_backend() -> ASEBackend:
    if not optional_available("chgnet"):
        raise ImportError("reference 'chgnet' needs the chgnet package: "
                          "pip install 'nnmd[chgnet]' (or pip install chgnet)")
    return ASEBackend(_chgnet, "chgnet")


def factory_backend(target: str) -> ASEBackend:
    return ASEBackend(load_factory(target), f"ase:{target}")
