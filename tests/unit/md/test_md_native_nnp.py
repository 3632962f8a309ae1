"""The native engine driven by the NNP (nnmd_kernels.Potential)."""

import dataclasses

import numpy as np
import pytest
from ase import units
from ase.build import bulk

from nnmd_kernels import Potential
from nnmd_kernels.md import kinetic_energy, nve, nvt_bussi, run
from nnmd_kernels.md.forces import potential_force_fn
from services.md.native import run_native, run_native_batch
from services.md.spec import MDSpec


@pytest.fixture(scope="module")
def smooth_potential():
    pot = Potential.random(["Li", "P", "S"], seed=0, n_radial=12, n_angular=8, r_radial=4.5,
                           r_angular=4.0)
    # random networks on standardised features are much stiffer than a trained model;
    # widening the standardisation 10x gives a random-but-smooth surface
    return dataclasses.replace(pot, feature_std=pot.feature_std * 10.0)


def _lps16(seed=1):
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat(2)
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_nnp_nve_energy_drift_below_1e4_ev_per_atom_ps(smooth_potential):
    """Thermalise at 300 K (Bussi), then NVE; dt = 0.25 fs resolves the fastest (Li) modes
    of this random surface (at 0.5 fs the error grows 30x: the step is near its limit)."""
    atoms = _lps16()
    ff = potential_force_fn(smooth_potential, atoms.numbers, True, skin=1.0, backend="numpy")
    dt = 0.25
    init_fn, thermalise = nvt_bussi(ff, dt, 300.0, tau=10.0)
    _, step_fn = nve(ff, dt)
    s = init_fn(atoms.positions, atoms.get_masses(), atoms.numbers, atoms.cell.array,
                temperature=300.0, seed=1)
    s = run(thermalise, s, 300)
    times, etot = [], []

    def record(st):
        times.append(st.time_fs * 1e-3)
        etot.append((st.energy + kinetic_energy(st.velocities, st.masses)) / st.n_atoms)

    run(step_fn, s, 800, observers=[(4, record)])
    slope = np.polyfit(times, etot, 1)[0]
    assert abs(slope) < 1e-4  # eV/atom/ps
    assert ff.neighbors.n_builds < 801  # the skin saved rebuilds


def test_species_missing_from_model_is_refused_before_any_step(smooth_potential):
    atoms = _lps16()
    atoms.numbers[3] = 32
    with pytest.raises(ValueError, match="element Ge"):
        run_native(atoms, smooth_potential, MDSpec(steps=5))


def test_structure_momenta_are_used_exactly(smooth_potential):
    atoms = _lps16()
    v = np.random.default_rng(3).normal(scale=0.005, size=(len(atoms), 3))  # A/fs
    atoms.set_velocities(v / units.fs)
    frames = []
    run_native(atoms, smooth_potential, MDSpec(steps=0, temperature=900.0), traj=frames.append)
    np.testing.assert_allclose(frames[0].velocities, v, rtol=1e-12)


def test_batched_replicas_match_single_runs(smooth_potential):
    spec = MDSpec(ensemble="nve", dt_fs=0.5, steps=6, temperature=300.0, seed=4)
    structures = [_lps16(seed=k) for k in range(3)]
    batch = run_native_batch(structures, smooth_potential, spec)
    for k, (atoms, state) in enumerate(zip(structures, batch)):
        single = run_native(atoms, smooth_potential, dataclasses.replace(spec, seed=4 + k))
        np.testing.assert_array_equal(state.positions, single.positions)
