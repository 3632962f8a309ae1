"""SPMD entry point run by every MPI rank: `mpirun -np N python -m services.md.lammps_worker JOB.json`.

The job file (written by services.md.lammps.launch_lammps) names the structure, the model,
the MDSpec and the outputs. Rank 0 writes the thermo log, the trajectory and the result.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        job = json.load(fh)
    from mpi4py import MPI

    from services.md.lammps import gpu_for_rank

    comm = MPI.COMM_WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = node.Get_rank()
    if "NUMBA_NUM_THREADS" not in os.environ and node.Get_size() > 1:
        # ranks on one node share its cores: no oversubscription by the numba kernels
        import numba

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                         (cores or 1) // node.Get_size())))
    gpus = job.get("gpus") or []
    gpu = gpu_for_rank(local_rank, job.get("ranks_per_gpu", 2), len(gpus))
    if gpu is not None:  # before anything initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[gpu]

    from ase.io import read, write

    from nnmd_kernels import Potential
    from services.md.lammps import run_lammps
    from services.md.observers import ExtxyzTrajectory, ThermoLog, fan_out
    from services.md.spec import MDSpec

    spec = MDSpec.from_dict(job["spec"])
    atoms = read(job["structure"], index=-1)
    pot = Potential.load(job["model"])
    rank0 = comm.Get_rank() == 0
    guard = None
    if job.get("guard") is not None:
        from services.md.guards import Guard
        from services.md.observers import velocities_of

        guard = Guard.for_spec(pot, atoms, spec, velocities_of(atoms), **job["guard"])
    thermo = traj = None
    thermo_file = None
    if rank0 and job.get("thermo"):
        thermo_file = open(job["thermo"], "w")  # noqa: SIM115
        thermo = ThermoLog(thermo_file, echo=sys.stdout if job.get("echo_thermo") else None,
                           deviation=guard is not None and guard.deviation,
                           total_steps=spec.steps, echo_header=False)
    if rank0 and job.get("traj"):
        traj = ExtxyzTrajectory(job["traj"])
    store_writer = None
    to_store = None
    if rank0 and job.get("store"):
        from services.md.observers import StoreTrajectory
        from services.store import Store

        store_writer = Store(job["store"]["url"]).writer()
        to_store = StoreTrajectory(store_writer, job["store"]["name"])
    from services.md.guards import MDStopped

    stopped = None
    try:
        frame, info = run_lammps(atoms, pot, spec, thermo, fan_out(traj, to_store), comm=comm,
                                 log=job.get("log"), guard=guard,
                                 pair=job.get("pair", "external"))
    except MDStopped as exc:  # raised on every rank together
        stopped = exc
    finally:
        if thermo_file is not None:
            thermo_file.close()
        if traj is not None:
            traj.close()
        if store_writer is not None:
            store_writer.close()
    gpu_of_rank = comm.gather(os.environ.get("CUDA_VISIBLE_DEVICES") if gpu is not None else None)
    if stopped is not None:
        if rank0:
            with open(job["result"], "w") as fh:
                json.dump({"stopped": stopped.to_dict(), "mpi_size": comm.Get_size()}, fh)
        return 0
    if rank0:
        write(job["final"], frame.to_atoms(), format="extxyz", parallel=False)  # rank 0 only
        info.update(energy_eV=frame.energy, step=frame.step, final=job["final"],
                    gpu_of_rank=gpu_of_rank, mpi_size=comm.Get_size())
        with open(job["result"], "w") as fh:
            json.dump(info, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
