"""GPU kernel tests run on a real device when there is one, else in numba's CUDA simulator.

numba reads its CUDA-simulator switch when numba.cuda is first imported, so it is set
here, at collection time, before any test module imports the kernels. Tests that need
a real device are marked `gpu` and skipped without one.
"""

from __future__ import annotations

import os
import shutil

import pytest


def _real_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "1"


if not _real_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import numba

    numba.config.ENABLE_CUDASIM = 1


def pytest_collection_modifyitems(config, items):
    if _real_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here; simulator tests still run)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
