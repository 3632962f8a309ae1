"""Drive step functions: one trajectory or a batch of independent replicas, with observers.

An observer is (interval, fn): fn(state) (or fn(replica, state) in a batch) is called after
every step whose number is a multiple of interval, and at the start when the starting step
is. Observers do the I/O (thermo logs, trajectories, stores); step functions never do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nnmd_kernels.md.state import MDState

Observer = tuple[int, Callable]


def _check(observers):
    for interval, fn in observers:
        if int(interval) < 1 or not callable(fn):
            raise ValueError(f"an observer is (interval >= 1, callable), got ({interval}, {fn})")


def run(step_fn, state: MDState, n_steps: int, observers: Sequence[Observer] = (),
        observe_start: bool = True) -> MDState:
    """Advance n_steps and return the final state."""
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    _check(observers)
    if observe_start:
        for interval, fn in observers:
            if state.step % interval == 0:
                fn(state)
    for _ in range(n_steps):
        state = step_fn(state)
        for interval, fn in observers:
            if state.step % interval == 0:
                fn(state)
    return state


def run_batch(step_fns, states: Sequence[MDState], n_steps: int,
              observers: Sequence[Observer] = ()) -> list[MDState]:
    """Advance many independent replicas (e.g. every chain's proposal) by n_steps each.

    step_fns: one step function shared by all replicas, or one per replica (a replica
    whose force function keeps a neighbour list needs its own). Replicas advance in
    lock-step, step by step, so per-step observers see every replica at the same step.
    Observers get (replica_index, state).
    """
    states = list(states)
    if callable(step_fns):
        step_fns = [step_fns] * len(states)
    if len(step_fns) != len(states):
        raise ValueError(f"got {len(step_fns)} step functions for {len(states)} replicas")
    _check(observers)
    for _ in range(n_steps):
        states = [f(s) for f, s in zip(step_fns, states)]
        for interval, fn in observers:
            for r, s in enumerate(states):
                if s.step % interval == 0:
                    fn(r, s)
    return states
