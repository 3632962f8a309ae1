"""The reference service: energies, forces and stresses from first principles
(pw.x from the user's QE input) or a built-in ASE calculator, with typed
failures that never become labels."""

from services.reference.labels import label_all, labelled
from services.reference.qe import QEBackend, QEConfig, RetryPolicy
from services.reference.qe_input import QEInputError, load_template
from services.reference.spec import SPEC_HELP, make_backend
from services.reference.types import (
    Failure,
    FailureReason,
    Outcome,
    ReferenceBackend,
    ReferenceError,
    Result,
)

__all__ = [
    "SPEC_HELP",
    "Failure",
    "FailureReason",
    "Outcome",
    "QEBackend",
    "QEConfig",
    "QEInputError",
    "ReferenceBackend",
    "ReferenceError",
    "Result",
    "RetryPolicy",
    "label_all",
    "labelled",
    "load_template",
    "make_backend",
]
