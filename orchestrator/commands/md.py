"""`nnmd md`: production MD with a trained potential, on the native engine or LAMMPS."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnmd_kernels.md.units import compressibility_per_gpa, pressure_gpa
from services.md.spec import ENSEMBLES, THERMOSTATS, MDSpec


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "md",
        help="run MD with a potential (native engine or LAMMPS with MPI ranks)",
        description=(
            "Runs NVE/NVT/NPT MD. Velocities come from the structure's momenta when it has "
            "them (extxyz), else from Maxwell-Boltzmann at --temperature. Writes an extxyz "
            "trajectory (read it with `nnmd analyze`) and a thermo log. Guards stop a run "
            "that leaves the model's domain (non-finite energy or forces, temperature above "
            "10 x the target, atoms closer than the training data allow, --max-deviation): "
            "exit code 3, the trajectory ending with the last good frame. Bad input: exit 2."
        ),
    )
    p.add_argument("--model", required=True, help="potential file (.nnmd or ffield.sannp)")
    p.add_argument("--structure", required=True, help="structure file (ASE-readable; last frame)")
    p.add_argument("--engine", choices=("native", "lammps"), default="native")
    p.add_argument("--np", type=int, default=1, help="MPI ranks for --engine lammps (default 1)")
    p.add_argument("--ranks-per-gpu", type=int, default=2,
                   help="LAMMPS ranks sharing one GPU when GPUs are visible (default 2)")
    p.add_argument("--ensemble", choices=ENSEMBLES, default="nve")
    p.add_argument("--temperature", type=float, default=None, help="K (thermostat, velocities)")
    p.add_argument("--pressure", default=None, metavar="GPA",
                   help="npt target pressure in GPa: --pressure 1 is 1 GPa (= 10 kbar); "
                        "'1.5GPa' is accepted, a value in another unit is refused")
    p.add_argument("--dt", type=float, default=1.0, help="time step, fs (default 1)")
    p.add_argument("--steps", type=int, required=True, help="number of MD steps")
    p.add_argument("--thermostat", choices=THERMOSTATS, default="bussi")
    p.add_argument("--tau-t", type=float, default=100.0, help="thermostat time, fs (default 100)")
    p.add_argument("--tau-p", type=float, default=1000.0, help="barostat time, fs (default 1000)")
    p.add_argument("--compressibility", type=float, default=0.45,
                   help="barostat compressibility, 1/GPa (native SCR barostat; sets its "
                        "relaxation time only; default 0.45 = water)")
    p.add_argument("--anisotropic", action="store_true", help="npt: box axes independent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, A (default 1)")
    p.add_argument("-o", "--traj", "--out", dest="traj", default="md.extxyz",
                   help="trajectory output (extxyz; default ./md.extxyz); with it the thermo "
                        "log TRAJ.thermo")
    p.add_argument("--force", action="store_true",
                   help="replace the trajectory, thermo log and --final file if they exist")
    p.add_argument("--traj-interval", type=int, default=10, help="steps between frames")
    p.add_argument("--store", default=None,
                   help="also append the frames to this Zarr store (path or fsspec URL)")
    p.add_argument("--traj-name", default=None,
                   help="trajectory name in --store (default: the --traj file's stem)")
    p.add_argument("--thermo", default=None, help="thermo log (default: TRAJ with .thermo)")
    p.add_argument("--thermo-interval", type=int, default=10, help="steps between thermo lines")
    p.add_argument("--final", default=None, help="write the last frame (with momenta) here")
    p.add_argument("--lammps-input", default=None,
                   help="file of extra LAMMPS commands run after nnmd's setup (computes, "
                        "dumps, fixes; `unfix nnmd_integrate` to replace the integrator)")
    p.add_argument("--max-deviation", type=float, default=None, metavar="EV_PER_A",
                   help="stop (exit 3) when the ensemble's model deviation (max over atoms of "
                        "the force standard deviation across members, eV/A; computed at "
                        "every thermo line and frame) exceeds this; needs an ensemble model "
                        "(`nnmd train --models N`)")
    p.add_argument("--guard-interval", type=int, default=10, metavar="STEPS",
                   help="steps between checks of the interatomic-distance floor (also "
                        "checked at every thermo line and frame; default 10)")
    p.add_argument("--no-guards", action="store_true",
                   help="run without the guards (and without the model-deviation column)")
    p.add_argument("--quiet", action="store_true",
                   help="do not echo thermo lines (with their ETA column)")
    p.set_defaults(func=run)


def spec_from_args(args) -> MDSpec:
    commands = ()
    if args.lammps_input:
        if args.engine != "lammps":
            raise ValueError("--lammps-input needs --engine lammps")
        path = Path(args.lammps_input)
        if not path.exists():
            raise FileNotFoundError(f"--lammps-input {path} does not exist")
        commands = tuple(line.strip() for line in path.read_text().splitlines()
                         if line.strip() and not line.strip().startswith("#"))
    # GPa; a value in bar (or any other unit) is a ValueError naming the conversion
    pressure = None if args.pressure is None else pressure_gpa(args.pressure, "--pressure")
    compressibility = compressibility_per_gpa(args.compressibility, "--compressibility")
    return MDSpec(
        ensemble=args.ensemble, dt_fs=args.dt, steps=args.steps, temperature=args.temperature,
        pressure_gpa=pressure, thermostat=args.thermostat, tau_t_fs=args.tau_t,
        tau_p_fs=args.tau_p, compressibility_per_gpa=compressibility,
        anisotropic=args.anisotropic, seed=args.seed, traj_interval=args.traj_interval,
        thermo_interval=args.thermo_interval, skin_a=args.skin, lammps_commands=commands,
    )


def _conditions(spec: MDSpec) -> str:
    """' (npt at 600 K, 1 GPa)': the ensemble and its targets, pressures in GPa."""
    if spec.ensemble == "nve":
        return " (nve)"
    if spec.ensemble == "nvt":
        return f" (nvt at {spec.temperature:g} K)"
    return f" (npt at {spec.temperature:g} K, {spec.pressure_gpa:g} GPa)"


def run(args: argparse.Namespace) -> int:
    from services.md.guards import MDStopped

    traj_path = Path(args.traj)
    try:
        return _run(args)
    except MDStopped as exc:
        # a guard stopped the run: one line, exit 3 (bad input is exit 2, in cli.main)
        print(f"nnmd md: {exc.describe(traj_path)}".replace("\n", " "), file=sys.stderr)
        return MDStopped.exit_code


def _run(args: argparse.Namespace) -> int:
    from ase.io import read, write

    from nnmd_kernels import Potential
    from services.md.guards import Guard, check_max_deviation
    from services.md.observers import (
        ExtxyzTrajectory,
        MDFrame,
        StoreTrajectory,
        ThermoLog,
        fan_out,
        velocities_of,
    )

    spec = spec_from_args(args)
    if args.np < 1:
        raise ValueError(f"--np must be >= 1, got {args.np}")
    if args.np > 1 and args.engine != "lammps":
        raise ValueError("--np > 1 needs --engine lammps (the native engine runs in one process)")
    if args.guard_interval < 1:
        raise ValueError(f"--guard-interval must be >= 1 step, got {args.guard_interval}")
    if args.no_guards and args.max_deviation is not None:
        raise ValueError("--max-deviation is a guard: drop --no-guards to use it")
    for name in ("model", "structure"):
        if not Path(getattr(args, name)).exists():
            raise FileNotFoundError(f"--{name} {getattr(args, name)} does not exist")
    from orchestrator.commands._output import check_out
    from services.trainer.formats import read_structure

    traj_out = check_out(args.traj, args.force, "--traj")
    check_out(Path(args.thermo) if args.thermo else traj_out.with_suffix(".thermo"),
              args.force, "--thermo")
    if args.final:
        check_out(args.final, args.force, "--final")
    pot = Potential.load(args.model)
    check_max_deviation(pot, args.max_deviation)  # one member: exit 2, names --models
    atoms = read_structure(args.structure, "--structure")
    pot.types_of(atoms.numbers)  # unknown species: a clear error before anything runs
    traj_path = Path(args.traj)
    thermo_path = Path(args.thermo) if args.thermo else traj_path.with_suffix(".thermo")
    store = (args.store, args.traj_name or traj_path.stem) if args.store else None
    if store is not None:
        from services.store.store import safe_name

        safe_name(store[1], "--traj-name")
    echo = None if args.quiet else sys.stdout
    guard_options = None if args.no_guards else {"max_deviation": args.max_deviation,
                                                 "distance_interval": args.guard_interval}
    deviation = guard_options is not None and pot.n_models > 1

    if args.engine == "lammps" and args.np > 1:
        from services.md.lammps import launch_lammps

        if not args.quiet:
            sys.stdout.write(ThermoLog.echo_header_line(deviation))
            sys.stdout.flush()
        result = launch_lammps(args.structure, args.model, spec, args.np,
                               traj_path.parent / (traj_path.stem + "_lammps"), traj=traj_path,
                               thermo=thermo_path, ranks_per_gpu=args.ranks_per_gpu,
                               echo_thermo=not args.quiet, store=store, guard=guard_options)
        if args.final:
            write(args.final, read(result["final"]), format="extxyz")
        print(f"LAMMPS on {result['mpi_size']} ranks: {spec.steps} steps{_conditions(spec)} in "
              f"{result['wall_s']:.2f} s; trajectory {traj_path}, thermo {thermo_path}")
        return 0

    guard = (Guard.for_spec(pot, atoms, spec, velocities_of(atoms), **guard_options)
             if guard_options is not None else None)
    with open(thermo_path, "w") as fh:
        thermo = ThermoLog(fh, echo=echo, deviation=deviation, total_steps=spec.steps)
        traj = ExtxyzTrajectory(traj_path)
        writer = to_store = None
        if store is not None:
            from services.store import Store

            writer = Store(store[0]).writer()
            to_store = StoreTrajectory(writer, store[1])
        try:
            if args.engine == "native":
                from services.md.native import run_native

                state = run_native(atoms, pot, spec, thermo=thermo, traj=fan_out(traj, to_store),
                                   guard=guard)
                final = MDFrame.from_state(state)
            else:
                from services.md.lammps import run_lammps

                final, _ = run_lammps(atoms, pot, spec, thermo=thermo, traj=fan_out(traj, to_store),
                                      log=thermo_path.with_suffix(".lammps.log"), guard=guard)
        finally:
            traj.close()
            if writer is not None:
                writer.close()
    if args.final:
        write(args.final, final.to_atoms(), format="extxyz")
    print(f"{args.engine}: {spec.steps} steps{_conditions(spec)}; trajectory {traj_path}, "
          f"thermo {thermo_path}")
    return 0
