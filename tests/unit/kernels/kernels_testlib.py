"""Small random structures shared by the kernel tests."""

from __future__ import annotations

import numpy as np

SPECIES4 = ("Li", "Ge", "P", "S")
Z4 = np.array([3, 32, 15, 16])

# Small descriptor sizes keep the finite-difference tests fast; the physics is the same.
SMALL = dict(n_radial=8, n_angular=6, r_radial=4.0, r_angular=3.6, hidden=(12, 12))


def jittered_cell(n_side=2, spacing=2.4, jitter=0.35, triclinic=True, seed=0):
    """(positions, cell) of a jittered simple-cubic lattice, optionally sheared (triclinic)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n_side),) * 3, indexing="ij"), -1).reshape(-1, 3)
    frac = (grid + rng.uniform(-jitter, jitter, grid.shape) / 1.0) / n_side
    cell = np.eye(3) * n_side * spacing
    if triclinic:
        cell = cell + rng.uniform(-0.15, 0.15, (3, 3)) * spacing * n_side * np.array(
            [[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    return frac @ cell, cell


def random_numbers(n, seed=0, z=Z4):
    rng = np.random.default_rng(seed)
    nums = z[rng.integers(0, len(z), n)]
    nums[: len(z)] = z[: min(n, len(z))]  # every element present
    return nums
