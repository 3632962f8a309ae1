"""What the tests that run real pw.x need, and the pytest marks that skip them (with the
reason) where Quantum ESPRESSO is not installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SI8 = ROOT / "examples" / "si8.pwi"
MPIRUN = "/usr/bin/mpirun"
PSEUDO = Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF")

MISSING = [what for what, ok in (
    ("pw.x on PATH", shutil.which("pw.x")),
    (MPIRUN, os.path.exists(MPIRUN)),
    (str(PSEUDO), PSEUDO.exists()),
) if not ok]
QE_MARKS = [
    pytest.mark.qe,
    pytest.mark.skipif(bool(MISSING), reason="Quantum ESPRESSO not installed (missing "
                       f"{', '.join(MISSING)}); run scripts/install.sh as root"),
]
