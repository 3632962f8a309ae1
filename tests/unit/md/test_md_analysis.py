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


def _li_s_frames(li, s_fixed, dt_ps):
    from ase import Atoms

    frames = []
    n_li, n_s = li.shape[1], s_fixed.shape[1]
    for t, xt in enumerate(li):
        a = Atoms(["Li"] * n_li + ["S"] * n_s, positions=np.r_[xt, s_fixed[t]], cell=TRICLINIC,
                  pbc=True)
        a.wrap()
        a.info["time_fs"] = t * dt_ps * 1000
        frames.append(a)
    return frames


def _parser():
    import argparse

    from orchestrator.commands import analyze

    parser = argparse.ArgumentParser()
    analyze.register(parser.add_subparsers())
    return parser


def test_analyze_command_writes_plots_and_json(tmp_path, capsys):
    import json

    from ase.io import write

    rng = np.random.default_rng(5)
    d_true, dt_ps = 0.05, 0.1
    li = _random_walk(rng, 300, 64, d_true, dt_ps)
    s_fixed = np.broadcast_to(rng.uniform(0, 9, size=(32, 3)), (300, 32, 3))
    traj = tmp_path / "md.extxyz"
    write(traj, _li_s_frames(li, s_fixed, dt_ps))

    parser = _parser()
    out = tmp_path / "ana"
    args = parser.parse_args(["analyze", str(traj), "--species", "Li", "--temperature", "600",
                              "--window", "0.5", "2.5", "--charge", "Li=1", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    # D is the mean over 5 blocks, with their standard error; near the truth
    assert res["n_blocks"] == 5 and len(res["D_blocks_A2_per_ps"]) == 5
    assert res["D_A2_per_ps"] == pytest.approx(np.mean(res["D_blocks_A2_per_ps"]), rel=1e-12)
    assert res["D_err_A2_per_ps"] == pytest.approx(
        np.std(res["D_blocks_A2_per_ps"], ddof=1) / np.sqrt(5), rel=1e-12)
    assert abs(res["D_A2_per_ps"] - d_true) < 3 * res["D_err_A2_per_ps"]
    assert res["diffusive"] is True and res["charge_e"] == 1.0
    volume = abs(np.linalg.det(TRICLINIC))
    assert res["sigma_S_per_cm"] == pytest.approx(
        nernst_einstein_conductivity(res["D_cm2_per_s"], 64, volume, 600.0), rel=1e-9)
    assert res["sigma_err_S_per_cm"] == pytest.approx(
        res["sigma_S_per_cm"] * res["D_err_A2_per_ps"] / res["D_A2_per_ps"], rel=1e-9)
    assert (out / "msd.png").stat().st_size > 1000 and (out / "rdf.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "Li: D = " in printed and " +- " in printed and "(diffusive)" in printed

    args = parser.parse_args(["analyze", str(traj), "--species", "Na", "--temperature", "600"])
    with pytest.raises(ValueError, match="--species Na"):
        args.func(args)
    # a window longer than a block names the fix
    args = parser.parse_args(["analyze", str(traj), "--species", "Li", "--temperature", "600",
                              "--window", "1", "10", "--out", str(out), "--force"])
    with pytest.raises(ValueError, match="longer than a block.*--blocks"):
        args.func(args)
    # an earlier analysis in --out is not replaced without --force
    args = parser.parse_args(["analyze", str(traj), "--species", "Li", "--temperature", "600",
                              "--out", str(out)])
    with pytest.raises(ValueError, match="--force"):
        args.func(args)


def test_random_walk_d_within_three_errors(tmp_path):
    """Positions as cumulative Gaussian steps of sigma per dimension: D = sigma^2 / (2 dt)."""
    import json

    from ase.io import write

    rng = np.random.default_rng(11)
    dt_ps, sigma, n_frames = 0.05, 0.04, 1500
    d_true = sigma**2 / (2 * dt_ps)  # A^2/ps, 0.016
    steps = rng.normal(scale=sigma, size=(n_frames - 1, 48, 3))
    start = rng.uniform(0, 8, size=(1, 48, 3))
    li = np.concatenate([start, start + np.cumsum(steps, axis=0)])
    s_fixed = np.broadcast_to(rng.uniform(0, 9, size=(16, 3)), (n_frames, 16, 3))
    traj = tmp_path / "liquid.extxyz"
    write(traj, _li_s_frames(li, s_fixed, dt_ps))
    out = tmp_path / "ana"
    args = _parser().parse_args(["analyze", str(traj), "--species", "Li", "--temperature",
                                 "600", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert 0 < res["D_err_A2_per_ps"] < 0.2 * d_true
    assert abs(res["D_A2_per_ps"] - d_true) < 3 * res["D_err_A2_per_ps"]
    assert res["D_cm2_per_s"] == pytest.approx(res["D_A2_per_ps"] * 1e-4)
    assert res["diffusive"] is True and res["diffusive_note"] == "diffusive"
    assert res["sigma_S_per_cm"] is None  # no conductivity asked for


def test_vibrating_crystal_is_not_diffusive(tmp_path, capsys):
    """Atoms vibrating about lattice sites (correlated AR(1) displacements, 0.1 A)."""
    import json

    from ase.build import bulk
    from ase.io import write

    rng = np.random.default_rng(12)
    crystal = bulk("Li", "bcc", a=3.5, cubic=True).repeat(3)
    crystal.numbers[::2] = 8
    n, n_frames, phi = len(crystal), 1000, 0.9
    u = np.zeros((n_frames, n, 3))
    for t in range(1, n_frames):
        u[t] = phi * u[t - 1] + rng.normal(scale=0.1 * np.sqrt(1 - phi**2), size=(n, 3))
    frames = []
    for t in range(n_frames):
        a = crystal.copy()
        a.positions += u[t]
        a.wrap()
        a.info["time_fs"] = 20.0 * t
        frames.append(a)
    write(tmp_path / "crystal.extxyz", frames)
    out = tmp_path / "ana"
    args = _parser().parse_args(["analyze", str(tmp_path / "crystal.extxyz"), "--species", "Li",
                                 "--temperature", "300", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["diffusive"] is False
    assert res["diffusive_note"].startswith("not diffusive: ")
    assert "not diffusive" in capsys.readouterr().out


def test_conductivity_needs_explicit_charges_exit_2(tmp_path, capsys):
    from ase.io import write

    from orchestrator import cli

    rng = np.random.default_rng(13)
    li = _random_walk(rng, 60, 8, 0.05, 0.1)
    s_fixed = np.broadcast_to(rng.uniform(0, 9, size=(4, 3)), (60, 4, 3))
    traj = tmp_path / "md.extxyz"
    write(traj, _li_s_frames(li, s_fixed, 0.1))
    base = ["analyze", str(traj), "--species", "Li", "--temperature", "600", "--out",
            str(tmp_path / "ana")]
    for extra in (["--conductivity"], ["--haven-ratio", "0.5"], ["--charge", "S=-2"]):
        assert cli.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("nnmd analyze: error: ")
        assert "--charge Li=" in err and "no charge is assumed" in err
    assert not (tmp_path / "ana").exists()
    for bad, says in (("Li", "SPECIES=CHARGE"), ("Li=one", "SPECIES=CHARGE"),
                      ("Li=0", "non-zero"), ("Na=1", "Na is not in the trajectory")):
        assert cli.main([*base, "--charge", bad]) == 2
        assert says in capsys.readouterr().err
    # both charged species: each its own D and sigma, and their sum
    assert cli.main([*base, "--charge", "Li=1", "--charge", "S=-2", "--window", "0.2",
                     "0.8"]) == 0
    import json

    res = json.loads((tmp_path / "ana" / "results.json").read_text())
    by = res["conductivity_by_species"]
    assert by.keys() == {"Li", "S"} and by["S"]["charge_e"] == -2.0
    assert res["sigma_total_S_per_cm"] == pytest.approx(
        by["Li"]["sigma_S_per_cm"] + by["S"]["sigma_S_per_cm"])
    assert res["charges_e"] == {"Li": 1.0, "S": -2.0}


def _emt_md(tmp_path, temperature, steps=1500, every=10, seed=3):
    """Real MD of 108-atom Cu with ASE's EMT (Langevin, 2 fs): frames to extxyz."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("Cu", "fcc", a=3.61 * (1.06 if temperature > 2000 else 1.0),
                 cubic=True).repeat(3)
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,
                                 rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02,
                   rng=np.random.default_rng(seed))
    frames = []

    def keep():
        a = atoms.copy()
        a.calc = None
        a.info["time_fs"] = 2.0 * dyn.nsteps
        frames.append(a)

    dyn.attach(keep, interval=every)
    dyn.run(steps)
    path = tmp_path / f"cu{temperature}.extxyz"
    write(path, frames[len(frames) // 5:])  # equilibration dropped
    return path


@pytest.mark.parametrize("temperature, diffusive", [(300, False), (3500, True)])
def test_real_md_crystal_and_liquid(tmp_path, temperature, diffusive):
    """EMT copper as a crystal (300 K: not diffusive) and as a liquid (3500 K, 6% expanded:
    D with an error bar, well above it)."""
    import json

    path = _emt_md(tmp_path, temperature)
    out = tmp_path / "ana"
    args = _parser().parse_args(["analyze", str(path), "--species", "Cu", "--temperature",
                                 str(temperature), "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["diffusive"] is diffusive, res["diffusive_note"]
    if diffusive:
        d, err = res["D_cm2_per_s"], res["D_err_cm2_per_s"]
        assert err > 0 and d > 3 * err
        assert 1e-5 < d < 1e-3  # liquid metals: ~1e-4 cm^2/s


def test_pooled_runs_take_the_larger_of_scatter_and_block_errors():
    """Independent runs: D is their mean; its error the runs' scatter when their D differ
    more than their block errors say (a persistent configuration), else the block errors."""
    from nnmd_kernels.analysis.transport import block_diffusion, pooled_diffusion

    rng = np.random.default_rng(21)
    dt_ps = 0.1
    t = np.arange(400) * dt_ps
    same = [block_diffusion(t, _random_walk(rng, 400, 40, 0.05, dt_ps), 5) for _ in range(4)]
    p = pooled_diffusion(same)
    assert p.diffusion_a2_per_ps == pytest.approx(np.mean([r.diffusion_a2_per_ps for r in same]))
    assert p.error_a2_per_ps == pytest.approx(max(p.between_error_a2_per_ps,
                                                  p.within_error_a2_per_ps))
    assert p.within_error_a2_per_ps == pytest.approx(
        np.sqrt(sum(r.error_a2_per_ps ** 2 for r in same)) / 4)
    assert abs(p.diffusion_a2_per_ps - 0.05) < 3 * p.error_a2_per_ps
    assert p.duration_ps == pytest.approx(4 * t[-1]) and p.diffusive
    d = p.as_dict()
    assert d["n_runs"] == 4 and len(d["D_runs_A2_per_ps"]) == 4 and len(d["D_blocks_A2_per_ps"]) == 20
    # runs of a slow and a fast configuration: each run's blocks agree, the runs do not
    split = [block_diffusion(t, _random_walk(rng, 400, 40, dd, dt_ps), 5, window=same[0].window_ps)
             for dd in (0.02, 0.08, 0.02, 0.08)]
    q = pooled_diffusion(split)
    assert q.between_error_a2_per_ps > 3 * q.within_error_a2_per_ps
    assert q.error_a2_per_ps == pytest.approx(np.std([r.diffusion_a2_per_ps for r in split], ddof=1) / 2)
    # one run is itself; runs fitted over other windows are refused
    assert pooled_diffusion(same[:1]) is same[0]
    other = block_diffusion(t, _random_walk(rng, 400, 40, 0.05, dt_ps), 5, window=(0.5, 2.0))
    with pytest.raises(ValueError, match="same --window"):
        pooled_diffusion([same[0], other])
    # the 5 A^2 floor is over one run, not the runs' total
    slow = [block_diffusion(t, _random_walk(rng, 400, 40, 0.01, dt_ps), 5) for _ in range(4)]
    assert not pooled_diffusion(slow).diffusive and "over a 39.9 ps run" in pooled_diffusion(slow).note


def test_analyze_command_pools_independent_runs(tmp_path, capsys):
    import json

    from ase.io import write

    rng = np.random.default_rng(8)
    dt_ps, paths = 0.1, []
    s_fixed = np.broadcast_to(rng.uniform(0, 9, size=(16, 3)), (300, 16, 3))
    for k in range(3):
        paths.append(tmp_path / f"run{k}.extxyz")
        write(paths[-1], _li_s_frames(_random_walk(rng, 300, 48, 0.05, dt_ps), s_fixed, dt_ps))
    out = tmp_path / "ana"
    args = _parser().parse_args(["analyze", *map(str, paths), "--species", "Li", "--temperature",
                                 "600", "--charge", "Li=1", "--out", str(out)])
    assert args.func(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_runs"] == 3 and res["n_frames"] == 900
    assert res["D_A2_per_ps"] == pytest.approx(np.mean(res["D_runs_A2_per_ps"]))
    assert res["total_duration_ps"] == pytest.approx(3 * 29.9)
    assert abs(res["D_A2_per_ps"] - 0.05) < 3 * res["D_err_A2_per_ps"]
    # each run alone gives its own entry of D_runs
    one = tmp_path / "one"
    args = _parser().parse_args(["analyze", str(paths[1]), "--species", "Li", "--temperature",
                                 "600", "--out", str(one)])
    assert args.func(args) == 0
    assert json.loads((one / "results.json").read_text())["D_A2_per_ps"] == pytest.approx(
        res["D_runs_A2_per_ps"][1])
    assert "from 3 runs" in capsys.readouterr().out
    # a run of another cell is refused, naming it
    write(tmp_path / "other.extxyz", _li_s_frames(_random_walk(rng, 300, 40, 0.05, dt_ps), s_fixed, dt_ps))
    args = _parser().parse_args(["analyze", str(paths[0]), str(tmp_path / "other.extxyz"), "--species",
                                 "Li", "--temperature", "600", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="trajectory 2 has other atoms"):
        args.func(args)
    # runs written at other intervals are refused, naming both
    write(tmp_path / "slow.extxyz", _li_s_frames(_random_walk(rng, 300, 48, 0.05, 0.2), s_fixed, 0.2))
    args = _parser().parse_args(["analyze", str(paths[0]), str(tmp_path / "slow.extxyz"), "--species",
                                 "Li", "--temperature", "600", "--out", str(tmp_path / "y")])
    with pytest.raises(ValueError, match=r"different frame intervals \(100, 200 fs\)"):
        args.func(args)
