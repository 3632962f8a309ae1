"""Device-resident MD: the NNP force function and integrators over device arrays.

The state is the native engine's MDState with positions, velocities, masses, forces
and the virial held as xp arrays (CuPy on a GPU; numpy in the simulator), so a step
moves no array between host and device: the device neighbour list (Verlet skin,
re-allocated on overflow), the potential (gpu/potential_cuda.py) and the velocity
Verlet sub-steps all run on the device. Per step the host reads a few scalars (the
largest displacement for the skin test and the pair count; the kinetic energy for the
Bussi thermostat, whose random numbers are drawn on the host exactly as the CPU engine
draws them, so that both engines follow the same stream). Observers get a host copy
(`host_state`) only at their interval.

The integrators mirror md/integrators.py sub-step for sub-step (same formulas, same rng
calls); tests check that they follow the CPU engine to 1e-8.
"""

from __future__ import annotations

import numpy as np

from ..md.integrators import bussi_factor, initial_arrays
from ..md.run import run as _run
from ..md.run import run_batch as _run_batch
from ..md.state import MDState, degrees_of_freedom, make_rng
from ..md.units import KB_EV_PER_K, MVV_TO_EV
from .device import default_xp, require_kernels, to_host
from .neighbors_cuda import DeviceNeighborList
from .potential_cuda import check_min_distance, device_potential, forces_virial


def device_force_fn(potential, numbers, pbc=(True, True, True), skin: float = 1.0,
                    capacity_factor: float = 1.25, xp=None, host: bool = False):
    """The NNP as a force function on the device, with its own device neighbour list.

    force_fn(positions (N, 3) A, cell (3, 3) A host array) -> (energy eV, forces (N, 3)
    eV/A, virial (3, 3) eV). With host=False (the device integrators) positions are xp
    arrays and the results stay on the device (energy a 0-d array); with host=True
    (the CPU integrators in md/) numpy in, numpy and float out.
    """
    if potential.coulomb is not None and not host:
        raise ValueError("this model has a Coulomb term (fixed charges, Ewald), which the device "
                         "integrators do not compute yet: run it with the CPU integrators (backend "
                         "numba) or with --engine lammps (coul/long + kspace)")
    require_kernels()
    xp = default_xp() if xp is None else xp
    numbers = np.asarray(numbers)
    types = potential.types_of(numbers)  # unknown species -> a clear ValueError now
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    dp = device_potential(potential, xp)
    d_types = xp.asarray(types)
    groups = dp.groups(d_types)
    n = len(types)
    neighbors = DeviceNeighborList(potential.cutoff, skin, capacity_factor)

    def device_fn(positions, cell):
        x = xp.asarray(positions, dtype=np.float64)
        p = neighbors.update(x, cell if pbc.any() else None, pbc)
        e, _, g, _ = dp.evaluate(d_types, p.i, p.j, p.vectors, p.offsets, n, True, groups)
        F, vir = forces_virial(xp, p.i, p.j, p.vectors, g, n)
        return e.sum(), F, vir

    def host_fn(positions, cell):
        x = xp.asarray(np.asarray(positions, dtype=np.float64))
        p = neighbors.update(x, cell if pbc.any() else None, pbc)
        check_min_distance(xp, p.i, p.j, p.vectors)
        e, _, g, _ = dp.evaluate(d_types, p.i, p.j, p.vectors, p.offsets, n, True, groups)
        F, vir = forces_virial(xp, p.i, p.j, p.vectors, g, n)
        return float(e.sum()), to_host(F), to_host(vir)

    fn = host_fn if host else device_fn
    fn.neighbors = neighbors  # diagnostics: n_builds, n_allocations
    fn.xp = xp
    return fn


def host_state(s: MDState) -> MDState:
    """A numpy copy of a device state (for observers, checkpoints, the CPU engine)."""
    return s.replace(positions=to_host(s.positions), velocities=to_host(s.velocities),
                     masses=to_host(s.masses), forces=to_host(s.forces),
                     virial=to_host(s.virial), energy=float(s.energy))


