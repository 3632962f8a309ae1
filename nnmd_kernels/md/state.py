"""The MD state (frozen, checkpointable) and the quantities read off it.

Units: positions A, velocities A/fs, masses amu, energies eV, forces eV/A, virial eV
(LAMMPS convention W = sum_i r_i (x) f_i), cell (3, 3) A with lattice vectors as rows.
Index names: i = atom, a/b = Cartesian component.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from nnmd_kernels.md.units import KB_EV_PER_K, MVV_TO_EV


@dataclass(frozen=True, eq=False)
class MDState:
    positions: np.ndarray  # (N, 3) A
    velocities: np.ndarray  # (N, 3) A/fs
    masses: np.ndarray  # (N,) amu
    numbers: np.ndarray  # (N,) atomic numbers
    cell: np.ndarray  # (3, 3) A, rows = lattice vectors
    pbc: np.ndarray  # (3,) bool
    energy: float  # potential energy, eV
    forces: np.ndarray  # (N, 3) eV/A, at `positions`
    virial: np.ndarray  # (3, 3) eV, at `positions`
    step: int = 0
    time_fs: float = 0.0
    # state of the random stream (numpy bit generator state dict) so that a stochastic
    # run resumed from a checkpoint continues the same stream
    rng_state: dict | None = None
    # energy the thermostat put in (eV): energy + kinetic - bath_energy is conserved by
    # the Bussi thermostat, and is the NVE total energy for velocity Verlet
    bath_energy: float = 0.0

    def replace(self, **changes) -> MDState:
        return dataclasses.replace(self, **changes)

    @property
    def n_atoms(self) -> int:
        return len(self.masses)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    def to_dict(self) -> dict:
        """Arrays, numbers and one JSON string (the rng state): a checkpoint for np.savez or
        a Zarr group, read back with from_dict."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["rng_state"] = json.dumps(self.rng_state)
        return d

    @classmethod
    def from_dict(cls, d) -> MDState:
        """Inverse of to_dict; also takes the mapping np.load returns (0-d arrays)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if isinstance(v, np.ndarray) and v.ndim == 0:
                v = v.item()
            out[f.name] = v
        rng = out.get("rng_state")
        if isinstance(rng, str):
            out["rng_state"] = json.loads(rng)
        out["step"] = int(out.get("step", 0))
        for name in ("time_fs", "energy", "bath_energy"):
            if name in out:
                out[name] = float(out[name])
        for name in ("positions", "velocities", "masses", "forces", "virial", "cell"):
            out[name] = np.asarray(out[name], dtype=float)
        out["numbers"] = np.asarray(out["numbers"], dtype=int)
        out["pbc"] = np.asarray(out["pbc"], dtype=bool)
        return cls(**out)


def json_fields(state) -> dict:
    """A frozen state dataclass (chain, MC) as plain JSON types: arrays as lists, the rng
    state as one JSON string; read back with fields_from_json."""
    d = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        d[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
    d["rng_state"] = json.dumps(state.rng_state)
    return d


def fields_from_json(cls, d: dict) -> dict:
    """The fields of dataclass `cls` present in `d` (from json_fields), rng state parsed;
    the caller turns lists back into arrays of its dtypes."""
    out = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
    rng = out.get("rng_state")
    out["rng_state"] = json.loads(rng) if isinstance(rng, str) else rng
    return out


def kinetic_energy(velocities, masses) -> float:
    """0.5 sum_i m_i v_i^2 in eV; velocities (N, 3) A/fs, masses (N,) amu."""
    return 0.5 * MVV_TO_EV * float(np.einsum("i,ia,ia->", masses, velocities, velocities))


def kinetic_tensor(velocities, masses) -> np.ndarray:
    """sum_i m_i v_i (x) v_i, (3, 3) eV (twice the kinetic-energy tensor)."""
    return MVV_TO_EV * np.einsum("i,ia,ib->ab", masses, velocities, velocities)


def degrees_of_freedom(n_atoms: int, fixed_com: bool = True) -> int:
    return 3 * n_atoms - (3 if fixed_com and n_atoms > 1 else 0)


def temperature(state: MDState, fixed_com: bool = True) -> float:
    """Instantaneous kinetic temperature, K (3N - 3 degrees of freedom by default)."""
    dof = degrees_of_freedom(state.n_atoms, fixed_com)
    return 2.0 * kinetic_energy(state.velocities, state.masses) / (dof * KB_EV_PER_K)


def pressure_tensor(state: MDState) -> np.ndarray:
    """P_ab = (sum_i m v_a v_b + W_ab) / V, (3, 3) eV/A^3 (positive = pushes outward)."""
    return (kinetic_tensor(state.velocities, state.masses) + state.virial) / state.volume


def pressure(state: MDState) -> float:
    """Scalar pressure, eV/A^3."""
    return float(np.trace(pressure_tensor(state))) / 3.0


def maxwell_boltzmann(masses, temperature_k, rng, zero_momentum=True) -> np.ndarray:
    """Velocities (N, 3) A/fs drawn from Maxwell-Boltzmann at temperature_k.

    With zero_momentum the mass-weighted mean velocity is removed (the drawn temperature
    then refers to 3N - 3 degrees of freedom); no rescaling to the exact temperature, so
    the draw stays canonical (needed by SLHMC's acceptance test).
    """
    m = np.asarray(masses, dtype=float)
    if temperature_k < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature_k}")
    sigma = np.sqrt(KB_EV_PER_K * temperature_k / (m * MVV_TO_EV))  # (N,) A/fs
    v = rng.normal(size=(len(m), 3)) * sigma[:, None]
    if zero_momentum and len(m) > 1:
        v -= (m @ v) / m.sum()
    return v


def make_rng(seed_or_state):
    """numpy Generator from a seed or from a saved bit-generator state dict."""
    if isinstance(seed_or_state, dict):
        bg = getattr(np.random, seed_or_state["bit_generator"])()
        bg.state = seed_or_state
        return np.random.Generator(bg)
    return np.random.Generator(np.random.PCG64(seed_or_state))
