"""The exact GELU on the "cuda" backend (simulator in CI, device where present).

gpu/potential_cuda.py evaluates GELU and its derivative with one numba.cuda kernel
(math.erfc, math.exp); it must equal network.py's CPU GELU, and a GELU potential on
backend="cuda" must equal backend="numpy" to 1e-10 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnmd_kernels import Potential
from nnmd_kernels.network import activation
from nnmd_kernels.sannp import read_sannp, write_sannp

pc = pytest.importorskip("nnmd_kernels.gpu.potential_cuda")
from nnmd_kernels.gpu.device import default_xp, to_host  # noqa: E402

SMALL = dict(n_radial=5, n_angular=4, r_radial=3.4, r_angular=3.0, hidden=(6, 6))


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-300))


def test_gelu_kernel_equals_cpu_activation():
    xp = default_xp()
    z = np.random.default_rng(0).normal(0.0, 3.0, size=(2, 7, 5))
    z[0, 0, :] = [-40.0, -8.0, 0.0, 8.0, 40.0]
    f, df = pc._activation("gelu", xp)
    cf, cdf, _ = activation("gelu")
    dz = xp.asarray(z)
    assert to_host(f(dz)).shape == z.shape
    assert np.abs(to_host(f(dz)) - cf(z)).max() <= 1e-15 * np.abs(cf(z)).max()
    assert np.abs(to_host(df(dz)) - cdf(z)).max() <= 1e-15
    assert to_host(f(xp.zeros((0, 3)))).shape == (0, 3)


def _cell(seed, z, k=2):
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 2.1 * k + rng.uniform(-0.5, 0.5, (3, 3)) * (1 - np.eye(3))
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = ((grid + rng.uniform(-0.25, 0.25, grid.shape)) / k) @ cell
    return pos, rng.choice(z, len(pos)), cell


def _assert_same(a, b, tol=1e-10):
    assert abs(a.energy - b.energy) <= tol * abs(b.energy)
    for x, y in ((a.energies, b.energies), (a.energies_models, b.energies_models),
                 (a.forces, b.forces), (a.virial, b.virial), (a.stress, b.stress)):
        assert _rel(x, y) < tol
    assert abs(a.energy_std - b.energy_std) <= tol * max(abs(b.energy_std), 1e-12)


def test_cuda_backend_gelu_matches_numpy():
    pot = Potential.random(["Li", "P", "S"], seed=6, n_models=2, activation="gelu", **SMALL)
    pos, numbers, cell = _cell(3, [3, 15, 16])
    _assert_same(pot.compute(pos, numbers, cell, True, backend="cuda"),
                 pot.compute(pos, numbers, cell, True, backend="numpy"))
    # an ffield.sannp with code 6 read back runs on the device too
    back = read_sannp(write_sannp(pot))
    assert back.activation == "gelu"
    _assert_same(back.compute(pos, numbers, cell, True, backend="cuda"),
                 back.compute(pos, numbers, cell, True, backend="numpy"))
