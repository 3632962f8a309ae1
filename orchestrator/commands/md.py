"""`nnmd md`: production MD with a trained potential, on the native engine or LAMMPS, in this
process or on an MD executor of a Ray cluster (`--executor ray`)."""

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
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default): run in this process (LAMMPS --np > 1: a child "
                        "mpirun); ray: on one MD executor, a Ray actor holding --np CPUs (and "
                        "a GPU where the cluster has one), of the Ray cluster RAY_ADDRESS "
                        "names, else of a local Ray started for the run; the same output "
                        "files, written here (a --store must be reachable from the "
                        "executor's node)")
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
    from nnmd_kernels import Potential
    from services.md.guards import check_max_deviation

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
    guard_options = None if args.no_guards else {"max_deviation": args.max_deviation,
                                                 "distance_interval": args.guard_interval}
    if args.executor == "ray":
        return _run_on_executor(args, spec, traj_path, thermo_path, store, guard_options)
    line = md_to_files(args.model, args.structure, spec, engine=args.engine, n_ranks=args.np,
                       ranks_per_gpu=args.ranks_per_gpu, traj=traj_path, thermo=thermo_path,
                       final=args.final, store=store, guard=guard_options,
                       echo=not args.quiet)
    print(line)
    return 0


def md_to_files(model, structure, spec: MDSpec, *, engine: str, n_ranks: int = 1,
                ranks_per_gpu: int = 2, traj, thermo, final=None, store=None, guard=None,
                echo: bool = False, lammps_dir=None) -> str:
    """The run of `nnmd md` (model and structure files, checked by the caller): the
    trajectory `traj` (extxyz), the thermo log `thermo`, the last frame at `final`, the
    frames also in `store` ((url, trajectory name)). engine native, or lammps on n_ranks
    MPI ranks (> 1: a child mpirun, its files in lammps_dir, default TRAJ_STEM_lammps
    beside the trajectory). guard: Guard.for_spec options, None = no guards. echo: the
    thermo lines also to stdout. Returns the summary line; a guard's stop raises MDStopped
    after the last good frame has gone to the files. Also what an MD executor runs for
    `nnmd md --executor ray` (MDExecutor.md_files)."""
    from ase.io import read, write

    from nnmd_kernels import Potential
    from services.md.guards import Guard
    from services.md.observers import (
        ExtxyzTrajectory,
        MDFrame,
        StoreTrajectory,
        ThermoLog,
        fan_out,
        velocities_of,
    )
    from services.trainer.formats import read_structure

    traj_path, thermo_path = Path(traj), Path(thermo)
    pot = Potential.load(str(model))
    deviation = guard is not None and pot.n_models > 1

    if engine == "lammps" and n_ranks > 1:
        from services.md.lammps import launch_lammps

        if echo:
            sys.stdout.write(ThermoLog.echo_header_line(deviation))
            sys.stdout.flush()
        workdir = (Path(lammps_dir) if lammps_dir is not None
                   else traj_path.parent / (traj_path.stem + "_lammps"))
        result = launch_lammps(structure, model, spec, n_ranks, workdir, traj=traj_path,
                               thermo=thermo_path, ranks_per_gpu=ranks_per_gpu,
                               echo_thermo=echo, store=store, guard=guard)
        if final:
            write(final, read(result["final"]), format="extxyz")
        return (f"LAMMPS on {result['mpi_size']} ranks: {spec.steps} steps{_conditions(spec)} "
                f"in {result['wall_s']:.2f} s; trajectory {traj_path}, thermo {thermo_path}")

    atoms = read_structure(str(structure), "--structure")
    guard_obj = (Guard.for_spec(pot, atoms, spec, velocities_of(atoms), **guard)
                 if guard is not None else None)
    with open(thermo_path, "w") as fh:
        thermo_log = ThermoLog(fh, echo=sys.stdout if echo else None, deviation=deviation,
                               total_steps=spec.steps)
        trajectory = ExtxyzTrajectory(traj_path)
        writer = to_store = None
        if store is not None:
            from services.store import Store

            writer = Store(store[0]).writer()
            to_store = StoreTrajectory(writer, store[1])
        try:
            if engine == "native":
                from services.md.native import run_native

                state = run_native(atoms, pot, spec, thermo=thermo_log,
                                   traj=fan_out(trajectory, to_store), guard=guard_obj)
                last = MDFrame.from_state(state)
            else:
                from services.md.lammps import run_lammps

                last, _ = run_lammps(atoms, pot, spec, thermo=thermo_log,
                                     traj=fan_out(trajectory, to_store),
                                     log=thermo_path.with_suffix(".lammps.log"),
                                     guard=guard_obj)
        finally:
            trajectory.close()
            if writer is not None:
                writer.close()
    if final:
        write(final, last.to_atoms(), format="extxyz")
    return (f"{engine}: {spec.steps} steps{_conditions(spec)}; trajectory {traj_path}, "
            f"thermo {thermo_path}")


def _run_on_executor(args, spec: MDSpec, traj_path: Path, thermo_path: Path, store,
                     guard_options) -> int:
    """`nnmd md --executor ray`: the run on one MD executor (RayMDPool, one actor with
    --np CPUs), its files written here where the local run writes them."""
    import asyncio
    import os

    import ray

    from orchestrator.coordinator.executors import RayMDPool
    from services.md.guards import MDStopped

    if store is not None and "://" not in store[0]:
        store = (str(Path(store[0]).resolve()), store[1])  # the executor's cwd differs
    job = {"model": (Path(args.model).name, Path(args.model).read_bytes()),
           "structure": (Path(args.structure).name, Path(args.structure).read_bytes()),
           "spec": spec.to_dict(), "engine": args.engine, "np": args.np,
           "ranks_per_gpu": args.ranks_per_gpu, "guard": guard_options,
           "store": store, "final": bool(args.final)}
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, namespace="nnmd",
                 ignore_reinit_error=True, log_to_driver=False)
    try:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        try:
            pool = RayMDPool("", 1, num_cpus=float(args.np), num_gpus=gpus, ranks=args.np,
                             max_restarts=1, start_timeout_s=180.0)
        except RuntimeError as exc:  # no node has --np free CPUs
            raise RuntimeError(f"--executor ray: {exc}; lower --np") from None
        try:
            out = asyncio.run(pool.md_files(job))
        finally:
            pool.close()
    finally:
        if started:
            ray.shutdown()
    files = out["files"]
    targets = {"traj": traj_path, "thermo": thermo_path,
               "final": Path(args.final) if args.final else None,
               "lammps_log": (traj_path.parent / (traj_path.stem + "_lammps") / "lammps.log"
                              if args.np > 1 else thermo_path.with_suffix(".lammps.log"))}
    for role, path in targets.items():
        if path is not None and role in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[role])
    if not args.quiet and "thermo" in files:  # the lines a local run echoes (no ETA)
        sys.stdout.write(files["thermo"].decode())
    if out.get("stopped"):
        raise MDStopped.from_dict(out["stopped"])
    print(f"{out['summary']} (on MD executor {out['address']})")
    return 0
