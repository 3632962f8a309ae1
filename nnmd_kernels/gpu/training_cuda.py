"""The device side of training (training.py, device="cuda"): cached-Jacobian products as
numba.cuda kernels, the batch's arrays on the device, and the network's tangent pass in xp.

training.py keeps one training algorithm; with device="cuda" its arrays are xp arrays
(CuPy on a GPU; numpy in numba's CUDA simulator, where these kernels run unchanged) and
the per-iteration descriptor products go through here:

    VJP  dE/dr_p = J[p]^T g[i(p)]         one thread per pair          (P, 3)
    JVP  dG_i = sum_{p of i} J[p] v_p     one thread per centre row    (N, F)

with J (P, F, 3) the pair Jacobian cached once at setup. Each thread owns its output
row, so there are no atomics; the sums run over f (VJP) and over the centre's pairs
(JVP) in the same order as descriptor_numba's jacobian_vjp / jacobian_jvp. When J is
over the budget, the descriptor_cuda VJP/JVP kernels recompute it from the pairs.
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda

from . import descriptor_cuda as dk
from .device import default_xp, require_kernels

THREADS = 32 if config.ENABLE_CUDASIM else 128


@cuda.jit
def _jac_vjp(J, pair_i, g, out):
    p = cuda.grid(1)
    if p >= J.shape[0]:
        return
    i = pair_i[p]
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    for f in range(J.shape[1]):
        gf = g[i, f]
        a0 += J[p, f, 0] * gf
        a1 += J[p, f, 1] * gf
        a2 += J[p, f, 2] * gf
    out[p, 0] = a0
    out[p, 1] = a1
    out[p, 2] = a2


@cuda.jit
def _jac_jvp(J, offsets, v, out):
    i = cuda.grid(1)
    if i >= offsets.shape[0] - 1:
        return
    for p in range(offsets[i], offsets[i + 1]):
        v0 = v[p, 0]
        v1 = v[p, 1]
        v2 = v[p, 2]
        for f in range(J.shape[1]):
            out[i, f] += J[p, f, 0] * v0 + J[p, f, 1] * v1 + J[p, f, 2] * v2


def _blocks(n):
    return max(1, (n + THREADS - 1) // THREADS)


class DeviceBatch:
    """A training Batch's arrays on the device of xp, and its descriptor products there.

    Built once per Batch; every attribute the Objective reads is an xp array here.
    """

    def __init__(self, batch, xp=None):
        require_kernels()
        self.xp = xp = default_xp() if xp is None else xp
        self.desc = batch.desc
        self.N = batch.N
        self.G = xp.asarray(batch.G)
        self.pair_i = xp.asarray(batch.pair_i)
        self.pair_j = xp.asarray(batch.pair_j)
        self.rij = xp.asarray(batch.rij)
        self.type_j = xp.asarray(batch.type_j)
        self.struct_of_atom = xp.asarray(batch.struct_of_atom)
        self.struct_of_pair = xp.asarray(batch.struct_of_pair)
        self.n_atoms = xp.asarray(batch.n_atoms)
        self.volume = xp.asarray(batch.volume)
        self.by_element = [xp.asarray(idx) for idx in batch.by_element]
        offsets = np.searchsorted(batch.pair_i, np.arange(batch.N + 1)).astype(np.int64)
        # kernel operands: device arrays made once (CuPy arrays are used in place; in the
        # simulator, numba device arrays so that no call copies J again)
        self._J = None if batch.J is None else dk._to_device(xp.asarray(batch.J), np.float64)
        self._pair_i = dk._to_device(self.pair_i, np.int64)
        self._offsets = dk._to_device(xp.asarray(offsets), np.int64)
        self._host = xp is np

    def _result(self, out):
        return out.copy_to_host() if self._host else out

    def _zeros(self, shape):
        return cuda.to_device(np.zeros(shape)) if self._host else self.xp.zeros(shape)

    def vjp(self, g):
        """Pair gradients (P, 3) from dE/dG (N, F), an xp array."""
        if self._J is None:
            return dk.descriptors_vjp(self.desc, self.rij, self.pair_i, self.type_j, self.N, g)
        out = self._zeros((self._J.shape[0], 3))
        _jac_vjp[_blocks(self._J.shape[0]), THREADS](self._J, self._pair_i, dk._to_device(g, np.float64), out)
        return self._result(out)

    def jvp(self, v):
        """dG (N, F) along the pair-space direction v (P, 3), an xp array."""
        if self._J is None:
            return dk.descriptors_jvp(self.desc, self.rij, self.pair_i, self.type_j, self.N, v)
        out = self._zeros((self.N, self._J.shape[1]))
        _jac_jvp[_blocks(self.N), THREADS](self._J, self._offsets, dk._to_device(v, np.float64), out)
        return self._result(out)


