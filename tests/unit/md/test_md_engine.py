"""Native MD engine: conservation, reversibility, canonical sampling, NPT, checkpoints."""

import numpy as np
import pytest
from md_testpot import cu_crystal, ideal_gas_force_fn, morse_force_fn, short_morse_force_fn

from nnmd_kernels.md import (
    MDState,
    kinetic_energy,
    maxwell_boltzmann,
    npt_scr,
    nve,
    nvt_bussi,
    nvt_langevin,
    pressure_tensor,
    run,
    run_batch,
)
from nnmd_kernels.md.units import EV_PER_A3_TO_GPA, GPA_TO_EV_PER_A3, KB_EV_PER_K

A_SHORT = 3.62  # lattice constant near P = 0 for short_morse_force_fn

def _init(init_fn, atoms, **kw):
    return init_fn(atoms.positions, atoms.get_masses(), atoms.numbers, atoms.cell.array,
                   atoms.pbc, **kw)


def _block_mean_err(x, n_blocks=20):
    blocks = np.array([b.mean() for b in np.array_split(np.asarray(x), n_blocks)])
    return blocks.mean(), blocks.std(ddof=1) / np.sqrt(n_blocks)


def test_nve_energy_drift_below_1e4_ev_per_atom_ps():
    atoms = cu_crystal(3, rattle=0.02)
    init_fn, step_fn = nve(morse_force_fn(), dt=2.0)
    s = _init(init_fn, atoms, temperature=600.0, seed=1)
    times, etot = [], []

    def record(st):
        times.append(st.time_fs * 1e-3)
        etot.append((st.energy + kinetic_energy(st.velocities, st.masses)) / st.n_atoms)

    s = run(step_fn, s, 500, observers=[(5, record)])
    slope = np.polyfit(times, etot, 1)[0]  # eV/atom/ps
    assert abs(slope) < 1e-4
    assert np.ptp(etot) < 2e-4  # and no large excursions over the 1 ps
    assert np.abs(s.velocities.T @ s.masses).max() < 1e-10  # momentum stays zero


def test_velocity_verlet_is_time_reversible():
    atoms = cu_crystal(2, a=A_SHORT, rattle=0.05)
    init_fn, step_fn = nve(short_morse_force_fn(), dt=2.0)
    s0 = _init(init_fn, atoms, temperature=500.0, seed=2)
    s1 = run(step_fn, s0, 100)
    assert np.abs(s1.positions - s0.positions).max() > 0.05
    back = run(step_fn, s1.replace(velocities=-s1.velocities), 100)
    np.testing.assert_allclose(back.positions, s0.positions, atol=1e-9)
    np.testing.assert_allclose(-back.velocities, s0.velocities, atol=1e-11)


@pytest.mark.parametrize("thermostat", ["langevin", "bussi"])
def test_nvt_kinetic_energy_is_canonical(thermostat):
    """K ~ Gamma(dof/2, kT): mean dof kT / 2 and variance dof (kT)^2 / 2."""
    atoms = cu_crystal(2, a=A_SHORT, rattle=0.02)
    t_k, n = 400.0, len(atoms)
    fn = short_morse_force_fn()
    if thermostat == "langevin":
        init_fn, step_fn = nvt_langevin(fn, dt=2.0, temperature=t_k, friction=0.02)
        dof = 3 * n  # friction and noise act on every component: momentum is not conserved
    else:
        init_fn, step_fn = nvt_bussi(fn, dt=2.0, temperature=t_k, tau=20.0)
        dof = 3 * n - 3
    s = run(step_fn, _init(init_fn, atoms, temperature=t_k, seed=3), 300)  # equilibrate
    ks = []
    run(step_fn, s, 8000, observers=[(2, lambda st: ks.append(
        kinetic_energy(st.velocities, st.masses)))])
    kt = KB_EV_PER_K * t_k
    ks = np.array(ks)
    mean, err = _block_mean_err(ks)
    var, var_err = _block_mean_err((ks - ks.mean()) ** 2)
    assert abs(mean - 0.5 * dof * kt) < 4 * err
    assert abs(var - 0.5 * dof * kt**2) < 4 * var_err
    assert var_err < 0.1 * 0.5 * dof * kt**2  # precise enough to see a 10 % error


def test_bussi_conserves_the_effective_energy():
    atoms = cu_crystal(2, a=A_SHORT, rattle=0.02)
    init_fn, step_fn = nvt_bussi(short_morse_force_fn(), dt=2.0, temperature=800.0,
                                 tau=50.0)
    s0 = _init(init_fn, atoms, temperature=100.0, seed=4)
    s1 = run(step_fn, s0, 400)

    def h(s):
        return s.energy + kinetic_energy(s.velocities, s.masses) - s.bath_energy

    assert s1.bath_energy > 0.5  # the bath really heated the crystal...
    assert abs(h(s1) - h(s0)) / len(atoms) < 1e-3  # ...and the books balance


