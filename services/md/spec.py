"""What an MD run does, validated at construction (units: fs, K, GPa, A)."""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field, fields

from nnmd_kernels.md.units import BAR_TO_GPA, GPA_TO_BAR, compressibility_per_gpa, pressure_gpa

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("bussi", "langevin")


@dataclass(frozen=True)
class MDSpec:
    """One MD run.

    ensemble: nve | nvt | npt. temperature (K): thermostat target, and the Maxwell-
    Boltzmann draw when the structure has no velocities. pressure_gpa: NPT target, GPa
    (a number, or a string such as "1.5 GPa"; see nnmd_kernels.md.units.pressure_gpa).
    thermostat: bussi (stochastic velocity rescaling) | langevin. tau_t_fs: thermostat
    time (Langevin friction = 1/tau_t). tau_p_fs, compressibility_per_gpa (1/GPa):
    barostat. anisotropic: NPT axes independent. skin_a: neighbour-list skin. Intervals
    in steps.

    The former keys pressure_bar and compressibility_per_bar (bar) are refused with a
    ValueError that gives the GPa key and value, from the constructor and from from_dict.
    """

    ensemble: str = "nve"
    dt_fs: float = 1.0
    steps: int = 1000
    temperature: float | None = None
    pressure_gpa: float | None = None
    thermostat: str = "bussi"
    tau_t_fs: float = 100.0
    tau_p_fs: float = 1000.0
    compressibility_per_gpa: float = 0.45
    anisotropic: bool = False
    seed: int = 0
    traj_interval: int = 10
    thermo_interval: int = 10
    skin_a: float = 1.0
    lammps_commands: tuple[str, ...] = field(default_factory=tuple)
    # removed (bar): giving either raises ValueError naming the GPa key
    pressure_bar: InitVar[float | None] = None
    compressibility_per_bar: InitVar[float | None] = None

    def __post_init__(self, pressure_bar=None, compressibility_per_bar=None):
        _refuse_bar("pressure_bar", pressure_bar)
        _refuse_bar("compressibility_per_bar", compressibility_per_bar)
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
        if self.ensemble == "npt" and self.pressure_gpa is None:
            raise ValueError("--pressure (GPa) is required for npt")
        if self.pressure_gpa is not None:
            object.__setattr__(self, "pressure_gpa", pressure_gpa(self.pressure_gpa,
                                                                  "pressure_gpa"))
        object.__setattr__(self, "compressibility_per_gpa", compressibility_per_gpa(
            self.compressibility_per_gpa, "compressibility_per_gpa"))
        for name in ("tau_t_fs", "tau_p_fs"):
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
        """From a dict (YAML/JSON): unknown keys and the former bar keys raise ValueError."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key in _RENAMED:
                _refuse_bar(key, d[key])
            if key not in known:
                raise ValueError(f"MD spec: unknown key {key!r} (known: {sorted(known)})")
        return cls(**d)


_RENAMED = {  # removed key -> (GPa key, factor to it, unit)
    "pressure_bar": ("pressure_gpa", BAR_TO_GPA, "bar", "pressures are in GPa"),
    "compressibility_per_bar": ("compressibility_per_gpa", GPA_TO_BAR, "1/bar",
                                "compressibilities are in 1/GPa"),
}


def _refuse_bar(key: str, value) -> None:
    if value is None:
        return
    new, factor, unit, rule = _RENAMED[key]
    try:
        hint = f"{key}: {float(value):g} ({unit}) is {new}: {float(value) * factor:.12g}"
    except (TypeError, ValueError):
        hint = f"give {new}"
    raise ValueError(f"MD spec: {key} is no longer accepted, {rule}; {hint}")
