"""Integrators as (init_fn, step_fn) pairs over a frozen MDState (JAX-MD simulate.py shape).

force_fn(positions (N, 3) A, cell (3, 3) A) -> (energy eV, forces (N, 3) eV/A,
virial (3, 3) eV). Every step_fn calls force_fn exactly once.

- nve: velocity Verlet (Swope et al., J. Chem. Phys. 76, 637 (1982)).
- nvt_langevin: BAOAB splitting (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34).
- nvt_bussi: stochastic velocity rescaling (Bussi, Donadio & Parrinello, J. Chem. Phys.
  126, 014101 (2007)) applied for dt/2 before and after a velocity Verlet step.
- npt_scr: stochastic cell rescaling (Bernetti & Bussi, J. Chem. Phys. 153, 114107
  (2020)) with the Bussi thermostat; isotropic, or the three Cartesian axes independently.
  Its target pressure is in GPa and its compressibility in 1/GPa (eV/A^3 inside).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nnmd_kernels.md import units
from nnmd_kernels.md.state import (
    MDState,
    degrees_of_freedom,
    kinetic_energy,
    kinetic_tensor,
    make_rng,
    maxwell_boltzmann,
)
from nnmd_kernels.md.units import (
    BAR_TO_GPA,
    GPA_TO_BAR,
    GPA_TO_EV_PER_A3,
    KB_EV_PER_K,
    MVV_TO_EV,
)

ForceFn = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray, np.ndarray]]


def _positive(name, value, unit):
    if not value > 0:
        raise ValueError(f"{name} must be > 0 {unit}, got {value}")


def initial_arrays(positions, masses, cell, velocities=None, temperature=None, seed=0,
                   zero_momentum=True):
    """Checked host arrays of a starting state: (x (N, 3) A, m (N,) amu, h (3, 3) A,
    v (N, 3) A/fs, rng); v as given, else Maxwell-Boltzmann at `temperature` K, else 0."""
    x = np.array(positions, dtype=float)
    n = len(x)
    if x.shape != (n, 3):
        raise ValueError(f"positions must have shape (N, 3), got {x.shape}")
    m = np.array(masses, dtype=float)
    if m.shape != (n,) or np.any(m <= 0):
        raise ValueError(f"masses must be ({n},) positive amu, got shape {m.shape}")
    h = np.array(cell, dtype=float)
    if h.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {h.shape}")
    rng = make_rng(seed)
    if velocities is not None:
        v = np.array(velocities, dtype=float)
        if v.shape != (n, 3):
            raise ValueError(f"velocities must have shape ({n}, 3) A/fs, got {v.shape}")
    elif temperature is not None:
        v = maxwell_boltzmann(m, temperature, rng, zero_momentum)
    else:
        v = np.zeros((n, 3))
    return x, m, h, v, rng


def init(force_fn: ForceFn, positions, masses, numbers, cell, pbc=(True, True, True), *,
         velocities=None, temperature=None, seed=0, zero_momentum=True) -> MDState:
    """A state at step 0 with forces evaluated.

    velocities (N, 3) A/fs are used exactly when given (e.g. from extxyz momenta);
    otherwise they are drawn from Maxwell-Boltzmann at `temperature` K (zero if None).
    seed: int, or a saved rng state dict.
    """
    x, m, h, v, rng = initial_arrays(positions, masses, cell, velocities, temperature, seed,
                                     zero_momentum)
    energy, forces, virial = force_fn(x, h)
    return MDState(
        positions=x, velocities=v, masses=m, numbers=np.array(numbers, dtype=int), cell=h,
        pbc=np.array(pbc, dtype=bool), energy=float(energy), forces=np.array(forces),
        virial=np.array(virial), rng_state=rng.bit_generator.state,
    )


def _half_kick(v, forces, masses, dt):
    """Momentum half step: v += dt/2 F / m."""
    return v + (0.5 * dt / MVV_TO_EV) * forces / masses[:, None]


def _forces_at(force_fn, x, cell):
    energy, forces, virial = force_fn(x, cell)
    return float(energy), np.asarray(forces), np.asarray(virial)


def nve(force_fn: ForceFn, dt: float):
    """Velocity Verlet with time step dt fs. Returns (init_fn, step_fn)."""
    _positive("dt", dt, "fs")

    def step_fn(s: MDState) -> MDState:
        v = _half_kick(s.velocities, s.forces, s.masses, dt)  # momentum half step
        x = s.positions + dt * v  # position step
        energy, forces, virial = _forces_at(force_fn, x, s.cell)  # force
        v = _half_kick(v, forces, s.masses, dt)  # momentum half step
        return s.replace(positions=x, velocities=v, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn


def nvt_langevin(force_fn: ForceFn, dt: float, temperature: float, friction: float = 0.01):
    """Langevin dynamics, BAOAB splitting; friction gamma in 1/fs (default 0.01 = 1/100 fs)."""
    _positive("dt", dt, "fs")
    _positive("temperature", temperature, "K")
    _positive("friction", friction, "1/fs")
    c1 = np.exp(-friction * dt)
    kt = KB_EV_PER_K * temperature

    def step_fn(s: MDState) -> MDState:
        rng = make_rng(s.rng_state)
        v = _half_kick(s.velocities, s.forces, s.masses, dt)  # B
        x = s.positions + 0.5 * dt * v  # A
        k_before = kinetic_energy(v, s.masses)
        sigma = np.sqrt((1.0 - c1 * c1) * kt / (s.masses * MVV_TO_EV))  # (N,) A/fs
        v = c1 * v + sigma[:, None] * rng.normal(size=v.shape)  # O
        heat = kinetic_energy(v, s.masses) - k_before
        x = x + 0.5 * dt * v  # A
        energy, forces, virial = _forces_at(force_fn, x, s.cell)
        v = _half_kick(v, forces, s.masses, dt)  # B
        return s.replace(positions=x, velocities=v, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt,
                         rng_state=rng.bit_generator.state, bath_energy=s.bath_energy + heat)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn


def bussi_factor(kinetic, kinetic_target, dof, c, rng) -> float:
    """Velocity scale factor alpha of the Bussi thermostat over one interval, c = exp(-t/tau).

    Eq. (A7) of Bussi, Donadio & Parrinello (2007): the new kinetic energy alpha^2 K is an
    exact draw of the stochastic process, the sum of dof - 1 squared normals taken as a
    chi-squared variate.
    """
    if kinetic <= 0.0:
        raise ValueError("the Bussi thermostat cannot scale zero velocities: start from a "
                         "temperature (Maxwell-Boltzmann velocities) or given velocities")
    r1 = rng.normal()
    r_sum = rng.chisquare(dof - 1) if dof > 1 else 0.0
    ratio = kinetic_target / (dof * kinetic)
    alpha2 = c + (1.0 - c) * (r_sum + r1 * r1) * ratio + 2.0 * r1 * np.sqrt(c * (1.0 - c) * ratio)
    alpha = np.sqrt(max(alpha2, 0.0))
    if r1 + np.sqrt(c / ((1.0 - c) * ratio)) < 0.0:
        alpha = -alpha
    return float(alpha)


def _bussi_half(v, masses, dof, kt, c_half, rng):
    k = kinetic_energy(v, masses)
    alpha = bussi_factor(k, 0.5 * dof * kt, dof, c_half, rng)
    return alpha * v, (alpha * alpha - 1.0) * k


def nvt_bussi(force_fn: ForceFn, dt: float, temperature: float, tau: float = 100.0,
              dof: int | None = None):
    """Bussi stochastic velocity rescaling around velocity Verlet; tau in fs.

    dof: thermostatted degrees of freedom, default 3N - 3 (total momentum is conserved by
    a periodic potential and stays zero); use 3N when external forces break that.
    """
    _positive("dt", dt, "fs")
    _positive("temperature", temperature, "K")
    _positive("tau", tau, "fs")
    c_half = np.exp(-0.5 * dt / tau)
    kt = KB_EV_PER_K * temperature

    def step_fn(s: MDState) -> MDState:
        rng = make_rng(s.rng_state)
        nf = dof or degrees_of_freedom(s.n_atoms)
        v, heat1 = _bussi_half(s.velocities, s.masses, nf, kt, c_half, rng)
        v = _half_kick(v, s.forces, s.masses, dt)
        x = s.positions + dt * v
        energy, forces, virial = _forces_at(force_fn, x, s.cell)
        v = _half_kick(v, forces, s.masses, dt)
        v, heat2 = _bussi_half(v, s.masses, nf, kt, c_half, rng)
        return s.replace(positions=x, velocities=v, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt,
                         rng_state=rng.bit_generator.state,
                         bath_energy=s.bath_energy + heat1 + heat2)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn


_RENAMED_NPT = {  # old keyword -> (new keyword, factor old -> new, old unit)
    "pressure_bar": ("pressure_gpa", BAR_TO_GPA, "bar", "pressures are in GPa"),
    "compressibility_per_bar": ("compressibility_per_gpa", GPA_TO_BAR, "1/bar",
                                "compressibilities are in 1/GPa"),
}


def _reject_old_units(removed: dict) -> None:
    for key, value in removed.items():
        if key not in _RENAMED_NPT:
            raise TypeError(f"npt_scr() got an unexpected keyword argument {key!r}")
        new, factor, unit, rule = _RENAMED_NPT[key]
        hint = ""
        try:
            hint = f"; {key}={value:g} is {new}={float(value) * factor:.12g}"
        except (TypeError, ValueError):
            pass
        raise ValueError(f"npt_scr: {key} ({unit}) is no longer accepted: {rule}, "
                         f"pass {new}{hint}")


def npt_scr(force_fn: ForceFn, dt: float, temperature: float, pressure_gpa: float | None = None,
            tau_t: float = 100.0, tau_p: float = 1000.0,
            compressibility_per_gpa: float = 0.45, anisotropic: bool = False,
            dof: int | None = None, **removed):
    """NPT by stochastic cell rescaling (Bernetti & Bussi 2020) plus the Bussi thermostat.

    pressure_gpa: target pressure, GPa (required; |P| <= 1000 GPa, see
    nnmd_kernels.md.units.pressure_gpa). The former pressure_bar / compressibility_per_bar
    keywords raise ValueError naming the GPa value.

    Isotropic: eps = ln V follows the Ito equation
        d eps = -(beta_T / tau_p) (P0 - P_int) dt + sqrt(2 kT beta_T / (V tau_p)) dW,
    whose stationary law is V^N exp(-beta P0 V - beta U) (the kT/V term of the paper's
    equation for V cancels in ln V); positions scale by exp(d eps / 3), velocities by
    exp(-d eps / 3). Anisotropic: each Cartesian axis a has its own eps_a driven by P_aa
    (the cell's shear is held; the box lengths fluctuate independently).
    P_int uses the instantaneous kinetic energy. tau_p fs; compressibility beta_T in
    1/GPa (default 0.45 /GPa, water) only sets the relaxation time, not the sampled
    distribution. The barostat acts once per step between the first half kick and the
    drift, so that forces are always evaluated at the rescaled coordinates.
    """
    _reject_old_units(removed)
    if pressure_gpa is None:
        raise TypeError("npt_scr() needs pressure_gpa (the target pressure, GPa)")
    pressure_gpa = units.pressure_gpa(pressure_gpa, "pressure_gpa")
    compressibility_per_gpa = units.compressibility_per_gpa(compressibility_per_gpa,
                                                            "compressibility_per_gpa")
    _positive("dt", dt, "fs")
    _positive("temperature", temperature, "K")
    _positive("tau_t", tau_t, "fs")
    _positive("tau_p", tau_p, "fs")
    c_half = np.exp(-0.5 * dt / tau_t)
    kt = KB_EV_PER_K * temperature
    p0 = pressure_gpa * GPA_TO_EV_PER_A3  # eV/A^3
    beta_t = compressibility_per_gpa / GPA_TO_EV_PER_A3  # A^3/eV

    def barostat(x, v, cell, masses, virial, rng):
        volume = abs(np.linalg.det(cell))
        p_tensor = (kinetic_tensor(v, masses) + virial) / volume  # eV/A^3
        noise = np.sqrt(2.0 * kt * beta_t * dt / (volume * tau_p))
        if anisotropic:
            deps = -(beta_t / tau_p) * (p0 - np.diag(p_tensor)) * dt + noise * rng.normal(size=3)
            mu = np.exp(deps)  # (3,) per Cartesian axis
        else:
            p_int = np.trace(p_tensor) / 3.0
            deps = -(beta_t / tau_p) * (p0 - p_int) * dt + noise * rng.normal()
            mu = np.full(3, np.exp(deps / 3.0))
        return x * mu, v / mu, cell * mu

    def step_fn(s: MDState) -> MDState:
        rng = make_rng(s.rng_state)
        nf = dof or degrees_of_freedom(s.n_atoms)
        v, heat1 = _bussi_half(s.velocities, s.masses, nf, kt, c_half, rng)
        v = _half_kick(v, s.forces, s.masses, dt)
        x, v, cell = barostat(s.positions, v, s.cell, s.masses, s.virial, rng)
        x = x + dt * v
        energy, forces, virial = _forces_at(force_fn, x, cell)
        v = _half_kick(v, forces, s.masses, dt)
        v, heat2 = _bussi_half(v, s.masses, nf, kt, c_half, rng)
        return s.replace(positions=x, velocities=v, cell=cell, energy=energy, forces=forces,
                         virial=virial, step=s.step + 1, time_fs=s.time_fs + dt,
                         rng_state=rng.bit_generator.state,
                         bath_energy=s.bath_energy + heat1 + heat2)

    return (lambda *a, **k: init(force_fn, *a, **k)), step_fn
