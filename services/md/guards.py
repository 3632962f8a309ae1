"""Run guards for MD (both engines): stop a run that has left the model's domain.

A guard stops the run (MDStopped, `nnmd md` exits 3) when

- an energy or a force is non-finite (checked every step; cheap),
- the instantaneous temperature exceeds `temperature_factor` (10) x the reference:
  the target for NVT/NPT; for NVE the temperature the velocities were drawn at, else
  that of the structure's velocities, but never less than 300 K (a cold or 0 K start
  heats up from its potential energy: its ceiling is 3000 K) (every step; cheap),
- two atoms come closer than a floor per element pair (every `distance_interval` steps
  and at every written frame): `training_fraction` (0.8) x the shortest distance of
  that pair in the training set (model metadata `min_pair_distance_A`, written by
  `nnmd train`), or, for a model (or pair) without it, `covalent_fraction` (0.5) x
  the sum of the covalent radii (ase.data.covalent_radii),
- the ensemble's model deviation (max over atoms of the force standard deviation across
  members, eV/A; computed at every thermo line and frame) exceeds `max_deviation`,
- the cell's volume per atom leaves the training set's range (model metadata
  `volume_per_atom_A3`, [min, max]) by more than `volume_factor` (1.3: above 1.3 x max or
  below min / 1.3), at every thermo line and frame: an NPT run whose box runs away into
  cells the model never saw (LLZO: a student's box grew 6-10x, docs/llzo.md) stops there
  instead of writing out a meaningless trajectory.
"""

from __future__ import annotations

import math

import numpy as np

from nnmd_kernels.md.units import KB_EV_PER_K

TEMPERATURE_FACTOR = 10.0
NVE_MIN_REFERENCE_K = 300.0  # an NVE start colder than this (e.g. 0 K) counts as 300 K
TRAINING_FRACTION = 0.8
COVALENT_FRACTION = 0.5
DISTANCE_INTERVAL = 10
VOLUME_FACTOR = 1.3


class MDStopped(RuntimeError):
    """A guard stopped an MD run.

    step: the step where the check failed; reason: one line; last_good_step: the last
    step known good (None if even the start was not), last_good_written: whether that
    frame is the last frame of the trajectory.
    """

    exit_code = 3

    def __init__(self, step: int, reason: str, last_good_step: int | None = None,
                 last_good_written: bool = False):
        self.step = int(step)
        self.reason = reason
        self.last_good_step = last_good_step
        self.last_good_written = last_good_written
        super().__init__(self.describe())

    def describe(self, traj=None) -> str:
        """'step S: REASON; last good frame: ...' (traj: the trajectory's path, if any)."""
        if self.last_good_step is None:
            where = "none (the starting structure already fails)"
        elif self.last_good_written and traj:
            where = f"step {self.last_good_step}, the last frame of {traj}"
        elif self.last_good_written:
            where = f"step {self.last_good_step}, the last frame written"
        else:
            where = f"step {self.last_good_step} (not written)"
        return f"stopped at step {self.step}: {self.reason}; last good frame: {where}"

    def to_dict(self) -> dict:
        return {"step": self.step, "reason": self.reason, "last_good_step": self.last_good_step,
                "last_good_written": self.last_good_written}

    @classmethod
    def from_dict(cls, d: dict) -> MDStopped:
        return cls(d["step"], d["reason"], d.get("last_good_step"),
                   bool(d.get("last_good_written")))


