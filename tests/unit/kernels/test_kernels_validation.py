"""Bad input raises ValueError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_testlib import jittered_cell, random_numbers


@pytest.fixture()
def structure():
    pos, cell = jittered_cell(n_side=2, spacing=2.4, seed=1)
    return pos, random_numbers(len(pos)), cell


def test_wrong_shapes(pot4, structure):
    pos, nums, cell = structure
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        pot4.compute(pos[:, :2], nums, cell, True)
    with pytest.raises(ValueError, match="numbers has 7 entries but positions has 8"):
        pot4.compute(pos, nums[:7], cell, True)
    with pytest.raises(ValueError, match=r"cell must have shape \(3, 3\)"):
        pot4.compute(pos, nums, np.eye(2), True)


def test_nan(pot4, structure):
    pos, nums, cell = structure
    bad = pos.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"positions contain NaN or inf \(atom 3"):
        pot4.compute(bad, nums, cell, True)
    with pytest.raises(ValueError, match="cell contains NaN"):
        pot4.compute(pos, nums, cell * np.nan, True)


def test_unknown_element(pot4, structure):
    pos, nums, cell = structure
    nums = nums.copy()
    nums[5] = 29
    with pytest.raises(ValueError, match=r"element Cu \(atom 5\) is not in the model; the model knows Li, Ge, P, S"):
        pot4.compute(pos, nums, cell, True)


def test_singular_cell(pot4, structure):
    pos, nums, cell = structure
    flat = cell.copy()
    flat[2] = flat[0] + flat[1]
    with pytest.raises(ValueError, match="cell is singular"):
        pot4.compute(pos, nums, flat, True)
    with pytest.raises(ValueError, match="cell is required"):
        pot4.compute(pos, nums, None, True)


def test_overlapping_atoms(pot4, structure):
    pos, nums, cell = structure
    close = pos.copy()
    close[1] = close[0] + [0.05, 0, 0]
    with pytest.raises(ValueError, match=r"atoms 0 and 1 are 0.0500 A apart \(< 0.1 A\)"):
        pot4.compute(close, nums, cell, True)