def init(force_fn, positions, masses, numbers, cell, pbc=(True, True, True), *,
         velocities=None, temperature=None, seed=0, zero_momentum=True) -> MDState:
    """md.integrators.init on the device: same checks and the same velocity draw."""
    xp = force_fn.xp
    x, m, h, v, rng = initial_arrays(positions, masses, cell, velocities, temperature, seed,
                                     zero_momentum)
    dx = xp.asarray(x)
    energy, forces, virial = force_fn(dx, h)
    return MDState(positions=dx, velocities=xp.asarray(v), masses=xp.asarray(m),
                   numbers=np.array(numbers, dtype=int), cell=h, pbc=np.array(pbc, dtype=bool),
                   energy=energy, forces=forces, virial=virial,
                   rng_state=rng.bit_generator.state)


def _half_kick(v, forces, masses, dt):
    """Momentum half step: v += dt/2 F / m."""
    return v + (0.5 * dt / MVV_TO_EV) * forces / masses[:, None]


def _kinetic(v, masses) -> float:
    return 0.5 * MVV_TO_EV * float((masses[:, None] * v * v).sum())


def _positive(name, value, unit):
    if not value > 0:
        raise ValueError(f"{name} must be > 0 {unit}, got {value}")


def nve(force_fn, dt: float):
    """Velocity Verlet on the device, dt fs. Returns (init_fn, step_fn)."""
    _positive("dt", dt, "fs")

    def step_fn(s: MDState) -> MDState:
        v = _half_kick(s.velocities, s.forces, s.masses, dt)  # momentum half step
        x = s.positions + dt * v  # position step
        energy, forces, virial = force_fn(x, s.cell)  # force
        v = _half_kick(v, forces, s.masses, dt)  # momentum half step
        return s.replace(positions=x, velocities=v, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn


def nvt_bussi(force_fn, dt: float, temperature: float, tau: float = 100.0, dof: int | None = None):
    """Bussi stochastic velocity rescaling around velocity Verlet on the device (tau fs);
    the same rng stream as md.nvt_bussi."""
    _positive("dt", dt, "fs")
    _positive("temperature", temperature, "K")
    _positive("tau", tau, "fs")
    c_half = np.exp(-0.5 * dt / tau)
    kt = KB_EV_PER_K * temperature

    def bussi_half(v, masses, nf, rng):
        k = _kinetic(v, masses)
        alpha = bussi_factor(k, 0.5 * nf * kt, nf, c_half, rng)
        return alpha * v, (alpha * alpha - 1.0) * k

    def step_fn(s: MDState) -> MDState:
        rng = make_rng(s.rng_state)
        nf = dof or degrees_of_freedom(s.n_atoms)
        v, heat1 = bussi_half(s.velocities, s.masses, nf, rng)
        v = _half_kick(v, s.forces, s.masses, dt)
        x = s.positions + dt * v
        energy, forces, virial = force_fn(x, s.cell)
        v = _half_kick(v, forces, s.masses, dt)
        v, heat2 = bussi_half(v, s.masses, nf, rng)
        return s.replace(positions=x, velocities=v, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt,
                         rng_state=rng.bit_generator.state,
                         bath_energy=s.bath_energy + heat1 + heat2)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn


def run(step_fn, state: MDState, n_steps: int, observers=(), observe_start: bool = True) -> MDState:
    """md.run.run for device states: observers get host_state(state) at their interval only."""
    wrapped = [(k, lambda s, fn=fn: fn(host_state(s))) for k, fn in observers]
    return _run(step_fn, state, n_steps, wrapped, observe_start)


def run_batch(step_fns, states, n_steps: int, observers=()):
    """md.run.run_batch for device states (replicas in lock-step, one neighbour list each)."""
    wrapped = [(k, lambda r, s, fn=fn: fn(r, host_state(s))) for k, fn in observers]
    return _run_batch(step_fns, states, n_steps, wrapped)
