"""`nnmd analyze TRAJ --species Li --temperature T`: MSD, D (with a block-averaging error and
a diffusive / not diffusive verdict), Nernst-Einstein sigma (charges explicit), RDF."""

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
from nnmd_kernels.analysis.transport import block_diffusion, pooled_diffusion


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="ionic transport from an MD trajectory: MSD, D, Nernst-Einstein conductivity, RDF",
        description=(
            "Reads an extxyz (or any ASE-readable) trajectory, unwraps it, removes the "
            "centre-of-mass drift, and writes msd.png, rdf.png and results.json. D comes "
            "with a block-averaging standard error and a diffusive / not diffusive verdict. "
            "The Nernst-Einstein conductivity needs explicit charges (--charge Li=1)."
        ),
    )
    p.add_argument("traj", nargs="+",
                   help="trajectory file (extxyz from `nnmd md`, or any ASE format); several "
                        "files are independent runs of one cell at one temperature (other "
                        "velocity seeds): D is their mean, its error the larger of their "
                        "scatter and their block errors")
    p.add_argument("--species", required=True, help="mobile species, e.g. Li")
    p.add_argument("--temperature", type=float, required=True, help="temperature in K")
    p.add_argument("--charge", action="append", default=[], metavar="SPECIES=Q",
                   help="charge of a species in e, e.g. --charge Li=1 --charge O=-2 "
                        "(repeatable); needed for the conductivity, never assumed")
    p.add_argument("--conductivity", action="store_true",
                   help="compute the Nernst-Einstein conductivity (implied by --charge and "
                        "--haven-ratio; needs --charge for --species)")
    p.add_argument("--window", type=float, nargs=2, metavar=("T0", "T1"), default=None,
                   help="fit window (lag times) in ps; must fit in one block (default "
                        "0.1..0.5 of the block duration)")
    p.add_argument("--blocks", type=int, default=5,
                   help="contiguous blocks for D's error bar (default 5)")
    p.add_argument("--frame-interval", type=float, default=None, metavar="FS",
                   help="time between frames in fs (default: from the frames' time_fs field)")
    p.add_argument("--skip", type=int, default=0, help="frames to drop at the start (equilibration)")
    p.add_argument("--rdf-rmax", type=float, default=6.0, help="RDF range in A (default 6)")
    p.add_argument("--haven-ratio", type=float, default=None,
                   help="Haven ratio for the conductivity (default 1)")
    p.add_argument("-o", "--out", default="analysis", help="output folder (default ./analysis)")
    p.add_argument("--force", action="store_true",
                   help="replace results.json, msd.png and rdf.png already in --out")
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


def parse_charges(items) -> dict:
    """['Li=1', 'O=-2'] -> {'Li': 1.0, 'O': -2.0}; ValueError naming --charge otherwise."""
    charges = {}
    for item in items or ():
        sym, sep, value = str(item).partition("=")
        sym = sym.strip()
        try:
            if not sep or not sym:
                raise ValueError
            q = float(value)
        except ValueError:
            raise ValueError(f"--charge {item!r}: write SPECIES=CHARGE in e, e.g. --charge Li=1 "
                             "--charge O=-2") from None
        if not np.isfinite(q) or q == 0:
            raise ValueError(f"--charge {item!r}: the charge must be a non-zero number (e)")
        if sym in charges and charges[sym] != q:
            raise ValueError(f"--charge gives {sym} twice ({charges[sym]:g} and {q:g})")
        charges[sym] = q
    return charges


