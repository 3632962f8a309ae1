"""The Zarr store's schema: every group, array, shape, dtype and unit, in one place.

Index names: S = structures (records), A = atoms over all records, F = frames,
N = atoms per frame. Ragged structures are flat atom arrays plus offsets:
the atoms of record s are rows ``offsets[s]:offsets[s + 1]`` of the atom arrays.
Absent labels are NaN. Strings are Zarr v3 variable-length UTF-8.

Schema 2 (many writers): every group commit is a log segment ``log/<seq>.seg``
created exclusively (services/store/log.py); record ids follow the segments'
order after the records the Zarr arrays hold, and a writer folds segments into
the arrays now and then (``committed`` then also says up to which segment,
``"log"``). Schema 1 stores (arrays only) read as they are; a schema 2 writer
upgrades them (their arrays are the part before the log).

Commit protocol of the arrays (what makes readers see whole records only): the writer
first writes the data rows past the committed end, then rewrites the group's
``committed`` attribute; readers read ``committed`` first and never look past
it. Chunk and metadata writes are atomic per key (temp file + rename locally,
one PUT on object stores), so a crash leaves the old or the new version of
every key, and rows below ``committed`` are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: arrays only, one writer; 2: + the record log and leases
ROOT_ATTR = "nnmd_store"  # root group attribute: {"schema": SCHEMA_VERSION}
COMMITTED_ATTR = "committed"  # group attribute holding the committed counts


@dataclass(frozen=True)
class Field:
    name: str
    dims: tuple[str, ...]  # "S", "A", "F", "N", or fixed integers
    dtype: str
    unit: str
    fill: object
    doc: str


SOURCE_KINDS = ("aimd", "hmc", "mc", "import")

# Group "structures": the labelled dataset.
STRUCTURES_GROUP = "structures"
STRUCTURE_FIELDS = (
    Field("offsets", ("S+1",), "int64", "", 0, "first atom row of each record; offsets[0] = 0"),
    Field("positions", ("A", 3), "float64", "Angstrom", np.nan, "Cartesian positions"),
    Field("numbers", ("A",), "int32", "", 0, "atomic numbers (0 = vacancy site)"),
    Field("velocities", ("A", 3), "float64", "Angstrom/fs", np.nan, "NaN when not given"),
    Field("forces", ("A", 3), "float64", "eV/Angstrom", np.nan, "NaN when not computed"),
    Field("cell", ("S", 3, 3), "float64", "Angstrom", np.nan, "rows a, b, c; zeros = no cell"),
    Field("pbc", ("S", 3), "bool", "", False, "periodic along a, b, c"),
    Field("energy", ("S",), "float64", "eV", np.nan, "total potential energy; NaN = absent"),
    Field("stress", ("S", 3, 3), "float64", "eV/Angstrom^3", np.nan, "ASE sign; NaN = absent"),
    # provenance
    Field("campaign", ("S",), "str", "", "", "campaign name"),
    Field("chain", ("S",), "str", "", "", "chain name within the campaign"),
    Field("step", ("S",), "int64", "", -1, "chain step"),
    Field("source", ("S",), "str", "", "", "one of " + ", ".join(SOURCE_KINDS)),
    Field("model_version", ("S",), "int64", "", 0, "model that proposed it; 0 = none"),
    Field("accepted", ("S",), "bool", "", False, "Metropolis/HMC decision"),
    Field("reference_settings_hash", ("S",), "str", "", "", "hash of reference settings"),
    Field("wall_time", ("S",), "float64", "s", np.nan, "wall time of the label"),
    Field("structure_id", ("S",), "str", "", "", "caller id of the structure"),
)
STRUCTURE_CHUNK = 1024  # records per chunk
ATOM_CHUNK = 8192  # atom rows per chunk

# Group "trajectories/<name>": fixed atom count N per trajectory.
TRAJECTORIES_GROUP = "trajectories"
TRAJECTORY_FIELDS = (
    Field("numbers", ("N",), "int32", "", 0, "atomic numbers (written once)"),
    Field("positions", ("F", "N", 3), "float64", "Angstrom", np.nan, "frame positions"),
    Field("velocities", ("F", "N", 3), "float64", "Angstrom/fs", np.nan, "NaN when not saved"),
    Field("cell", ("F", 3, 3), "float64", "Angstrom", np.nan, "rows a, b, c"),
    Field("step", ("F",), "int64", "", -1, "MD step"),
    Field("time", ("F",), "float64", "fs", np.nan, "simulation time"),
    Field("energy", ("F",), "float64", "eV", np.nan, "potential energy"),
    Field("temperature", ("F",), "float64", "K", np.nan, "instantaneous temperature"),
)
FRAME_CHUNK = 64

# Group "models/v<version>": array "file" (uint8 bytes of the model file) and
# attributes (metadata, "sha256", "size", "complete"). Group "models" attribute
# "latest" is the highest complete version (versions start at 1).
MODELS_GROUP = "models"
MODEL_BYTES_CHUNK = 1 << 20

# Raw keys "checkpoints/<campaign>/<chain>.json": one small JSON document per
# chain, replaced atomically (latest wins).
CHECKPOINTS_PREFIX = "checkpoints"
# Raw keys "documents/<kind>/<name>.json": small JSON documents of services (the
# coordinator's record of each campaign it runs: its spec, and a user's Stop).
DOCUMENTS_PREFIX = "documents"


def model_group(version: int) -> str:
    return f"{MODELS_GROUP}/v{version:06d}"


def shape_of(field: Field, counts: dict[str, int]) -> tuple[int, ...]:
    out = []
    for d in field.dims:
        if d == "S+1":
            out.append(counts["S"] + 1)
        elif isinstance(d, str):
            out.append(counts[d])
        else:
            out.append(d)
    return tuple(out)


def table() -> str:
    """The schema as a Markdown table (docs/store.md is generated from this)."""
    rows = [
        "| group | array | shape | dtype | unit | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group, fields in (
        (STRUCTURES_GROUP, STRUCTURE_FIELDS),
        (TRAJECTORIES_GROUP + "/<name>", TRAJECTORY_FIELDS),
    ):
        for f in fields:
            shape = (
                "(" + ", ".join(str(d) for d in f.dims) + ("," if len(f.dims) == 1 else "") + ")"
            )
            rows.append(f"| {group} | {f.name} | {shape} | {f.dtype} | {f.unit} | {f.doc} |")
    return "\n".join(rows)
