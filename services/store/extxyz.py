"""Import and export of labelled structures as extended XYZ (ase.io)."""

from __future__ import annotations

import math
from pathlib import Path

import ase.io

from services.runtime.convert import from_atoms, to_atoms
from services.store.store import Provenance, Record, Store, StoreWriter, safe_name

_PROV_KEYS = (
    "campaign",
    "chain",
    "step",
    "source",
    "model_version",
    "accepted",
    "reference_settings_hash",
    "wall_time",
)


def export_extxyz(
    store: Store,
    path: str | Path,
    start: int = 0,
    stop: int | None = None,
    campaign: str | None = None,
) -> int:
    """Writes committed records [start, stop) (optionally one campaign) to ``path``; returns the count.

    Provenance goes into each frame's info as ``nnmd_<field>``.
    """
    frames = []
    for rec in store.read(start, stop):
        if campaign is not None and rec.provenance.campaign != campaign:
            continue
        atoms = to_atoms(rec.structure, rec.labels)
        for key in _PROV_KEYS:
            value = getattr(rec.provenance, key)
            # ASE's extxyz reader mis-parses "key=" with an empty value: leave those out
            if value != "" and not (isinstance(value, float) and math.isnan(value)):
                atoms.info[f"nnmd_{key}"] = value
        frames.append(atoms)
    ase.io.write(str(path), frames, format="extxyz")
    return len(frames)


def import_extxyz(
    writer: StoreWriter,
    path: str | Path,
    campaign: str = "import",
    reference_settings_hash: str = "",
) -> list[int]:
    """Appends every frame of an extxyz file (energy/forces/stress when present) with source "import"."""
    path = Path(path)
    safe_name(campaign, "campaign")
    frames = ase.io.read(str(path), index=":", format="extxyz")
    chain = safe_name(path.stem.replace(" ", "_") or "file", "chain")
    records = []
    for k, atoms in enumerate(frames):
        s, labels = from_atoms(atoms)
        records.append(
            Record(
                s,
                labels,
                Provenance(
                    campaign=campaign,
                    chain=chain,
                    step=k,
                    source="import",
                    reference_settings_hash=reference_settings_hash
                    or str(atoms.info.get("nnmd_reference_settings_hash", "")),
                ),
            )
        )
    return writer.append(records) if records else []
