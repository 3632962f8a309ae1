"""The reference service: energies, forces and stresses from first principles
(pw.x from the user's QE input) or a built-in ASE calculator, with typed
failures that never become labels.

The names below load their module on first use (PEP 562), so importing one module of
the package (the client, say) does not load the others (the spec, QE, the service)."""

from __future__ import annotations

import importlib

_WHERE = {
    "label_all": "labels", "labelled": "labels",
    "QEBackend": "qe", "QEConfig": "qe", "RetryPolicy": "qe",
    "QEInputError": "qe_input", "load_template": "qe_input",
    "SPEC_HELP": "spec", "make_backend": "spec",
    "Failure": "types", "FailureReason": "types", "Outcome": "types",
    "ReferenceBackend": "types", "ReferenceError": "types", "Result": "types",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
