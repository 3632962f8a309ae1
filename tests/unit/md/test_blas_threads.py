"""blas_one_thread: BLAS on one thread inside MD and training loops, as it was after."""

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from services.runtime.threads import blas_one_thread  # noqa: E402


def _blas_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas"]


def test_blas_one_thread_inside_and_restored_after():
    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # BLAS loaded
    before = _blas_threads()
    assert before, "numpy's BLAS not found by threadpoolctl"
    with blas_one_thread():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_native_md_runs_with_blas_on_one_thread(monkeypatch):
    from ase.build import bulk

    from nnmd_kernels.potential import Potential
    from services.md import native
    from services.md.spec import MDSpec

    seen = []
    real = native.run

    def spy(*a, **k):
        seen.append(_blas_threads())
        return real(*a, **k)

    monkeypatch.setattr(native, "run", spy)
    pot = Potential.random(("Si",), seed=1, hidden=(4,), n_radial=4, n_angular=2,
                           r_radial=3.5, r_angular=3.0)
    native.run_native(bulk("Si", "diamond", a=5.43, cubic=True), pot,
                      MDSpec(ensemble="nve", temperature=300, dt_fs=1.0, steps=2))
    assert seen and set(seen[0]) == {1}
