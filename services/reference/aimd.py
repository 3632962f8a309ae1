"""First-principles MD bootstrap: MD driven by the reference itself, every frame
kept as training data with provenance ``aimd`` (the source's "200 steps of QE MD"
before the first NNP exists).

Velocities start from Maxwell-Boltzmann at the temperature (centre-of-mass
motion removed); the integrator is ASE's Langevin (NVT, default) or velocity
Verlet (NVE). Frames are recorded by an observer after every ``interval``
steps, including step 0; each holds positions, momenta and the reference's
energy, forces and stress at those positions (no extra reference call).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ASE >= 3.28
    from ase.md.velocitydistribution import thermalize_momenta as _maxwell_boltzmann
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _maxwell_boltzmann
from ase.md.verlet import VelocityVerlet

from services.reference.calculator import ReferenceCalculator
from services.reference.labels import labelled
from services.reference.types import Failure, ReferenceBackend, ReferenceError

THERMOSTATS = ("langevin", "nve")
AIMD_CHAIN = "aimd"


@dataclass(frozen=True)
class AIMDConfig:
    """temperature_K: Maxwell-Boltzmann start and Langevin bath. timestep_fs: fs.
    friction_per_fs: Langevin friction (1/fs). interval: record every n steps."""

    temperature_K: float
    steps: int = 200
    timestep_fs: float = 1.0
    thermostat: str = "langevin"
    friction_per_fs: float = 0.01
    seed: int = 0
    interval: int = 1

    def __post_init__(self):
        if self.temperature_K < 0:
            raise ValueError(f"temperature_K must be >= 0, got {self.temperature_K}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.timestep_fs <= 0:
            raise ValueError(f"timestep_fs must be > 0, got {self.timestep_fs}")
        if self.thermostat not in THERMOSTATS:
            raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {self.thermostat!r}")
        if self.friction_per_fs < 0:
            raise ValueError(f"friction_per_fs must be >= 0, got {self.friction_per_fs}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")


@dataclass(frozen=True)
class AIMDRun:
    frames: list[Atoms]  # labelled, provenance 'aimd'
    failure: Failure | None  # why the run stopped early, None when it completed


def run_aimd(backend: ReferenceBackend, atoms: Atoms, config: AIMDConfig,
             on_frame: Callable[[Atoms], None] | None = None) -> AIMDRun:
    """Run ``config.steps`` MD steps with the reference; return every recorded frame.

    on_frame: called with each labelled frame as it is made (e.g. to append it to
    a file, so a long run loses nothing when it stops).
    """
    rng = np.random.default_rng(config.seed)
    system = atoms.copy()
    system.calc = ReferenceCalculator(backend)
    _maxwell_boltzmann(system, temperature_K=config.temperature_K, rng=rng)
    Stationary(system)
    dt = config.timestep_fs * units.fs
    if config.thermostat == "langevin":
        dyn = Langevin(system, dt, temperature_K=config.temperature_K,
                       friction=config.friction_per_fs / units.fs, fixcm=False, rng=rng)
    else:
        dyn = VelocityVerlet(system, dt)
    frames: list[Atoms] = []

    def record():
        result = system.calc.last_result
        frame = labelled(system, result, source="aimd", step=dyn.nsteps,
                         time_fs=dyn.nsteps * config.timestep_fs,
                         temperature_K=float(system.get_temperature()),
                         target_temperature_K=config.temperature_K,
                         thermostat=config.thermostat)
        frames.append(frame)
        if on_frame is not None:
            on_frame(frame)

    dyn.attach(record, interval=config.interval)
    try:
        dyn.run(config.steps)
    except ReferenceError as exc:
        return AIMDRun(frames, exc.failure)
    return AIMDRun(frames, None)


def aimd_record(frame: Atoms, campaign: str, settings_hash: str = ""):
    """A labelled MD frame as a store Record with provenance source 'aimd'."""
    from services.runtime.convert import from_atoms
    from services.store import Provenance, Record

    structure, labels = from_atoms(frame)
    return Record(structure, labels, Provenance(
        campaign=campaign, chain=AIMD_CHAIN, step=int(frame.info["step"]), source="aimd",
        accepted=True, reference_settings_hash=settings_hash,
        wall_time=float(frame.info.get("ref_wall_s", float("nan")))))