def analyze(frames, species, temperature, charges=None, window=None, interval_fs=None,
            rdf_rmax=6.0, haven_ratio=None, n_blocks=5, conductivity=None):
    """Plain function behind the command: frames (list of ase.Atoms) -> results dict + curves.

    frames may also be a list of runs (each a list of ase.Atoms): independent runs of one
    cell at one temperature (other velocity seeds). Each is block-averaged over the first
    one's lag window and D is pooled (pooled_diffusion: their mean, with the larger of the
    runs' scatter and their block errors); the MSD curve is their mean.

    charges: {species: charge in e}. conductivity: compute the Nernst-Einstein
    conductivity (default: when charges or haven_ratio are given); it needs the charge of
    `species` (ValueError naming --charge otherwise: no charge is ever assumed). Every
    charged species gets its own D; sigma_total_S_per_cm sums their conductivities.
    """
    if isinstance(charges, (int, float)):
        raise ValueError(f"charges must be {{species: charge}}, e.g. {{{species!r}: {charges}}}")
    charges = dict(charges or {})
    if conductivity is None:
        conductivity = bool(charges) or haven_ratio is not None
    runs = [list(r) for r in frames] if frames and not hasattr(frames[0], "positions") else [frames]
    for k, run in enumerate(runs):
        if len(run) < 4:
            which = f"trajectory {k + 1}" if len(runs) > 1 else "the trajectory"
            raise ValueError(f"{which} has {len(run)} frames; the MSD needs at least 4")
    frames = runs[0]
    symbols = np.array(frames[0].get_chemical_symbols())
    present = sorted(set(symbols))
    mobile = symbols == species
    if not mobile.any():
        raise ValueError(
            f"--species {species} is not in the trajectory (it has {present})"
        )
    for sym in charges:
        if sym not in present:
            raise ValueError(f"--charge {sym}=...: {sym} is not in the trajectory (it has "
                             f"{present})")
    if conductivity and species not in charges:
        raise ValueError(
            f"the Nernst-Einstein conductivity needs the charge of {species}: pass --charge "
            f"{species}=Q (in e; repeatable, e.g. --charge Li=1 --charge O=-2); no charge is "
            "assumed")
    if temperature <= 0:
        raise ValueError(f"--temperature must be > 0 K, got {temperature}")
    haven = 1.0 if haven_ratio is None else float(haven_ratio)
    for k, run in enumerate(runs[1:], 1):
        if list(run[0].get_chemical_symbols()) != list(symbols):
            raise ValueError(f"trajectory {k + 1} has other atoms than the first (same system "
                             "needed: independent runs of one cell at one temperature)")
    pbc = frames[0].pbc
    masses = frames[0].get_masses()
    per_run, window_used = [], window
    for run in runs:
        times = _frame_times_ps(run, interval_fs)
        x_run = np.stack([f.positions for f in run])  # (T, N, 3) A
        cells_run = np.stack([f.cell.array for f in run])  # (T, 3, 3) A
        x_un_run = remove_drift(unwrap(x_run, cells_run, pbc), masses)
        b = block_diffusion(times, x_un_run[:, mobile], n_blocks, window_used)
        window_used = b.window_ps  # every run fitted over the first one's lag window
        per_run.append((times, x_run, cells_run, x_un_run, b))
    steps = [float(r[0][1] - r[0][0]) for r in per_run]
    if not np.allclose(steps, steps[0], rtol=1e-6):
        raise ValueError("the trajectories have different frame intervals "
                         f"({', '.join(f'{1000 * v:g}' for v in steps)} fs): independent runs "
                         "must be written at the same interval")
    blocks = pooled_diffusion([r[4] for r in per_run])
    n_t = min(len(r[0]) for r in per_run)
    times = min((r[0] for r in per_run), key=len)
    curve = np.mean([msd(r[3][:n_t, mobile]) for r in per_run], axis=0)
    whole = diffusion_coefficient(times, curve, blocks.window_ps)  # the plotted fit
    x = np.concatenate([r[1] for r in per_run])
    cells = np.concatenate([r[2] for r in per_run])
    volume = float(np.mean([abs(np.linalg.det(c)) for c in cells]))
    results = {
        "species": species,
        "n_ions": int(mobile.sum()),
        "n_frames": int(sum(len(r) for r in runs)),
        "n_runs": len(runs),
        "duration_ps": float(times[-1]),
        "total_duration_ps": float(sum(r[0][-1] for r in per_run)),
        "temperature_K": temperature,
        "charge_e": charges.get(species),
        "charges_e": charges,
        "mean_volume_A3": volume,
        **blocks.as_dict(),
        "slope_A2_per_ps": whole.slope_a2_per_ps,
        "intercept_A2": whole.intercept_a2,
        "D_whole_run_A2_per_ps": whole.diffusion_a2_per_ps,
        "D_whole_run_cm2_per_s": whole.diffusion_cm2_per_s,
        "D_fit_stderr_cm2_per_s": whole.stderr_cm2_per_s,
        "dim": whole.dim,
        "sigma_S_per_cm": None,
        "sigma_err_S_per_cm": None,
        "haven_ratio": haven if conductivity else None,
    }
    if conductivity:
        per_species = {}
        for sym, q in charges.items():
            sel = symbols == sym
            b = blocks if sym == species else pooled_diffusion(
                [block_diffusion(r[0], r[3][:, sel], n_blocks, blocks.window_ps) for r in per_run])
            n = int(sel.sum())
            sig = nernst_einstein_conductivity(b.diffusion_cm2_per_s, n, volume, temperature,
                                               q, haven)
            sig_err = nernst_einstein_conductivity(b.error_cm2_per_s, n, volume, temperature,
                                                   q, haven)
            per_species[sym] = {"charge_e": q, "n_ions": n, "D_cm2_per_s": b.diffusion_cm2_per_s,
                                "D_err_cm2_per_s": b.error_cm2_per_s, "diffusive": b.diffusive,
                                "sigma_S_per_cm": sig, "sigma_err_S_per_cm": sig_err}
        results["sigma_S_per_cm"] = per_species[species]["sigma_S_per_cm"]
        results["sigma_err_S_per_cm"] = per_species[species]["sigma_err_S_per_cm"]
        results["conductivity_by_species"] = per_species
        results["sigma_total_S_per_cm"] = float(sum(v["sigma_S_per_cm"]
                                                    for v in per_species.values()))
        results["sigma_total_err_S_per_cm"] = float(np.sqrt(sum(
            v["sigma_err_S_per_cm"] ** 2 for v in per_species.values())))
        results["assumptions"] = (
            "Nernst-Einstein: no ion-ion cross-correlations (Haven ratio as given), tracer D "
            "of each charged species; charges as given with --charge")
    every = max(1, len(frames) // 50)  # the RDF needs far fewer frames than the MSD
    r, g_ss = rdf(x[::every], cells[::every], pbc, rdf_rmax, 120, mobile, mobile)
    _, g_sa = rdf(x[::every], cells[::every], pbc, rdf_rmax, 120, mobile, None)
    results["rdf_first_peak_A"] = float(r[np.argmax(g_ss)]) if np.any(g_ss > 0) else None
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
            label=f"fit (whole run); blocks: D = {fit['D_cm2_per_s']:.3g} $\\pm$ "
                  f"{fit['D_err_cm2_per_s']:.2g} cm$^2$/s")
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

    from orchestrator.commands._output import check_out

    charges = parse_charges(args.charge)
    out = check_out(args.out, args.force, "--out", directory=True)
    for name in ("results.json", "msd.png", "rdf.png") if out.is_dir() else ():
        check_out(out / name, args.force, "--out")
    runs = []
    for name in args.traj:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"trajectory {path} does not exist")
        if path.is_dir():
            raise ValueError(f"trajectory {path}: is a directory; give a trajectory file")
        try:
            frames = read(str(path), index=":")
        except Exception as exc:  # ASE raises many kinds for a malformed file
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"trajectory {path}: cannot read it ({why}); give an extxyz file "
                             "from nnmd md, or any trajectory ASE reads") from None
        runs.append(frames[args.skip:])
    frames = runs if len(runs) > 1 else runs[0]
    conductivity = args.conductivity or bool(charges) or args.haven_ratio is not None
    results, curves = analyze(frames, args.species, args.temperature, charges, args.window,
                              args.frame_interval, args.rdf_rmax, args.haven_ratio,
                              args.blocks, conductivity)
    out.mkdir(parents=True, exist_ok=True)
    _plots(out, args.species, curves, results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    line = (f"{args.species}: D = {results['D_cm2_per_s']:.4g} +- "
            f"{results['D_err_cm2_per_s']:.2g} cm^2/s ({results['diffusive_note']})")
    if len(runs) > 1:
        line += f" from {len(runs)} runs"
    if results["sigma_S_per_cm"] is not None:
        line += (f", sigma = {results['sigma_S_per_cm']:.4g} +- "
                 f"{results['sigma_err_S_per_cm']:.2g} S/cm")
        if len(results["conductivity_by_species"]) > 1:
            line += f" (all charged species: {results['sigma_total_S_per_cm']:.4g} S/cm)"
    print(f"{line}  ({out}/results.json, msd.png, rdf.png)")
    return 0
