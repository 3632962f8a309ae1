"""The MD service: the native engine and the LAMMPS executor behind one run specification.

- spec.MDSpec        what to run (ensemble, temperature, pressure in GPa, dt, steps, output)
- native.run_native  the nnmd_kernels engine (in-process, batched replicas)
- lammps.run_lammps  LAMMPS with the potential coupled by `fix external` (serial or MPI)
- observers          thermo log and extxyz trajectory writers for both engines
"""
