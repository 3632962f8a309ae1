"""Device-resident MD (gpu/md.py) against the CPU engine (md/ with backend="numpy").

Same start, same seed: after a few steps positions, velocities and energies agree to
1e-8 (in practice to rounding); the state stays in the device's array type between
steps and observers get numpy copies.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnmd_kernels import Potential, md
from nnmd_kernels.md.forces import potential_force_fn

gmd = pytest.importorskip("nnmd_kernels.gpu.md")

SMALL = dict(n_radial=5, n_angular=4, r_radial=3.4, r_angular=3.0)
MASS = {3: 6.94, 15: 30.97, 16: 32.06}


def _system(seed=0, k=3):
    rng = np.random.default_rng(seed)
    cell = np.array([[6.0, 0, 0], [1.0, 5.8, 0], [-0.5, 0.7, 6.2]])
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = ((grid + rng.uniform(-0.25, 0.25, grid.shape)) / k) @ cell
    numbers = rng.choice([3, 15, 16], len(pos))
    return pos, numbers, np.array([MASS[z] for z in numbers]), cell


@pytest.fixture(scope="module")
def pot():
    return Potential.random(["Li", "P", "S"], seed=1, **SMALL)


def _close(cpu, dev, tol=1e-8):
    host = gmd.host_state(dev)
    assert host.step == cpu.step
    assert np.abs(host.positions - cpu.positions).max() < tol
    assert np.abs(host.velocities - cpu.velocities).max() < tol
    assert abs(host.energy - cpu.energy) < tol * max(1.0, abs(cpu.energy))
    assert np.abs(host.forces - cpu.forces).max() < tol
    assert np.abs(host.virial - cpu.virial).max() < tol * max(1.0, np.abs(cpu.virial).max())
    assert abs(host.bath_energy - cpu.bath_energy) < tol


def test_nve_follows_cpu_engine(pot):
    pos, numbers, masses, cell = _system(0)
    cpu_init, cpu_step = md.nve(potential_force_fn(pot, numbers, True, skin=0.4, backend="numpy"), 0.5)
    ff = gmd.device_force_fn(pot, numbers, True, skin=0.4)
    dev_init, dev_step = gmd.nve(ff, 0.5)
    a = cpu_init(pos, masses, numbers, cell, temperature=600.0, seed=1)
    b = dev_init(pos, masses, numbers, cell, temperature=600.0, seed=1)
    seen = []
    a = md.run(cpu_step, a, 3)
    b = gmd.run(dev_step, b, 3, observers=[(3, seen.append)])
    _close(a, b)
    assert type(b.positions) is type(ff.xp.zeros(1)), "positions stay device arrays"
    assert [s.step for s in seen] == [0, 3] and isinstance(seen[-1].positions, np.ndarray)
    assert ff.neighbors.n_builds >= 1


def test_bussi_follows_cpu_engine_same_rng_stream(pot):
    pos, numbers, masses, cell = _system(1)
    cpu_init, cpu_step = md.nvt_bussi(potential_force_fn(pot, numbers, True, skin=0.4, backend="numpy"),
                                      0.5, 500.0, tau=10.0)
    dev_init, dev_step = gmd.nvt_bussi(gmd.device_force_fn(pot, numbers, True, skin=0.4), 0.5, 500.0, tau=10.0)
    a = md.run(cpu_step, cpu_init(pos, masses, numbers, cell, temperature=500.0, seed=4), 2)
    b = gmd.run(dev_step, dev_init(pos, masses, numbers, cell, temperature=500.0, seed=4), 2)
    _close(a, b)


def test_force_fn_cuda_backend_serves_the_cpu_integrators(pot):
    """potential_force_fn(backend="cuda"): numpy in, numpy out (device neighbour list inside)."""
    pos, numbers, masses, cell = _system(2, k=2)
    cpu = potential_force_fn(pot, numbers, True, backend="numpy")
    dev = potential_force_fn(pot, numbers, True, backend="cuda")
    e0, f0, w0 = cpu(pos, cell)
    e1, f1, w1 = dev(pos, cell)
    assert isinstance(e1, float) and isinstance(f1, np.ndarray)
    assert abs(e1 - e0) < 1e-10 * abs(e0)
    assert np.abs(f1 - f0).max() < 1e-10 * np.abs(f0).max()
    assert np.abs(w1 - w0).max() < 1e-10 * np.abs(w0).max()
