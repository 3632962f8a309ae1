"""Force functions force_fn(positions, cell) -> (energy, forces, virial) for the integrators."""

from __future__ import annotations

import numpy as np

from nnmd_kernels.gpu.device import gpu_available
from nnmd_kernels.neighbors import NeighborList


def potential_force_fn(potential, numbers, pbc=(True, True, True), skin=1.0, backend="auto"):
    """The NNP as a force function; its neighbour list is reused with a Verlet skin (A).

    Elements the model lacks raise ValueError here, before any step runs. One force
    function per replica: each keeps its own neighbour list (and one for the real-space
    pairs of the potential's Coulomb term, when it has one).
    Returns force_fn(positions (N, 3) A, cell (3, 3) A) -> (eV, (N, 3) eV/A, (3, 3) eV).
    """
    numbers = np.asarray(numbers)
    potential.types_of(numbers)  # unknown species -> a clear ValueError now
    if backend == "cuda" or (backend == "auto" and gpu_available()):
        # neighbours and forces on the GPU, numpy in and out for these integrators;
        # nnmd_kernels.gpu.md keeps the whole step on the device
        from nnmd_kernels.gpu.md import device_force_fn

        fn = device_force_fn(potential, numbers, pbc, skin, host=True)
    else:
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        neighbors = NeighborList(potential.cutoff, skin=skin)

        def fn(positions, cell):
            res = potential.compute_local(positions, numbers, cell if pbc.any() else None, pbc,
                                          neighbors=neighbors, backend=backend)
            return res.energy, res.forces, res.virial

        fn.neighbors = neighbors  # exposed for diagnostics (n_builds)
    if potential.coulomb is None:
        return fn
    return _with_coulomb(fn, potential, numbers, pbc, skin)


def _with_coulomb(fn, potential, numbers, pbc, skin):
    """`fn` (the local part, numpy out) plus the potential's Coulomb term on the CPU, its
    real-space pairs from a Verlet list of their own (r_cut + skin)."""
    from nnmd_kernels.electrostatics import coulomb

    term, types = potential.coulomb, potential.types_of(numbers)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    pairs = NeighborList(term.r_cut, skin=skin) if pbc.all() else None

    def force_fn(positions, cell):
        e, f, v = fn(positions, cell)
        c = coulomb(term, positions, types, cell if pbc.any() else None, pbc,
                    pairs=pairs.update(positions, cell, pbc) if pairs is not None else None)
        return e + c.energy, f + c.forces, v + c.virial

    force_fn.neighbors = getattr(fn, "neighbors", None)
    return force_fn


def member_forces(potential, positions, numbers, cell=None, pbc=True, *, pairs=None,
                  backend="auto") -> np.ndarray:
    """Forces of every ensemble member, (M, N, 3) eV/A, without the pair baseline.

    The baseline (Delta-NNP) is the same for all members, so it drops out of the spread
    and is left out here. One descriptor evaluation, then one backward pass per member.
    pairs: a neighbour list (nnmd_kernels.neighbors.Pairs) at these positions, else one is
    built. Runs on the CPU kernels (numba, else numpy) whatever `backend` the MD uses.
    """
    from nnmd_kernels.neighbors import neighbor_pairs, pair_forces, validate_geometry
    from nnmd_kernels.network import activation, forward
    from nnmd_kernels.potential import _kernels

    pos, cell, pbc = validate_geometry(positions, cell, pbc)
    types = potential.types_of(numbers)
    if pairs is None:
        pairs = neighbor_pairs(pos, cell, pbc, potential.descriptor.cutoff)
    kern = _kernels("numpy" if backend == "numpy" else "auto")
    desc = potential.descriptor
    n, m = len(pos), potential.n_models
    tj = types[pairs.j]
    rij = np.asarray(pairs.vectors, dtype=np.float64)
    G = kern.descriptors(desc, rij, pairs.i, tj, n)
    dG = np.zeros((m, n, desc.n_features))
    for e, net in enumerate(potential.networks):
        idx = np.flatnonzero(types == e)
        if idx.size == 0:
            continue
        _, cache = forward(net, (G[idx] - potential.feature_mean[e]) / potential.feature_std[e])
        _, df, _ = activation(net.activation)
        # d y_m / d x for every member m separately: (M, n, F)
        delta = np.broadcast_to(net.weights[-1][:, None, :, 0],
                                (m, idx.size, net.weights[-1].shape[1]))
        for layer in range(len(cache) - 1, -1, -1):
            delta = (delta * df(cache[layer])) @ np.swapaxes(net.weights[layer], 1, 2)
        dG[:, idx] = delta / potential.feature_std[e]
    forces = np.empty((m, n, 3))
    for k in range(m):
        g = kern.descriptors_vjp(desc, rij, pairs.i, tj, n, dG[k])
        forces[k] = pair_forces(pairs.i, pairs.j, g, n)
    return forces


def max_force_deviation(potential, positions, numbers, cell=None, pbc=True, *, pairs=None,
                        backend="auto") -> float:
    """Model deviation of an ensemble (DeePMD's max_devi_f), eV/A:

        max_i sqrt( < |F_i^m - <F_i^m>_m|^2 >_m ),

    the largest, over atoms, standard deviation (over the M members, population form) of
    the force vector. 0.0 for a single model.
    """
    if potential.n_models < 2:
        return 0.0
    f = member_forces(potential, positions, numbers, cell, pbc, pairs=pairs, backend=backend)
    spread = np.sqrt(np.mean(np.sum((f - f.mean(axis=0)) ** 2, axis=2), axis=0))  # (N,)
    return float(spread.max()) if spread.size else 0.0