def test_npt_ideal_gas_volume_distribution():
    """Ideal gas with fixed total momentum: V ~ Gamma(N, kT/P), mean N kT / P, var / mean^2 = 1/N."""
    rng = np.random.default_rng(5)
    n, t_k, p_gpa = 64, 300.0, 0.2
    kt, p = KB_EV_PER_K * t_k, p_gpa * GPA_TO_EV_PER_A3
    v_ref = n * kt / p
    cell = np.eye(3) * v_ref ** (1 / 3)
    init_fn, step_fn = npt_scr(ideal_gas_force_fn, dt=5.0, temperature=t_k, pressure_gpa=p_gpa,
                               tau_t=10.0, tau_p=100.0, compressibility_per_gpa=1 / p_gpa)
    s = init_fn(rng.uniform(size=(n, 3)) @ cell, np.full(n, 39.95), np.full(n, 18), cell,
                temperature=t_k, seed=6)
    s = run(step_fn, s, 500)
    vols = []
    run(step_fn, s, 30000, observers=[(5, lambda st: vols.append(st.volume))])
    vols = np.array(vols)
    mean, err = _block_mean_err(vols)
    assert abs(mean - v_ref) < 4 * err and err < 0.01 * v_ref
    rel_var, rel_var_err = _block_mean_err((vols / vols.mean() - 1) ** 2)
    assert abs(rel_var - 1 / n) < 4 * rel_var_err and rel_var_err < 0.15 / n


@pytest.mark.parametrize("anisotropic", [False, True])
def test_npt_crystal_pressure_averages_to_target(anisotropic):
    atoms = cu_crystal(2, a=A_SHORT, rattle=0.02)
    p_gpa = 1.0
    init_fn, step_fn = npt_scr(short_morse_force_fn(), dt=2.0, temperature=300.0,
                               pressure_gpa=p_gpa, tau_t=50.0, tau_p=40.0,
                               compressibility_per_gpa=2e-3, anisotropic=anisotropic)
    s = run(step_fn, _init(init_fn, atoms, temperature=300.0, seed=7), 500)
    ptens, cells = [], []

    def record(st):
        ptens.append(np.diag(pressure_tensor(st)) * EV_PER_A3_TO_GPA)
        cells.append(np.diag(st.cell))

    run(step_fn, s, 6000, observers=[(2, record)])
    ptens, cells = np.array(ptens), np.array(cells)
    # a 32-atom stiff crystal: instantaneous pressures scatter by ~2 GPa
    components = range(3) if anisotropic else [None]
    for a in components:
        series = ptens[:, a] if a is not None else ptens.mean(axis=1)
        mean, err = _block_mean_err(series)
        assert abs(mean - p_gpa) < 4 * err + 0.015  # 0.015 GPa ~ kT/V finite-size term
        assert err < 0.3 * p_gpa  # enough to tell the target from zero pressure
    spread = np.std(cells[:, 0] - cells[:, 1])
    if anisotropic:
        assert spread > 1e-3  # the axes move independently
    else:
        assert spread < 1e-10  # the cubic cell stays cubic


def test_stochastic_run_resumes_bit_for_bit_from_a_checkpoint(tmp_path):
    atoms = cu_crystal(2, a=A_SHORT, rattle=0.02)
    init_fn, step_fn = nvt_langevin(short_morse_force_fn(), dt=2.0, temperature=300.0)
    s0 = _init(init_fn, atoms, temperature=300.0, seed=8)
    straight = run(step_fn, s0, 20)
    half = run(step_fn, s0, 10)
    np.savez(tmp_path / "ckpt.npz", **half.to_dict())
    with np.load(tmp_path / "ckpt.npz") as saved:
        resumed = run(step_fn, MDState.from_dict(saved), 10)
    np.testing.assert_array_equal(resumed.positions, straight.positions)
    np.testing.assert_array_equal(resumed.velocities, straight.velocities)
    assert resumed.step == 20


def test_batch_of_replicas_equals_separate_runs():
    fn = short_morse_force_fn()
    init_fn, step_fn = nve(fn, dt=1.0)
    states = [_init(init_fn, cu_crystal(2, a=A_SHORT, rattle=0.03, seed=k), temperature=300.0, seed=k)
              for k in range(3)]
    seen = []
    batch = run_batch(step_fn, states, 15, observers=[(5, lambda r, s: seen.append((r, s.step)))])
    for b, s in zip(batch, states):
        np.testing.assert_array_equal(b.positions, run(step_fn, s, 15).positions)
    assert seen == [(r, k) for k in (5, 10, 15) for r in range(3)]
    with pytest.raises(ValueError, match="step functions"):
        run_batch([step_fn], states, 1)


def test_velocity_initialisation():
    atoms = cu_crystal(2, a=A_SHORT)
    init_fn, _ = nve(short_morse_force_fn(), dt=1.0)
    given = np.random.default_rng(9).normal(scale=0.01, size=(len(atoms), 3))
    s = _init(init_fn, atoms, velocities=given, temperature=1000.0)
    np.testing.assert_array_equal(s.velocities, given)  # used exactly, not redrawn
    m = np.full(4000, 6.94)
    v = maxwell_boltzmann(m, 600.0, np.random.default_rng(10))
    np.testing.assert_allclose(m @ v, 0.0, atol=1e-10)
    t_measured = 2 * kinetic_energy(v, m) / ((3 * len(m) - 3) * KB_EV_PER_K)
    assert t_measured == pytest.approx(600.0, rel=4 * np.sqrt(2 / (3 * len(m))))
    with pytest.raises(ValueError, match="dt"):
        nve(morse_force_fn(), dt=0.0)
    with pytest.raises(ValueError, match="velocities"):
        _init(init_fn, atoms, velocities=given[:3])
