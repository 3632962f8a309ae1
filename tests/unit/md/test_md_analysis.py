"""MSD, diffusion, Nernst-Einstein and RDF against known answers."""

import numpy as np
import pytest

from nnmd_kernels.analysis import (
    diffusion_coefficient,
    msd,
    nernst_einstein_conductivity,
    rdf,
    remove_drift,
    unwrap,
)

TRICLINIC = np.array([[9.0, 0.0, 0.0], [2.5, 8.0, 0.0], [1.0, -1.5, 7.5]])


def _wrap(x, cell):
    s = x @ np.linalg.inv(cell)
    return (s - np.floor(s)) @ cell


def _random_walk(rng, n_frames, n_atoms, d_true, dt_ps):
    steps = rng.normal(scale=np.sqrt(2 * d_true * dt_ps), size=(n_frames - 1, n_atoms, 3))
    start = rng.uniform(0, 5, size=(1, n_atoms, 3))
    return np.concatenate([start, start + np.cumsum(steps, axis=0)])


def test_msd_fft_matches_direct_average_over_origins():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5, 3)).cumsum(axis=0)
    direct = [np.mean(np.sum((x[m:] - x[: len(x) - m]) ** 2, axis=2)) for m in range(40)]
    np.testing.assert_allclose(msd(x), direct, rtol=1e-10, atol=1e-10)


def test_unwrap_recovers_a_walk_wrapped_in_a_triclinic_cell():
    rng = np.random.default_rng(2)
    x = _random_walk(rng, 300, 20, d_true=0.5, dt_ps=0.1)
    wrapped = _wrap(x, TRICLINIC)
    assert np.abs(wrapped - x).max() > 10  # the walk really leaves the cell
    np.testing.assert_allclose(unwrap(wrapped, TRICLINIC) - wrapped[0] + x[0], x, atol=1e-9)


def test_random_walk_diffusion_coefficient_within_statistical_error():
    """Walkers with known D, wrapped into a triclinic box that also drifts as a whole."""
    rng = np.random.default_rng(3)
    d_true, dt_ps, n_frames, n_walkers = 0.02, 0.05, 800, 256  # D in A^2/ps
    walkers = _random_walk(rng, n_frames, n_walkers, d_true, dt_ps)
    heavy = np.broadcast_to(rng.uniform(0, 9, size=(1, 64, 3)), (n_frames, 64, 3))
    x = np.concatenate([walkers, heavy], axis=1)
    masses = np.r_[np.full(n_walkers, 6.94), np.full(64, 1e6)]  # immobile heavy frame
    drift = np.arange(n_frames)[:, None, None] * np.array([0.03, -0.01, 0.02])
    traj = _wrap(x + drift, TRICLINIC)

    x_un = remove_drift(unwrap(traj, TRICLINIC), masses)
    times = np.arange(n_frames) * dt_ps
    window = (2.0, 15.0)
    # independent groups of walkers give the statistical error of the estimate
    groups = np.array_split(np.arange(n_walkers), 8)
    ds = [diffusion_coefficient(times[:400], msd(x_un[:, g], 399), window).diffusion_a2_per_ps
          for g in groups]
    d_all = diffusion_coefficient(times[:400], msd(x_un[:, :n_walkers], 399), window)
    err = np.std(ds, ddof=1) / np.sqrt(len(ds))
    assert abs(d_all.diffusion_a2_per_ps - d_true) < 4 * err
    assert err < 0.1 * d_true  # the test has the power to see a 10 % error
    assert d_all.diffusion_cm2_per_s == pytest.approx(d_all.diffusion_a2_per_ps * 1e-4)
    # without drift removal the fitted D is badly wrong: the check can fail
    x_drift = unwrap(traj, TRICLINIC)[:, :n_walkers]
    d_bad = diffusion_coefficient(times[:400], msd(x_drift, 399), window).diffusion_a2_per_ps
    assert d_bad > 2 * d_true


