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
            "trajectory (read it with `nnmd analyze`) and a thermo log."
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
    p.add_argument("--traj", default="md.extxyz", help="trajectory output (extxyz)")
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
    p.add_argument("--quiet", action="store_true", help="do not echo thermo lines")
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
    from ase.io import read, write

    from nnmd_kernels import Potential
    from services.md.observers import (
        ExtxyzTrajectory,
        MDFrame,
        StoreTrajectory,
        ThermoLog,
        fan_out,
    )

    spec = spec_from_args(args)
    if args.np < 1:
        raise ValueError(f"--np must be >= 1, got {args.np}")
    if args.np > 1 and args.engine != "lammps":
        raise ValueError("--np > 1 needs --engine lammps (the native engine runs in one process)")
    for name in ("model", "structure"):
        if not Path(getattr(args, name)).exists():
            raise FileNotFoundError(f"--{name} {getattr(args, name)} does not exist")
    pot = Potential.load(args.model)
    atoms = read(args.structure, index=-1)
    pot.types_of(atoms.numbers)  # unknown species: a clear error before anything runs
    traj_path = Path(args.traj)
    thermo_path = Path(args.thermo) if args.thermo else traj_path.with_suffix(".thermo")
    store = (args.store, args.traj_name or traj_path.stem) if args.store else None
    if store is not None:
        from services.store.store import safe_name

        safe_name(store[1], "--traj-name")
    echo = None if args.quiet else sys.stdout

    if args.engine == "lammps" and args.np > 1:
        from services.md.lammps import launch_lammps

        if not args.quiet:
            sys.stdout.write(ThermoLog.HEADER)
        result = launch_lammps(args.structure, args.model, spec, args.np,
                               traj_path.parent / (traj_path.stem + "_lammps"), traj=traj_path,
                               thermo=thermo_path, ranks_per_gpu=args.ranks_per_gpu,
                               echo_thermo=not args.quiet, store=store)
        if args.final:
            write(args.final, read(result["final"]), format="extxyz")
        print(f"LAMMPS on {result['mpi_size']} ranks: {spec.steps} steps{_conditions(spec)} in "
              f"{result['wall_s']:.2f} s; trajectory {traj_path}, thermo {thermo_path}")
        return 0

    with open(thermo_path, "w") as fh:
        thermo = ThermoLog(fh, echo=echo)
        if echo is not None:
            echo.write(ThermoLog.HEADER)
        traj = ExtxyzTrajectory(traj_path)
        writer = to_store = None
        if store is not None:
            from services.store import Store

            writer = Store(store[0]).writer()
            to_store = StoreTrajectory(writer, store[1])
        try:
            if args.engine == "native":
                from services.md.native import run_native

                state = run_native(atoms, pot, spec, thermo=thermo, traj=fan_out(traj, to_store))
                final = MDFrame.from_state(state)
            else:
                from services.md.lammps import run_lammps

                final, _ = run_lammps(atoms, pot, spec, thermo=thermo, traj=fan_out(traj, to_store),
                                      log=thermo_path.with_suffix(".lammps.log"))
        finally:
            traj.close()
            if writer is not None:
                writer.close()
    if args.final:
        write(args.final, final.to_atoms(), format="extxyz")
    print(f"{args.engine}: {spec.steps} steps{_conditions(spec)}; trajectory {traj_path}, "
          f"thermo {thermo_path}")
    return 0
