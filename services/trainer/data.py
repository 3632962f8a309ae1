"""Labelled structures for training, from files and stores.

Files are read by the one reader, :func:`services.trainer.formats.read_structures`
(extxyz and anything ASE reads, mlearn JSON, n2p2 input.data, DeePMD folders, nnmd
stores); this module turns its ``ase.Atoms`` into the trainer's
``nnmd_kernels.training.Structure`` and insists on an energy. Stores (a folder or fsspec
URL, optionally "URL#campaign") are read directly, skipping records without an energy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnmd_kernels.training import Structure
from services.trainer.formats import is_store, labels_of
from services.trainer.formats import read_structures as read_atoms

__all__ = ["atoms_to_structure", "is_store", "read_ase", "read_mlearn_json", "read_store",
           "read_structures", "read_training_data"]


def atoms_to_structure(a, tag: str) -> Structure:
    """A training Structure from an ase.Atoms with its labels; ValueError without an energy."""
    energy, forces, stress = labels_of(a)
    if energy is None:
        raise ValueError(f"{tag}: no energy (field 'energy'); label it first, e.g. nnmd label")
    pbc = np.array(a.get_pbc(), dtype=bool)
    return Structure(a.positions.copy(), a.numbers.copy(), a.cell.array.copy() if pbc.any() else None,
                     pbc, energy, forces, stress, name=tag)


def _from_file(path, format: str | None = None, tag_stem: bool = False) -> list[Structure]:
    p = Path(str(path))
    label = p.stem if tag_stem else p.name
    out = []
    for k, a in enumerate(read_atoms(path, format)):
        group = a.info.get("group")
        tag = f"{label}[{k}]" + (f" {group}" if isinstance(group, str) and group else "")
        out.append(atoms_to_structure(a, tag))
    return out


def read_mlearn_json(path) -> list[Structure]:
    """mlearn's format: energies and forces (its ``virial_stress`` is not read; see formats)."""
    return _from_file(path, "mlearn", tag_stem=True)


def read_ase(path) -> list[Structure]:
    """Any file the reader knows (ASE formats included), with energies (forces and stress when
    present)."""
    return _from_file(path)


def store_label_name(structure_id: str, step: int) -> str:
    """The name a stored label gets as a training structure (campaigns hash it to choose
    their held-out labels, so it must not change)."""
    return f"store:{structure_id or step}"


def read_store(url: str, campaign: str | None = None) -> list[Structure]:
    from services.store.store import Store

    batch = Store(url, read_only=True).read(campaign=campaign)
    out = []
    for rec in batch:
        s, lab = rec.structure, rec.labels
        if not np.isfinite(lab.energy):
            continue
        out.append(Structure(s.positions, s.numbers, s.cell, np.asarray(s.pbc), lab.energy, lab.forces,
                             lab.stress, name=store_label_name(s.id, rec.provenance.step)))
    return out


def read_training_data(paths, format: str | None = None) -> list[Structure]:
    """Training structures from files (any format the reader knows; ``format`` forces one for
    all files) and stores (``DIR``, ``URL`` or ``URL#campaign``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for path in paths:
        path = str(path)
        if is_store(path) and format in (None, "store", "zarr"):
            url, _, campaign = path.partition("#")
            out.extend(read_store(url, campaign or None))
            continue
        if not is_store(path) and not Path(path).exists():
            raise FileNotFoundError(f"training data {path} does not exist")
        out.extend(_from_file(path, format))
    return out


# The older name: training Structures (not ase.Atoms; for those see formats.read_structures).
read_structures = read_training_data