def test_nernst_einstein_by_hand():
    # 56 Li in a 12.9^3 A^3 box at 600 K with D = 1e-5 cm^2/s, charge +1:
    # n = 56 / (2146.689e-24 cm^3) = 2.6087e22 cm^-3
    # n e^2 D = 2.6087e22 * 2.5670e-38 * 1e-5 = 6.6966e-21; kB T = 8.2839e-21 J
    # sigma = 6.6966e-21 / 8.2839e-21 = 0.8084 S/cm
    volume = 12.9**3
    n = 56 / (volume * 1e-24)
    by_hand = n * (1.602176634e-19) ** 2 * 1e-5 / (1.380649e-23 * 600.0)
    assert by_hand == pytest.approx(0.8084, rel=1e-3)  # S/cm
    sigma = nernst_einstein_conductivity(1e-5, 56, volume, 600.0, charge=1.0)
    assert sigma == pytest.approx(by_hand, rel=1e-12)
    # q^2 scaling and the Haven ratio
    assert nernst_einstein_conductivity(1e-5, 56, volume, 600.0, charge=2.0) == pytest.approx(
        4 * by_hand)
    assert nernst_einstein_conductivity(
        1e-5, 56, volume, 600.0, haven_ratio=0.5) == pytest.approx(2 * by_hand)
    with pytest.raises(ValueError, match="temperature"):
        nernst_einstein_conductivity(1e-5, 56, volume, 0.0)


def test_rdf_of_ideal_gas_is_one():
    rng = np.random.default_rng(4)
    n_frames, n_atoms = 20, 150
    x = rng.uniform(size=(n_frames, n_atoms, 3)) @ TRICLINIC
    r, g = rdf(x, TRICLINIC, r_max=8.0, n_bins=16)  # r_max beyond half the cell: images count
    sel = r > 2.0
    assert np.abs(g[sel] - 1.0).max() < 0.1
    assert abs(g[sel].mean() - 1.0) < 0.02


def test_rdf_fcc_first_peak_and_coordination():
    from ase.build import bulk

    a = 3.6
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(3)
    r, g = rdf(atoms.positions, atoms.cell.array, r_max=4.0, n_bins=200)
    assert r[np.argmax(g)] == pytest.approx(a / np.sqrt(2), abs=0.02)
    # 12 nearest neighbours: integrate rho g 4 pi r^2 dr up to between shells
    rho = (len(atoms) - 1) / atoms.get_volume()
    edges = np.linspace(0, 4.0, 201)
    shells = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    upto = r < 0.5 * (a / np.sqrt(2) + a)
    assert np.sum(rho * g[upto] * shells[upto]) == pytest.approx(12, abs=1e-9)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="window"):
        diffusion_coefficient(np.arange(10.0), np.arange(10.0), window=(5, 5.5))
    with pytest.raises(ValueError, match="selection"):
        rdf(np.zeros((4, 3)), np.eye(3) * 5, select_a=np.zeros(4, bool))


def test_analyze_command_writes_plots_and_json(tmp_path):
    import argparse
    import json

    from ase import Atoms
    from ase.io import write

    from orchestrator.commands import analyze

    rng = np.random.default_rng(5)
    d_true, dt_ps = 0.05, 0.1
    li = _random_walk(rng, 300, 64, d_true, dt_ps)
    s_fixed = rng.uniform(0, 9, size=(32, 3))
    frames = []
    for t, xt in enumerate(li):
        a = Atoms(["Li"] * 64 + ["S"] * 32, positions=np.r_[xt, s_fixed], cell=TRICLINIC,
                  pbc=True)
        a.wrap()
        a.info["time_fs"] = t * dt_ps * 1000
        frames.append(a)
    traj = tmp_path / "md.extxyz"
    write(traj, frames)

    parser = argparse.ArgumentParser()
    analyze.register(parser.add_subparsers())
    out = tmp_path / "ana"
    args = parser.parse_args(["analyze", str(traj), "--species", "Li", "--temperature", "600",
                              "--window", "1", "10", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    # the same numbers as the library functions give, and D near the truth (one group of 64)
    assert res["D_A2_per_ps"] == pytest.approx(d_true, rel=0.25)
    volume = abs(np.linalg.det(TRICLINIC))
    assert res["sigma_S_per_cm"] == pytest.approx(
        nernst_einstein_conductivity(res["D_cm2_per_s"], 64, volume, 600.0), rel=1e-9)
    assert (out / "msd.png").stat().st_size > 1000 and (out / "rdf.png").stat().st_size > 1000

    args = parser.parse_args(["analyze", str(traj), "--species", "Na", "--temperature", "600"])
    with pytest.raises(ValueError, match="--species Na"):
        args.func(args)
