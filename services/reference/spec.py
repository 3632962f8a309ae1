"""One string selects the reference: ``emt``, ``qe:path/to/input.pwi``,
``tblite:GFN1-xTB``, ``chgnet``, ``lammps:potential.lmp`` (services/reference/lammps_ref.py),
``ase:pkg.mod:make_calc``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from services.reference.ase_backend import (
    chgnet_backend,
    emt_backend,
    factory_backend,
    tblite_backend,
)
from services.reference.qe import QEBackend, QEConfig
from services.reference.types import ReferenceBackend

SPEC_HELP = ("emt | qe:path/to/input.pwi | tblite[:GFN1-xTB|GFN2-xTB] | chgnet | "
             "lammps:path/to/potential.lmp | ase:pkg.module:factory | service:HOST:PORT")


def make_backend(spec: str, qe: QEConfig | None = None) -> ReferenceBackend:
    """The backend a spec string names. qe: how pw.x runs (ranks, timeout, retries).

    Raises ValueError for a malformed spec or a bad QE input (QEInputError, naming
    the line), ImportError when an optional package is missing.
    """
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "emt" and not rest:
        return emt_backend()
    if kind == "qe":
        if not rest:
            raise ValueError("reference 'qe:' needs the pw.x input file: qe:path/to/input.pwi")
        return QEBackend(rest, qe)
    if kind == "tblite":
        return tblite_backend(rest or "GFN1-xTB")
    if kind == "chgnet" and not rest:
        return chgnet_backend()
    if kind == "ase":
        return factory_backend(rest)
    if kind == "lammps":
        if not rest:
            raise ValueError("reference 'lammps:' needs the file of LAMMPS interaction "
                             "commands: lammps:path/to/potential.lmp")
        from services.reference.lammps_ref import LammpsBackend

        return LammpsBackend(rest)
    if kind == "service":
        if rest.count(":") != 1:
            raise ValueError(f"reference '{spec}': expected service:HOST:PORT of a running "
                             "`nnmd serve reference`")
        return _remote_backend(rest)
    raise ValueError(f"unknown reference '{spec}'; use one of: {SPEC_HELP}")


# The client of a running Reference service, named, not imported: this module (what a
# spec string means) does not depend on the client, which depends on neither the spec
# nor the service module (tests/unit/reference/test_import_layers.py).
REMOTE_BACKEND = "services.reference.client:ReferenceClient"


def _remote_backend(address: str) -> ReferenceBackend:
    import importlib

    module, name = REMOTE_BACKEND.split(":")
    return getattr(importlib.import_module(module), name)(address)


def settings_hash(backend: ReferenceBackend) -> str:
    """What makes two labels comparable: the backend's name (its spec), and for QE
    the input text and the pseudopotential files' contents. 16 hex digits."""
    h = hashlib.sha256(backend.name.encode())
    if backend.name.startswith("lammps:"):
        h.update(Path(backend.name[len("lammps:"):]).read_bytes())
    if isinstance(backend, QEBackend):
        h.update(Path(backend.input_path).read_bytes())
        for sp in backend.template.species:
            h.update(sp.pseudo.read_bytes())
    return h.hexdigest()[:16]
