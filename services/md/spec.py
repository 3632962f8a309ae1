"""What an MD run does, validated at construction (units: fs, K, bar)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("bussi", "langevin")


@dataclass(frozen=True)
class MDSpec:
    """One MD run.

    ensemble: nve | nvt | npt. temperature (K): thermostat target, and the Maxwell-
    Boltzmann draw when the structure has no velocities. pressure_bar: NPT target.
    thermostat: bussi (stochastic velocity rescaling) | langevin. tau_t_fs: thermostat
    time (Langevin friction = 1/tau_t). tau_p_fs, compressibility_per_bar: barostat.
    anisotropic: NPT axes independent. skin_a: neighbour-list skin. Intervals in steps.
    """

    ensemble: str = "nve"
    dt_fs: float = 1.0
    steps: int = 1000
    temperature: float | None = None
    pressure_bar: float | None = None
    thermostat: str = "bussi"
    tau_t_fs: float = 100.0
    tau_p_fs: float = 1000.0
    compressibility_per_bar: float = 4.5e-5
    anisotropic: bool = False
    seed: int = 0
    traj_interval: int = 10
    thermo_interval: int = 10
    skin_a: float = 1.0
    lammps_commands: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if self.thermostat not in THERMOSTATS:
            raise ValueError(f"thermostat must be one of {THERMOSTATS}, got {self.thermostat!r}")
        if not self.dt_fs > 0:
            raise ValueError(f"dt must be > 0 fs, got {self.dt_fs}")
        if self.dt_fs > 10:
            raise ValueError(f"dt = {self.dt_fs} fs is too long for atomistic MD; use 0.5-5 fs")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.ensemble in ("nvt", "npt") and (self.temperature is None or self.temperature <= 0):
            raise ValueError(f"--temperature (K, > 0) is required for {self.ensemble}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 K, got {self.temperature}")
        if self.ensemble == "npt" and self.pressure_bar is None:
            raise ValueError("--pressure (bar) is required for npt")
        for name in ("tau_t_fs", "tau_p_fs", "compressibility_per_bar"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("traj_interval", "thermo_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 step, got {getattr(self, name)}")
        if self.skin_a < 0:
            raise ValueError(f"skin must be >= 0 A, got {self.skin_a}")
        object.__setattr__(self, "lammps_commands", tuple(self.lammps_commands))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lammps_commands"] = list(self.lammps_commands)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MDSpec:
        return cls(**d)
