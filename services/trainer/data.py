"""Read labelled structures for training from files and stores.

Accepted inputs (any mix):
- any file ASE can read with energies and forces (extxyz first);
- the mlearn JSON format (a list of {"structure": pymatgen dict, "outputs": {...}}),
  read without pymatgen: the lattice matrix and each site's Cartesian "xyz";
- an nnmd Zarr store (a folder or fsspec URL), optionally "URL#campaign".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnmd_kernels.elements import atomic_number
from nnmd_kernels.training import Structure


def read_mlearn_json(path) -> list[Structure]:
    """mlearn's format: energies and forces. Its `virial_stress` is not read: its
    component order and sign convention are not documented with the data, and a
    wrongly-signed stress would silently harm training."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of mlearn entries")
    out = []
    for k, entry in enumerate(data):
        tag = f"{path}: entry {k}"
        try:
            st = entry["structure"]
            cell = np.array(st["lattice"]["matrix"], dtype=np.float64)
            sites = st["sites"]
            pos = np.array([s["xyz"] for s in sites], dtype=np.float64)
            nums = np.array([atomic_number(s["species"][0]["element"]) for s in sites])
            outputs = entry["outputs"]
            energy = float(outputs["energy"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{tag}: missing field {exc}") from None
        forces = outputs.get("forces")
        forces = None if forces is None else np.array(forces, dtype=np.float64)
        stress = None
        name = f"{Path(path).stem}[{k}]" + (f" {entry.get('group', '')}" if entry.get("group") else "")
        out.append(Structure(pos, nums, cell, np.array([True] * 3), energy, forces, stress, name=name))
    return out


def read_ase(path) -> list[Structure]:
    from ase.io import read

    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # ASE raises many types for unreadable files
        raise ValueError(f"{path}: ASE cannot read it ({type(exc).__name__}: {exc})") from None
    out = []
    for k, a in enumerate(frames):
        tag = f"{Path(path).name}[{k}]"
        try:
            energy = a.get_potential_energy()
        except Exception:
            raise ValueError(f"{tag}: no energy (field 'energy'); label it first, e.g. nnmd label") from None
        try:
            forces = a.get_forces()
        except Exception:
            forces = None
        try:
            stress = a.get_stress(voigt=False)
        except Exception:
            stress = None
        pbc = a.get_pbc()
        out.append(Structure(a.positions.copy(), a.numbers.copy(), a.cell.array.copy() if pbc.any() else None,
                             pbc.copy(), energy, forces, stress, name=tag))
    return out


def read_store(url: str, campaign: str | None = None) -> list[Structure]:
    from services.store.store import Store

    batch = Store(url, read_only=True).read(campaign=campaign)
    out = []
    for rec in batch:
        s, lab = rec.structure, rec.labels
        if not np.isfinite(lab.energy):
            continue
        out.append(Structure(s.positions, s.numbers, s.cell, np.asarray(s.pbc), lab.energy, lab.forces,
                             lab.stress, name=f"store:{s.id or rec.provenance.step}"))
    return out


def is_store(path: str) -> bool:
    p = Path(path.split("#")[0])
    return "://" in path or (p.is_dir() and (p / "zarr.json").exists())


def read_structures(paths) -> list[Structure]:
    out = []
    for path in paths:
        path = str(path)
        if is_store(path):
            url, _, campaign = path.partition("#")
            out.extend(read_store(url, campaign or None))
            continue
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"training data {path} does not exist")
        if p.suffix == ".json":
            out.extend(read_mlearn_json(p))
        else:
            out.extend(read_ase(p))
    return out
