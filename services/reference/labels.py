"""Turn reference results into labelled ASE structures (and back).

A labelled structure carries its numbers in a SinglePointCalculator, so any ASE
writer (extxyz) stores energy, forces and stress with it; provenance goes to
``atoms.info`` as scalars (extxyz keeps them in the comment line).
"""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from services.reference.types import Failure, ReferenceBackend, Result

INFO_KEYS = ("backend", "attempts", "energy_ry", "scf_iterations", "wall_s")


def labelled(atoms: Atoms, result: Result, source: str = "label", **provenance) -> Atoms:
    """Copy of ``atoms`` holding ``result`` (energy eV, forces eV/A, stress eV/A^3)."""
    if not isinstance(result, Result):
        raise TypeError(f"only a Result can label a structure, got {type(result).__name__}")
    out = atoms.copy()
    out.calc = None
    props = {"energy": result.energy, "free_energy": result.energy, "forces": result.forces}
    if result.stress is not None:
        props["stress"] = result.stress
    out.calc = SinglePointCalculator(out, **props)
    out.info["source"] = source
    for k in INFO_KEYS:
        v = result.info.get(k)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out.info[f"ref_{k}" if k != "backend" else "reference"] = v
    out.info.update(provenance)
    return out


def label_all(backend: ReferenceBackend, structures: Sequence[Atoms], source: str = "label"
              ) -> tuple[list[Atoms], list[tuple[int, Failure]]]:
    """Label every structure; return (labelled structures, [(index, failure)])."""
    outcomes = backend.compute(list(structures))
    if len(outcomes) != len(structures):
        raise RuntimeError(f"reference '{backend.name}' returned {len(outcomes)} outcomes for "
                           f"{len(structures)} structures")
    done, failed = [], []
    for i, (atoms, outcome) in enumerate(zip(structures, outcomes)):
        if isinstance(outcome, Result):
            done.append(labelled(atoms, outcome, source=source, index=i))
        else:
            failed.append((i, outcome))
    return done, failed
