"""The CUDA descriptor kernels against the numpy reference (simulator in CI, device where present)."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from nnmd_kernels import descriptor_ref as ref
from nnmd_kernels.descriptor import ChebyshevDescriptor
from nnmd_kernels.neighbors import neighbor_pairs

cuda_kernels = pytest.importorskip("nnmd_kernels.gpu.descriptor_cuda")

SPECIES = ("Li", "Ge", "P", "S")


def _structure(seed):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(2),) * 3, indexing="ij"), -1).reshape(-1, 3)
    cell = np.eye(3) * 4.6 + rng.uniform(-0.4, 0.4, (3, 3)) * (1 - np.eye(3))
    pos = ((grid + rng.uniform(-0.3, 0.3, grid.shape)) / 2) @ cell
    return pos, cell, rng.integers(0, 4, len(pos))


@pytest.mark.parametrize("weighting,cutoff_fn,angle",
                         list(itertools.product(("z", "typespin", "blocks"), ("tanh", "cos"), ("theta", "cos")))[::2])
def test_cuda_kernels_match_reference(weighting, cutoff_fn, angle):
    desc = ChebyshevDescriptor(SPECIES, n_radial=5, n_angular=4, r_radial=3.4, r_angular=3.0,
                               cutoff_fn=cutoff_fn, angle=angle, weighting=weighting)
    pos, cell, types = _structure(zlib.crc32(f"{weighting}-{cutoff_fn}-{angle}".encode()) % 100)
    pairs = neighbor_pairs(pos, cell, True, desc.cutoff)
    n = len(pos)
    args = (desc, pairs.vectors, pairs.i, types[pairs.j], n)
    rng = np.random.default_rng(0)
    G = ref.descriptors(*args)
    dG = rng.normal(size=G.shape)
    v = rng.normal(size=pairs.vectors.shape)

    def rel(a, b):
        return np.abs(a - b).max() / np.abs(b).max()

    assert rel(cuda_kernels.descriptors(*args), G) < 1e-10
    assert rel(cuda_kernels.descriptors_vjp(*args, dG), ref.descriptors_vjp(*args, dG)) < 1e-10
    assert rel(cuda_kernels.descriptors_jvp(*args, v), ref.descriptors_jvp(*args, v)) < 1e-10


@pytest.mark.gpu
def test_cuda_kernels_on_device_with_cupy_arrays():
    cp = pytest.importorskip("cupy")
    desc = ChebyshevDescriptor(SPECIES)
    pos, cell, types = _structure(1)
    pos, cell = np.concatenate([pos, pos + cell[0]]), np.array([2 * cell[0], cell[1], cell[2]])
    types = np.concatenate([types, types])
    pairs = neighbor_pairs(pos, cell, True, desc.cutoff)
    args = (pairs.vectors, pairs.i, types[pairs.j], len(pos))
    G = ref.descriptors(desc, *args)
    Gd = cuda_kernels.descriptors(desc, *(cp.asarray(a) for a in args[:3]), args[3])
    assert np.abs(cp.asnumpy(Gd) - G).max() < 1e-10 * np.abs(G).max()
