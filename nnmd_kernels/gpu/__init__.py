"""GPU kernels (numba.cuda; CuPy arrays accepted). Importing a kernel module (potential_cuda,
descriptor_cuda, ...) needs numba.cuda, which on a machine without a GPU works only in numba's
simulator (NUMBA_ENABLE_CUDASIM=1).

Importing this package itself imports neither numba.cuda nor CuPy: it registers the "cuda"
backend of Potential (`nnmd_kernels.potential.register_backend`), whose functions import
potential_cuda on first use, and which backend="auto" picks when CuPy sees a device.
`import nnmd_kernels` imports this package, so backend="cuda" is always known.
"""

from __future__ import annotations

from ..potential import register_backend
from .device import gpu_available


def _compute(potential, positions, numbers, cell=None, pbc=False, *, neighbors=None, forces=True):
    from . import potential_cuda

    return potential_cuda.compute(potential, positions, numbers, cell, pbc, neighbors=neighbors, forces=forces)


def _compute_pairs(potential, types, pair_i, pair_j, rij, n_centers, *, forces=True):
    from . import potential_cuda

    return potential_cuda.compute_pairs(potential, types, pair_i, pair_j, rij, n_centers, forces=forces)


register_backend("cuda", _compute, _compute_pairs, available=gpu_available)
