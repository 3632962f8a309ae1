"""Which array module the GPU path uses: CuPy on a machine with a CUDA device, else numpy.

Importing this module imports neither CuPy nor numba.cuda, so the CPU backends can
ask `gpu_available()` cheaply on any machine. With numpy as `xp` (no device), the
numba.cuda kernels run in numba's simulator (NUMBA_ENABLE_CUDASIM=1): the same code
path as on a device, only slower, which is how CI tests it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when CuPy imports and sees a CUDA device (never raises)."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # ImportError, or a CUDA driver/runtime error
        return False


def default_xp():
    """cupy on a device, numpy otherwise (the simulator path)."""
    if gpu_available():
        import cupy

        return cupy
    return np


def array_module(a):
    """The module of array `a` (cupy for CuPy arrays, else numpy)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(a):
    """A numpy copy of a CuPy array; numpy arrays and scalars unchanged."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return a


def require_kernels():
    """numba.cuda kernels need a device or the simulator; say which switch to set."""
    from numba import config

    if not gpu_available() and not config.ENABLE_CUDASIM:
        raise RuntimeError(
            "backend='cuda' needs a CUDA device with CuPy (pip install nnmd[gpu]); without one, "
            "set NUMBA_ENABLE_CUDASIM=1 before importing numba to run the kernels in numba's "
            "CUDA simulator (slow: for tests), or use backend='numba'")
