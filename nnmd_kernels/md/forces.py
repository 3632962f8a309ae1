"""Force functions force_fn(positions, cell) -> (energy, forces, virial) for the integrators."""

from __future__ import annotations

import numpy as np

from nnmd_kernels.gpu.device import gpu_available
from nnmd_kernels.neighbors import NeighborList


def potential_force_fn(potential, numbers, pbc=(True, True, True), skin=1.0, backend="auto"):
    """The NNP as a force function; its neighbour list is reused with a Verlet skin (A).

    Elements the model lacks raise ValueError here, before any step runs. One force
    function per replica: each keeps its own neighbour list.
    Returns force_fn(positions (N, 3) A, cell (3, 3) A) -> (eV, (N, 3) eV/A, (3, 3) eV).
    """
    numbers = np.asarray(numbers)
    potential.types_of(numbers)  # unknown species -> a clear ValueError now
    if backend == "cuda" or (backend == "auto" and gpu_available()):
        # neighbours and forces on the GPU, numpy in and out for these integrators;
        # nnmd_kernels.gpu.md keeps the whole step on the device
        from nnmd_kernels.gpu.md import device_force_fn

        return device_force_fn(potential, numbers, pbc, skin, host=True)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    neighbors = NeighborList(potential.cutoff, skin=skin)

    def force_fn(positions, cell):
        res = potential.compute(positions, numbers, cell if pbc.any() else None, pbc,
                                neighbors=neighbors, backend=backend)
        return res.energy, res.forces, res.virial

    force_fn.neighbors = neighbors  # exposed for diagnostics (n_builds)
    return force_fn
