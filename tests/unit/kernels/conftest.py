"""Fixtures for the kernel tests (helpers live in kernels_testlib.py)."""

from __future__ import annotations

import pytest
from kernels_testlib import SMALL, SPECIES4

from nnmd_kernels import Potential


@pytest.fixture(scope="session")
def pot4():
    return Potential.random(SPECIES4, seed=1, n_models=2, **SMALL)


@pytest.fixture(scope="session")
def pot4_default():
    """The source product's default descriptor (50 + 30, 6 A), one model."""
    return Potential.random(SPECIES4, seed=2)
