"""The native engine behind an MDSpec: nnmd_kernels integrators + the NNP force function."""

from __future__ import annotations

from nnmd_kernels.md import npt_scr, nve, nvt_bussi, nvt_langevin, run, run_batch
from nnmd_kernels.md.forces import potential_force_fn
from services.md.observers import MDFrame, velocities_of
from services.md.spec import MDSpec
from services.runtime.threads import blas_one_thread


def integrator(spec: MDSpec, force_fn):
    """(init_fn, step_fn) for the spec's ensemble."""
    if spec.ensemble == "nve":
        return nve(force_fn, spec.dt_fs)
    if spec.ensemble == "nvt" and spec.thermostat == "langevin":
        return nvt_langevin(force_fn, spec.dt_fs, spec.temperature, friction=1.0 / spec.tau_t_fs)
    if spec.ensemble == "nvt":
        return nvt_bussi(force_fn, spec.dt_fs, spec.temperature, tau=spec.tau_t_fs)
    return npt_scr(force_fn, spec.dt_fs, spec.temperature, pressure_gpa=spec.pressure_gpa,
                   tau_t=spec.tau_t_fs, tau_p=spec.tau_p_fs,
                   compressibility_per_gpa=spec.compressibility_per_gpa,
                   anisotropic=spec.anisotropic)


def initial_state(atoms, spec: MDSpec, force_fn, init_fn, seed=None):
    """Velocities from the structure's momenta exactly, else Maxwell-Boltzmann at spec.temperature."""
    v = velocities_of(atoms)
    return init_fn(atoms.positions, atoms.get_masses(), atoms.numbers, atoms.cell.array,
                   atoms.pbc, velocities=v, temperature=spec.temperature,
                   seed=spec.seed if seed is None else seed)


def _frame_observers(spec, thermo=None, traj=None, extra=()):
    obs = []
    if thermo is not None:
        obs.append((spec.thermo_interval, lambda s: thermo(MDFrame.from_state(s))))
    if traj is not None:
        obs.append((spec.traj_interval, lambda s: traj(MDFrame.from_state(s))))
    return obs + list(extra)


def run_native(atoms, potential, spec: MDSpec, thermo=None, traj=None, force_fn=None,
               backend="auto", guard=None):
    """Run spec on one structure (ase.Atoms); returns the final MDState.

    thermo / traj: observers called with an MDFrame every thermo_interval / traj_interval.
    force_fn overrides the potential (tests, other calculators).
    guard: a services.md.guards.Guard; then every step is checked (see GuardedRun) and a
    failed check raises MDStopped after the last good frame has gone to `traj`.
    """
    if force_fn is None:
        force_fn = potential_force_fn(potential, atoms.numbers, atoms.pbc, spec.skin_a, backend)
    init_fn, step_fn = integrator(spec, force_fn)
    with blas_one_thread():  # services.runtime.threads: numba and BLAS pools apart
        state = initial_state(atoms, spec, force_fn, init_fn)
        if guard is None:
            return run(step_fn, state, spec.steps, _frame_observers(spec, thermo, traj))
        return GuardedRun(guard, spec, thermo, traj).run(step_fn, state)


class GuardedRun:
    """The native driver with guards: after every step the cheap checks (finite energy
    and forces, temperature ceiling); every guard.distance_interval steps and at every
    thermo/trajectory step the distance floor; at every thermo/trajectory step the model
    deviation of an ensemble (into the frame: thermo column, extxyz info). A force call
    that fails (atoms overlapping, non-finite positions) counts as a failed check.

    On a failure: the previous step is checked in full and, if good, appended to `traj`
    (unless already written), so the trajectory ends with the last good frame; a note
    goes to the thermo log; MDStopped is raised.
    """

    def __init__(self, guard, spec: MDSpec, thermo=None, traj=None):
        self.guard = guard
        self.spec = spec
        self.thermo = thermo
        self.traj = traj
        self.prev = None  # the last state that passed the checks of its step
        self.last_written = None  # step of the last frame given to traj

    def run(self, step_fn, state):
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.observe(state)
            for _ in range(self.spec.steps):
                try:
                    state = step_fn(state)
                except ValueError as exc:  # e.g. overlapping atoms, NaN positions
                    self.stop(state.step + 1, f"the force call failed: {exc}")
                self.observe(state)
        return state

    def observe(self, s):
        g, spec = self.guard, self.spec
        thermo_due = s.step % spec.thermo_interval == 0
        traj_due = s.step % spec.traj_interval == 0
        reason = g.check_cheap(s.energy, s.forces, s.velocities, s.masses)
        if reason is None and (thermo_due or traj_due or g.distance_due(s.step)):
            reason = g.check_distances(s.positions, s.cell, s.pbc)
        if reason is None and (thermo_due or traj_due):
            reason = g.check_volume(s.cell, s.pbc, len(s.positions))
        dev = None
        if reason is None and (thermo_due or traj_due):
            dev = g.model_deviation(s.positions, s.cell, s.pbc)
            reason = g.check_deviation(dev)
        if reason is not None:
            self.stop(s.step, reason)
        if (thermo_due and self.thermo is not None) or (traj_due and self.traj is not None):
            frame = MDFrame.from_state(s, dev)
            if thermo_due and self.thermo is not None:
                self.thermo(frame)
            if traj_due and self.traj is not None:
                self.traj(frame)
                self.last_written = s.step
        self.prev = s

    def stop(self, step: int, reason: str):
        from services.md.guards import stop_at_last_good

        frame = MDFrame.from_state(self.prev) if self.prev is not None else None
        exc, self.last_written = stop_at_last_good(step, reason, frame, self.last_written,
                                                   self.guard, self.traj, self.thermo)
        raise exc


def run_native_batch(structures, potential, spec: MDSpec, seeds=None, backend="auto"):
    """Independent replicas (e.g. every chain's SLHMC proposal) advanced together.

    structures: list of ase.Atoms (momenta used exactly when present); seeds: one per
    replica (default spec.seed + index). Returns the list of final MDStates.
    """
    seeds = [spec.seed + k for k in range(len(structures))] if seeds is None else list(seeds)
    if len(seeds) != len(structures):
        raise ValueError(f"got {len(seeds)} seeds for {len(structures)} structures")
    step_fns, states = [], []
    with blas_one_thread():
        for atoms, seed in zip(structures, seeds):
            ff = potential_force_fn(potential, atoms.numbers, atoms.pbc, spec.skin_a, backend)
            init_fn, step_fn = integrator(spec, ff)
            step_fns.append(step_fn)
            states.append(initial_state(atoms, spec, ff, init_fn, seed=seed))
        return run_batch(step_fns, states, spec.steps)


def total_energy(state) -> float:
    from nnmd_kernels.md import kinetic_energy

    return float(state.energy + kinetic_energy(state.velocities, state.masses))


__all__ = ["GuardedRun", "integrator", "initial_state", "run_native", "run_native_batch", "total_energy"]
