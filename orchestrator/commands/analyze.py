"""`nnmd analyze TRAJ --species Li --temperature T`: MSD, D, Nernst-Einstein sigma, RDF."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nnmd_kernels.analysis import (
    diffusion_coefficient,
    msd,
    nernst_einstein_conductivity,
    rdf,
    remove_drift,
    unwrap,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="ionic transport from an MD trajectory: MSD, D, Nernst-Einstein conductivity, RDF",
        description=(
            "Reads an extxyz (or any ASE-readable) trajectory, unwraps it, removes the "
            "centre-of-mass drift, and writes msd.png, rdf.png and results.json."
        ),
    )
    p.add_argument("traj", help="trajectory file (extxyz from `nnmd md`, or any ASE format)")
    p.add_argument("--species", required=True, help="mobile species, e.g. Li")
    p.add_argument("--temperature", type=float, required=True, help="temperature in K")
    p.add_argument("--charge", type=float, default=1.0, help="ion charge in e (default 1)")
    p.add_argument("--window", type=float, nargs=2, metavar=("T0", "T1"), default=None,
                   help="fit window in ps (default 0.1..0.5 of the longest lag)")
    p.add_argument("--frame-interval", type=float, default=None, metavar="FS",
                   help="time between frames in fs (default: from the frames' time_fs field)")
    p.add_argument("--skip", type=int, default=0, help="frames to drop at the start (equilibration)")
    p.add_argument("--rdf-rmax", type=float, default=6.0, help="RDF range in A (default 6)")
    p.add_argument("--haven-ratio", type=float, default=1.0, help="Haven ratio (default 1)")
    p.add_argument("--out", default="analysis", help="output folder (default ./analysis)")
    p.set_defaults(func=run)


def _frame_times_ps(frames, interval_fs):
    if interval_fs is not None:
        if interval_fs <= 0:
            raise ValueError(f"--frame-interval must be > 0 fs, got {interval_fs}")
        return np.arange(len(frames)) * interval_fs * 1e-3
    try:
        t_fs = np.array([f.info["time_fs"] for f in frames], dtype=float)
    except KeyError:
        raise ValueError(
            "the trajectory frames carry no time_fs field; pass --frame-interval FS"
        ) from None
    steps = np.diff(t_fs)
    if len(steps) and not np.allclose(steps, steps[0], rtol=1e-6):
        raise ValueError("frames are not evenly spaced in time; the MSD needs a fixed interval")
    return (t_fs - t_fs[0]) * 1e-3


def analyze(frames, species, temperature, charge=1.0, window=None, interval_fs=None,
            rdf_rmax=6.0, haven_ratio=1.0):
    """Plain function behind the command: frames (list of ase.Atoms) -> results dict + curves."""
    if len(frames) < 4:
        raise ValueError(f"the trajectory has {len(frames)} frames; the MSD needs at least 4")
    symbols = np.array(frames[0].get_chemical_symbols())
    mobile = symbols == species
    if not mobile.any():
        raise ValueError(
            f"--species {species} is not in the trajectory (it has {sorted(set(symbols))})"
        )
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0 K, got {temperature}")
    times = _frame_times_ps(frames, interval_fs)
    x = np.stack([f.positions for f in frames])  # (T, N, 3) A
    cells = np.stack([f.cell.array for f in frames])  # (T, 3, 3) A
    pbc = frames[0].pbc
    x_un = remove_drift(unwrap(x, cells, pbc), frames[0].get_masses())
    curve = msd(x_un[:, mobile])
    fit = diffusion_coefficient(times, curve, window)
    volume = float(np.mean([abs(np.linalg.det(c)) for c in cells]))
    sigma = nernst_einstein_conductivity(fit.diffusion_cm2_per_s, int(mobile.sum()), volume,
                                         temperature, charge, haven_ratio)
    every = max(1, len(frames) // 50)  # the RDF needs far fewer frames than the MSD
    r, g_ss = rdf(x[::every], cells[::every], pbc, rdf_rmax, 120, mobile, mobile)
    _, g_sa = rdf(x[::every], cells[::every], pbc, rdf_rmax, 120, mobile, None)
    results = {
        "species": species,
        "n_ions": int(mobile.sum()),
        "n_frames": len(frames),
        "duration_ps": float(times[-1]),
        "temperature_K": temperature,
        "charge_e": charge,
        "mean_volume_A3": volume,
        **fit.as_dict(),
        "sigma_S_per_cm": sigma,
        "haven_ratio": haven_ratio,
        "assumptions": "Nernst-Einstein: no ion-ion cross-correlations (Haven ratio as given), "
                       "tracer D of this species only",
        "rdf_first_peak_A": float(r[np.argmax(g_ss)]) if np.any(g_ss > 0) else None,
    }
    return results, {"t_ps": times, "msd": curve, "r": r, "g_ss": g_ss, "g_sa": g_sa}


def _plots(out, species, curves, fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(curves["t_ps"], curves["msd"], label=f"{species} MSD")
    t0, t1 = fit["window_ps"]
    tt = np.linspace(t0, t1, 20)
    ax.plot(tt, fit["slope_A2_per_ps"] * tt + fit["intercept_A2"], "--",
            label=f"fit: D = {fit['D_cm2_per_s']:.3g} cm$^2$/s")
    ax.set_xlabel("lag time (ps)")
    ax.set_ylabel("MSD (Å$^2$)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "msd.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(curves["r"], curves["g_ss"], label=f"{species}-{species}")
    ax.plot(curves["r"], curves["g_sa"], label=f"{species}-all")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rdf.png", dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ase.io import read

    path = Path(args.traj)
    if not path.exists():
        raise FileNotFoundError(f"trajectory {path} does not exist")
    frames = read(str(path), index=":")
    frames = frames[args.skip:]
    results, curves = analyze(frames, args.species, args.temperature, args.charge,
                              args.window, args.frame_interval, args.rdf_rmax, args.haven_ratio)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plots(out, args.species, curves, results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.species}: D = {results['D_cm2_per_s']:.4g} cm^2/s, "
          f"sigma = {results['sigma_S_per_cm']:.4g} S/cm  ({out}/results.json, msd.png, rdf.png)")
    return 0
