"""Thread policy for the potential's CPU kernels: BLAS on one thread while numba's run.

The potential's descriptors run in numba's OpenMP threads (one a core) and its element
networks in BLAS, which starts threads of its own for larger matrices. On the same cores
the two pools wait for each other (each spins for a while after its parallel part):
measured on 2 cores, Potential.compute_pairs of rattled diamond Si with a 2 x 40
network took 10-12 us an atom at 64-216 atoms but 24-39 at 512 and 14-26 at 1,728, and
a flat 10-11 us an atom at every size with BLAS on one thread (the networks' matrices,
atoms x 40, gain nothing from more). MD and proposal loops therefore run under
`blas_one_thread()`. It sets the process-wide BLAS thread count (threadpoolctl) and puts
it back on exit; training, which multiplies larger matrices, keeps its threads outside.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def blas_one_thread():
    """BLAS limited to one thread inside the block (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an older environment: no policy, nothing else changes
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
