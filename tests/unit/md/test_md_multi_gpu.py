"""Replica parallelism (services/md/multi_gpu.py) on CPU worker processes.

Two spawned workers give exactly the single-process run_native_batch result (same
seeds: a replica's seed comes from its place in the whole batch), each worker reports
the CUDA_VISIBLE_DEVICES it was pinned to, and a failing worker's replicas carry its
error while the other worker's replicas are kept.
"""

import dataclasses

import numpy as np
import pytest
from ase.build import bulk

from nnmd_kernels import Potential
from services.md.multi_gpu import _chunks, run_replicas, states_or_raise
from services.md.native import run_native_batch
from services.md.spec import MDSpec

SPEC = MDSpec(ensemble="nvt", dt_fs=0.5, steps=4, temperature=300.0, seed=7)


@pytest.fixture(scope="module")
def potential():
    pot = Potential.random(["Li", "P", "S"], seed=0, n_radial=6, n_angular=4, r_radial=4.0, r_angular=3.5)
    return dataclasses.replace(pot, feature_std=pot.feature_std * 10.0)


def _cell(seed):
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat((2, 2, 1))
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    atoms.rattle(0.05, seed=seed)
    return atoms


def _assert_same(a, b):
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.velocities, b.velocities)
    np.testing.assert_array_equal(a.forces, b.forces)
    assert a.energy == b.energy and a.step == b.step == SPEC.steps


def test_chunks_are_contiguous_and_balanced():
    assert [list(c) for c in _chunks(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [len(c) for c in _chunks(2, 3)] == [1, 1, 0]


def test_two_gpu_workers_equal_the_single_process_batch(potential):
    structures = [_cell(k) for k in range(3)]
    single = run_native_batch(structures, potential, SPEC, backend="numpy")
    # no GPU here: ids 0 and 1 are only written to the workers' environments, and
    # backend "numpy" keeps the work on their CPUs
    res = run_replicas(structures, potential, SPEC, gpus=[0, 1], backend="numpy", timeout=300)
    assert [r.index for r in res] == [0, 1, 2]
    assert [(r.worker, r.gpu, r.cuda_visible_devices) for r in res] == [(0, 0, "0"), (0, 0, "0"), (1, 1, "1")]
    for r, s in zip(res, states_or_raise(res)):
        assert r.ok and r.state is s
    for r, s in zip(res, single):
        _assert_same(r.state, s)


def test_cpu_workers_and_a_failing_worker(potential):
    structures = [_cell(k) for k in range(4)]
    structures[3].numbers[0] = 32  # Ge: not in the model, so worker 1 fails
    good = run_native_batch(structures[:2], potential, SPEC, backend="numpy")
    res = run_replicas(structures, potential, SPEC, gpus=[], n_workers=2, backend="numpy", timeout=300)
    assert [r.cuda_visible_devices for r in res] == ["", "", "", ""]  # CPU workers see no GPU
    assert [r.worker for r in res] == [0, 0, 1, 1] and all(r.gpu is None for r in res)
    for r, s in zip(res[:2], good):
        assert r.ok
        _assert_same(r.state, s)
    for r in res[2:]:  # both of the failing worker's replicas carry its error
        assert r.state is None and "element Ge" in r.error
    with pytest.raises(RuntimeError, match=r"2 of 4 replicas failed \(indices \[2, 3\]\)"):
        states_or_raise(res)


def test_workers_past_the_timeout_are_stopped_and_reported(potential):
    res = run_replicas([_cell(0), _cell(1)], potential, SPEC, gpus=[], n_workers=2, backend="numpy",
                       timeout=0.05)
    assert [r.index for r in res] == [0, 1]
    assert all(r.state is None and "did not finish within 0.05 s" in r.error for r in res)