class DistanceFloor:
    """Per element pair floor (E, E) in A, and where each came from."""

    def __init__(self, potential, training_fraction: float = TRAINING_FRACTION,
                 covalent_fraction: float = COVALENT_FRACTION):
        from ase.data import atomic_numbers, covalent_radii

        species = tuple(potential.species)
        ne = len(species)
        seen = _training_minima(potential.metadata, species)
        self.species = species
        self.floor = np.zeros((ne, ne))
        self.source = {}  # (a, b) -> text for messages
        for a in range(ne):
            for b in range(a, ne):
                pair = f"{species[a]}-{species[b]}"
                if (a, b) in seen:
                    d = seen[(a, b)]
                    value = training_fraction * d
                    text = (f"{training_fraction:g} x the shortest {pair} distance in the "
                            f"training set, {d:.3f} A")
                else:
                    rsum = (covalent_radii[atomic_numbers[species[a]]]
                            + covalent_radii[atomic_numbers[species[b]]])
                    value = covalent_fraction * rsum
                    why = ("the model carries no training distances" if not seen
                           else f"the training set has no {pair} pair")
                    text = (f"{covalent_fraction:g} x the sum of covalent radii, {rsum:.3f} A; "
                            f"{why}")
                self.floor[a, b] = self.floor[b, a] = value
                self.source[(a, b)] = self.source[(b, a)] = text
        self.from_training = bool(seen)
        self.cutoff = float(self.floor.max()) if ne else 0.0

    def check(self, positions, types, cell, pbc, symbols=None) -> str | None:
        """None, or a one-line reason naming the closest offending pair."""
        from nnmd_kernels.neighbors import neighbor_pairs

        if self.cutoff <= 0 or len(positions) < 2:
            return None
        pos = np.asarray(positions, dtype=float)
        if not np.all(np.isfinite(pos)):
            return "positions are not finite"
        pairs = neighbor_pairs(pos, cell if np.any(pbc) else None, pbc, self.cutoff)
        if not len(pairs):
            return None
        d = pairs.distances
        f = self.floor[types[pairs.i], types[pairs.j]]
        bad = d < f
        if not bad.any():
            return None
        k = np.flatnonzero(bad)[np.argmin((d / f)[bad])]
        i, j = int(pairs.i[k]), int(pairs.j[k])
        a, b = int(types[i]), int(types[j])
        si, sj = self.species[a], self.species[b]
        return (f"atoms {i} ({si}) and {j} ({sj}) are {d[k]:.3f} A apart, below the "
                f"{si}-{sj} floor {f[k]:.3f} A ({self.source[(a, b)]})")


def _training_minima(metadata, species) -> dict:
    """{(a, b): shortest distance} with a <= b species indices, from model metadata."""
    raw = (metadata or {}).get("min_pair_distance_A") or {}
    out = {}
    index = {s: k for k, s in enumerate(species)}
    for key, value in raw.items():
        try:
            e1, e2 = str(key).split("-")
            a, b = sorted((index[e1], index[e2]))
            value = float(value)
        except (KeyError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            out[(a, b)] = min(value, out.get((a, b), math.inf))
    return out


def _training_volumes(metadata) -> tuple[float, float] | None:
    """(min, max) volume per atom of the training set from model metadata, or None."""
    raw = (metadata or {}).get("volume_per_atom_A3")
    try:
        lo, hi = (float(x) for x in raw)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        return None
    return lo, hi


def temperature_ceiling(ensemble: str, target: float | None, start: float,
                        factor: float = TEMPERATURE_FACTOR) -> tuple[float, str]:
    """(ceiling K, how it was set). target: the spec's temperature (None for NVE without
    one); start: the instantaneous temperature of the starting velocities."""
    if ensemble in ("nvt", "npt"):
        return factor * target, f"{factor:g} x the target {target:g} K"
    ref, what = ((target, "the starting temperature") if target else
                 (start, "the temperature of the starting velocities"))
    if ref < NVE_MIN_REFERENCE_K:
        return (factor * NVE_MIN_REFERENCE_K,
                f"{factor:g} x {NVE_MIN_REFERENCE_K:g} K (NVE started at {ref:.3g} K, "
                f"below {NVE_MIN_REFERENCE_K:g} K)")
    return factor * ref, f"{factor:g} x {what} {ref:.4g} K"


def _temperature(velocities, masses) -> float:
    from nnmd_kernels.md.state import degrees_of_freedom, kinetic_energy

    dof = max(degrees_of_freedom(len(masses)), 1)
    return 2.0 * kinetic_energy(velocities, masses) / (dof * KB_EV_PER_K)


class Guard:
    """The checks of one run. potential: the model (distance floors, model deviation);
    None skips both (e.g. a test force function).

    ensemble / target: the spec's; start_temperature: of the starting velocities;
    velocities_given: whether they came with the structure (NVE ceiling, see module doc).
    deviation: compute the model deviation at observed steps (default: when the model
    is an ensemble); max_deviation: eV/A, stop above it (needs an ensemble).
    """

    def __init__(self, potential, numbers, ensemble: str, target: float | None,
                 start_temperature: float, *, velocities_given: bool = False,
                 max_deviation: float | None = None, deviation: bool | None = None,
                 distance_interval: int = DISTANCE_INTERVAL,
                 temperature_factor: float = TEMPERATURE_FACTOR,
                 training_fraction: float = TRAINING_FRACTION,
                 covalent_fraction: float = COVALENT_FRACTION, volume_factor: float = VOLUME_FACTOR,
                 backend: str = "auto"):
        if distance_interval < 1:
            raise ValueError(f"distance_interval must be >= 1 step, got {distance_interval}")
        self.potential = potential
        self.numbers = np.asarray(numbers)
        self.types = potential.types_of(self.numbers) if potential is not None else None
        self.distance_interval = int(distance_interval)
        self.backend = backend
        check_max_deviation(potential, max_deviation)
        self.max_deviation = max_deviation
        ensemble_model = potential is not None and potential.n_models > 1
        self.deviation = ensemble_model if deviation is None else bool(deviation and ensemble_model)
        nve_target = target if (ensemble == "nve" and not velocities_given) else None
        self.t_max, self.t_rule = temperature_ceiling(
            ensemble, target if ensemble != "nve" else nve_target, start_temperature,
            temperature_factor)
        self.floor = (DistanceFloor(potential, training_fraction, covalent_fraction)
                      if potential is not None else None)
        if not volume_factor >= 1:
            raise ValueError(f"volume_factor must be >= 1, got {volume_factor}")
        self.volume_factor = float(volume_factor)
        self.volume_range = _training_volumes(potential.metadata if potential is not None else None)

    @classmethod
    def for_spec(cls, potential, atoms, spec, velocities, **options) -> Guard:
        """From an MDSpec and the starting velocities (N, 3) A/fs (None: drawn from
        spec.temperature)."""
        start = (_temperature(velocities, atoms.get_masses()) if velocities is not None
                 else float(spec.temperature or 0.0))
        return cls(potential, atoms.numbers, spec.ensemble, spec.temperature, start,
                   velocities_given=velocities is not None, **options)

    # -- checks -------------------------------------------------------------------------
    def check_cheap(self, energy, forces, velocities, masses) -> str | None:
        """Finite energy and forces, temperature under the ceiling: O(N), every step."""
        if not math.isfinite(float(energy)):
            return f"the potential energy is {float(energy)} (not finite)"
        if forces is not None:
            f = np.asarray(forces)
            if not np.all(np.isfinite(f)):
                i = int(np.argwhere(~np.isfinite(f))[0][0])
                return f"the force on atom {i} is not finite"
        t = _temperature(velocities, masses)
        if not math.isfinite(t):
            return "the velocities are not finite"
        if t > self.t_max:
            return (f"temperature {t:.4g} K exceeds {self.t_max:.4g} K "
                    f"({self.t_rule})")
        return None

    def distance_due(self, step: int) -> bool:
        return step % self.distance_interval == 0

    def check_distances(self, positions, cell, pbc) -> str | None:
        if self.floor is None:
            return None
        return self.floor.check(positions, self.types, np.asarray(cell), np.asarray(pbc, bool))

    def check_volume(self, cell, pbc, n_atoms: int) -> str | None:
        """None, or why the cell is outside the training volumes (periodic cells only)."""
        if self.volume_range is None or not np.all(np.asarray(pbc, bool)) or n_atoms < 1:
            return None
        v = abs(float(np.linalg.det(np.asarray(cell, float)))) / n_atoms
        lo, hi = self.volume_range
        f = self.volume_factor
        if lo / f <= v <= hi * f:
            return None
        return (f"the volume per atom, {v:.4g} A^3, is outside {lo / f:.4g}-{hi * f:.4g} A^3 "
                f"({f:g} x the training set's range {lo:.4g}-{hi:.4g} A^3): the cell has left the "
                "model's domain (label such cells, or run NVT)")

    def model_deviation(self, positions, cell, pbc) -> float | None:
        """The max force deviation, eV/A (None when not computed for this model)."""
        if not self.deviation:
            return None
        from nnmd_kernels.md.forces import max_force_deviation

        pbc = np.asarray(pbc, bool)
        return max_force_deviation(self.potential, positions, self.numbers,
                                   cell if pbc.any() else None, pbc, backend=self.backend)

    def check_deviation(self, value) -> str | None:
        if self.max_deviation is None or value is None:
            return None
        if not math.isfinite(value) or value > self.max_deviation:
            return (f"model deviation {value:.4g} eV/A (max over atoms of the ensemble's "
                    f"force standard deviation) exceeds --max-deviation "
                    f"{self.max_deviation:g} eV/A")
        return None

    def check_full(self, frame) -> tuple[str | None, float | None]:
        """Every check on an MDFrame-like object; returns (reason or None, deviation)."""
        reason = self.check_cheap(frame.energy, frame.forces, frame.velocities, frame.masses)
        if reason is None:
            reason = self.check_distances(frame.positions, frame.cell, frame.pbc)
        if reason is None:
            reason = self.check_volume(frame.cell, frame.pbc, len(frame.positions))
        dev = None
        if reason is None:
            dev = self.model_deviation(frame.positions, frame.cell, frame.pbc)
            reason = self.check_deviation(dev)
        return reason, dev


def check_max_deviation(potential, max_deviation) -> None:
    """ValueError (exit 2) unless max_deviation is None or > 0 with an ensemble model."""
    if max_deviation is None:
        return
    if not (math.isfinite(max_deviation) and max_deviation > 0):
        raise ValueError(f"--max-deviation must be > 0 eV/A, got {max_deviation}")
    if potential is None or potential.n_models < 2:
        n = 1 if potential is None else potential.n_models
        raise ValueError(
            f"--max-deviation needs an ensemble model, this one has {n} member; train an "
            "ensemble with `nnmd train --models 4` (TrainConfig n_models)")


__all__ = ["COVALENT_FRACTION", "DISTANCE_INTERVAL", "DistanceFloor", "Guard", "MDStopped",
           "TEMPERATURE_FACTOR", "TRAINING_FRACTION", "VOLUME_FACTOR", "check_max_deviation",
           "temperature_ceiling"]


def stop_at_last_good(step: int, reason: str, frame, last_written, guard, traj, thermo):
    """The MDStopped for a guard stop at `step`, after making sure the trajectory ends on
    the last good frame: `frame` (an MDFrame of the step before, or None) is checked in
    full and written when it passes and is not written yet; a failing one leaves the last
    frame written as the last good one. The thermo log gets the stop as a note.
    Returns (the exception, the step last written)."""
    import dataclasses

    good, written = None, False
    if frame is not None:
        if last_written == frame.step:
            good, written = frame.step, True
        else:
            bad, dev = guard.check_full(frame) if guard is not None else (None, None)
            if bad is None:
                good = frame.step
                if traj is not None:
                    traj(dataclasses.replace(frame, max_force_dev=dev))
                    last_written, written = frame.step, True
            elif last_written is not None:
                good, written = last_written, True
    exc = MDStopped(step, reason, good, written)
    note = getattr(thermo, "note", None)
    if note is not None:
        note(exc.describe())
    return exc, last_written
