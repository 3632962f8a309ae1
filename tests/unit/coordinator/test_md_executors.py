"""MD executors (issue 18): the proposal an executor returns, the spec's resources.md, and
where status shows them (runner -> CampaignStatus proto -> Client.status)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.data import atomic_masses
from ase.io import read

from nnmd_kernels import Potential, slhmc
from nnmd_kernels.md.forces import potential_force_fn
from orchestrator.coordinator.executors import MDExecutor
from orchestrator.coordinator.spec import SpecError, parse_spec
from services.store import Store
from tests.unit.coordinator.conftest import EXAMPLES


def _state(seed=3):
    atoms = read(EXAMPLES / "cu-fcc-32.xyz")
    kcfg = slhmc.SLHMCConfig(temperature=600.0, dt=1.0, n_md=6, n_md_min=2, n_md_max=20,
                             n_md_jitter=0.3)
    state = slhmc.init_chain(atoms.positions, atoms.numbers, atomic_masses[atoms.numbers],
                             atoms.cell.array, atoms.pbc, -1.0, kcfg, seed=(seed, 0))
    return state, kcfg


def test_executor_proposal_is_a_pure_function_of_model_state_and_stream(model_store):
    url, pot = model_store
    state, kcfg = _state()
    ex = MDExecutor(url, "native")
    p1 = ex.propose(1, "", state, kcfg)
    p2 = ex.propose(1, "", state, kcfg)  # the same call again (a retry): bit for bit
    again = MDExecutor(url, "native").propose(1, "", state, kcfg)  # a restarted executor
    for p in (p2, again):
        assert np.array_equal(p.positions, p1.positions)
        assert p.log_q == p1.log_q and p.n_md == p1.n_md
        assert p.rng_state == p1.rng_state
    assert ex.model_loads == 1 and ex.calls == 2  # the model read once, by version
    # what the coordinator's own MD thread computes
    local = slhmc.screen(slhmc.propose(state, kcfg, potential_force_fn(
        pot, state.numbers, state.pbc)), kcfg)
    assert np.allclose(local.positions, p1.positions, atol=1e-10)
    assert local.n_md == p1.n_md and local.rng_state == p1.rng_state
    assert abs(local.e_nnp_new - p1.e_nnp_new) < 1e-9
    assert ex.ready()["model_loads"] == 1


def test_executor_checks_the_models_sha(model_store, tmp_path):
    url, _ = model_store
    state, kcfg = _state()
    with pytest.raises(ValueError, match="sha256"):
        MDExecutor(url).propose(1, "0" * 64, state, kcfg)
    with pytest.raises(ValueError, match="engine"):
        MDExecutor(url, "lammps")
    # a store at the same path that is not the coordinator's: the object store's copy
    import hashlib

    other = tmp_path / "other.nnmd"
    Potential.random(["Cu"], seed=5, n_radial=6, n_angular=3, r_radial=4.0,
                     r_angular=3.5).save(other)
    data = other.read_bytes()
    ex = MDExecutor(url)
    ex.propose(1, hashlib.sha256(data).hexdigest(), state, kcfg, [data])
    assert ex.ready()["model_source"] == "object store"


def test_spec_resources_md(tiny_spec):
    spec = parse_spec({**tiny_spec, "resources": {"md": {
        "workers": 2, "num_cpus": 1, "num_gpus": 0, "engine": "native", "ranks": 2,
        "max_restarts": 1}}})
    assert spec.md_workers == 2 and spec.md_resources["engine"] == "native"
    assert parse_spec({**tiny_spec, "resources": {"md": {"workers": 0}}}).md_workers == 0
    assert parse_spec(tiny_spec).md_workers == 0  # default: MD in the coordinator
    with pytest.raises(SpecError, match="resources.md.engine.*lammps runs production MD"):
        parse_spec({**tiny_spec, "resources": {"md": {"engine": "lammps"}}})
    with pytest.raises(SpecError, match="resources.md.engine"):
        parse_spec({**tiny_spec, "resources": {"md": {"engine": 3}}})
    with pytest.raises(SpecError, match="resources.md.workers"):
        parse_spec({**tiny_spec, "resources": {"md": {"workers": -1}}})
    with pytest.raises(SpecError, match="resources.md.ranks"):
        parse_spec({**tiny_spec, "resources": {"md": {"ranks": 0}}})


def test_status_shows_where_the_work_runs(tiny_spec):
    """A local campaign: one in-process MD entry and one in-process reference entry,
    through the proto and the client's dict."""
    import asyncio

    from orchestrator.client import Client
    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.service import _status_proto

    run = CampaignRun(parse_spec({**tiny_spec, "steps": 2, "retrain_every": 0}),
                      log=lambda m: None)
    assert run.status()["md_executors"] == [] and run.status()["reference_workers"] == []
    asyncio.run(run.run())
    st = run.status()
    assert st["md_executors"] == [{"address": "in-process", "calls": 4,
                                   "kind": "md:in-process"}]
    assert st["reference_workers"] == [{"address": "in-process", "calls": 4,
                                        "kind": "reference:local"}]
    st["md_executors"] = [{"address": "10.0.0.1/pid7", "calls": 3, "kind": "md:native"},
                          {"address": "10.0.0.2/pid9", "calls": 1, "kind": "md:native"}]
    proto = _status_proto(st)

    class Stub:
        def Status(self, request):
            return proto

    client = Client.__new__(Client)
    client._stub = Stub()
    out = client.status("tiny")
    assert out["md_executors"] == st["md_executors"]
    assert out["reference_workers"] == st["reference_workers"]
    assert [c["step"] for c in out["chains"]] == [2, 2]


@pytest.mark.timeout(600)
def test_acceptance_spec_with_two_md_workers_runs_on_two_executors(ray_session, tiny_spec,
                                                                     tmp_path):
    """Issue 18's acceptance: a spec (YAML) with resources.md.workers: 2 runs its chains'
    proposals on 2 MD executor actors; status (dict and proto) shows calls on both, and the
    coordinator built no force function of its own."""
    import asyncio

    import yaml

    from orchestrator.coordinator.runner import CampaignRun
    from orchestrator.coordinator.service import _status_proto

    doc = {**tiny_spec, "executor": "ray", "steps": 4,  # re-trains every 4 labels
           "resources": {"reference": {"workers": 1, "num_cpus": 0.25},
                         "md": {"workers": 2, "num_cpus": 0.25, "engine": "native"}}}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc))
    run = CampaignRun(parse_spec(path), log=lambda m: None)
    summary = asyncio.run(run.run())
    assert run.state == "finished", run.message
    st = run.status()
    md = st["md_executors"]
    assert len(md) == 2 and all(w["calls"] > 0 for w in md), md
    assert sum(w["calls"] for w in md) == 2 * 4
    assert len({w["address"] for w in md}) == 2  # two processes
    assert all(w["kind"] == "md:native" for w in md)
    # the bootstrap's 7 frames and the chains' 8 steps, all on the one reference worker
    assert [w["calls"] for w in st["reference_workers"]] == [7 + 8]
    assert summary["md_executors"][0]["calls"] == md[0]["calls"]
    assert run.campaign.in_process_proposals == 0  # no MD numerics in the coordinator
    # the executors took the re-trained model too (read from the store by version): the
    # steps that began after the 4th label waited for v2 (wait_for_model)
    store = Store(doc["store"], read_only=True)
    hist = [r for c in ("chain000", "chain001")
            for r in store.read_checkpoint("tiny", c)["history"]]
    assert summary["retrainings"] >= 2 and max(r["model_version"] for r in hist) >= 2, hist
    proto = _status_proto(st)
    assert [w.calls for w in proto.md_executors] == [w["calls"] for w in md]
    assert proto.reference_workers[0].kind == "reference:ray"


def test_executor_without_the_store_takes_the_object_store_copy(model_store, tmp_path):
    url, _ = model_store
    state, kcfg = _state()
    want = MDExecutor(url).propose(1, "", state, kcfg)
    data = Store(url, read_only=True).load_model(1)[0]
    ex = MDExecutor(str(tmp_path / "not-here"))  # a node that does not see the store
    got = ex.propose(1, "", state, kcfg, [data])
    assert np.array_equal(got.positions, want.positions)
    assert ex.ready()["model_source"] == "object store"
    from services.runtime.errors import NotFound

    with pytest.raises(NotFound):  # neither the store nor a copy
        MDExecutor(str(tmp_path / "not-here")).propose(1, "", state, kcfg)


@pytest.mark.timeout(300)
def test_pool_spreads_follows_and_drops_executors(ray_session, model_store):
    """RayMDPool on its own: calls spread over both executors, batched once both are busy
    (the 4 requests go out as 1 + 1 + a batch of 2), the same proposal whichever answers
    and whatever it is batched with; a memory:// store the executors cannot see (the object store's copy serves);
    an executor killed for good is dropped and the other takes the calls."""
    import asyncio

    from orchestrator.coordinator.executors import NoMDExecutors, RayMDPool

    url, _ = model_store
    mem = "memory://nnmd-md-executor-test"
    with Store(mem).writer() as w:
        w.publish_model(Store(url, read_only=True).load_model(1)[0], {"campaign": "t"})
    states = [_state(seed)[0] for seed in range(4)]
    kcfg = _state()[1]
    want = [MDExecutor(url).propose(1, "", s, kcfg) for s in states]
    pool = RayMDPool(mem, 2, num_cpus=0.25)
    try:
        async def batch():
            return await asyncio.gather(*(pool.propose(1, s, kcfg) for s in states))

        got = asyncio.run(batch())
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g.positions, w_.positions, rtol=0, atol=1e-12)
            assert g.rng_state == w_.rng_state
        calls = [w_["calls"] for w_ in pool.workers()]
        assert sum(calls) == 4 and min(calls) >= 1, calls
        assert pool.batches == 3
        ray_session.kill(pool._actors[0], no_restart=True)
        before = [w_["calls"] for w_ in pool.workers()]
        got = asyncio.run(batch())
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g.positions, w_.positions, rtol=0, atol=1e-12)
        workers = pool.workers()
        assert sum(w_["calls"] for w_ in workers) == 8
        assert pool.retries >= 1 or workers[0]["calls"] == before[0]
        ray_session.kill(pool._actors[1], no_restart=True)
        with pytest.raises(NoMDExecutors):
            asyncio.run(batch())
        assert [w_["alive"] for w_ in pool.workers()] == [False, False]
    finally:
        pool.close()


def test_spec_production_block(tiny_spec, tmp_path):
    spec = parse_spec({**tiny_spec, "production": {"steps": 20, "traj_interval": 10,
                                                    "output": str(tmp_path / "prod")}})
    p = spec.production
    assert p["replicas"] == 2 and p["ensemble"] == "nvt" and p["dt_fs"] == 2.0
    assert p["output"] == str(tmp_path / "prod")
    from orchestrator.coordinator.spec import production_md

    md = production_md(p, spec.config, 1)
    assert md["temperature"] == 600.0 and md["seed"] == 1 + 1 and md["steps"] == 20
    assert parse_spec(tiny_spec).production == {}
    with pytest.raises(SpecError, match="production.steps.*missing"):
        parse_spec({**tiny_spec, "production": {"replicas": 2}})
    with pytest.raises(SpecError, match="production.stesp.*did you mean 'steps'"):
        parse_spec({**tiny_spec, "production": {"stesp": 2}})
    with pytest.raises(SpecError, match="production.*ensemble"):
        parse_spec({**tiny_spec, "production": {"steps": 2, "ensemble": "nph"}})
    with pytest.raises(SpecError, match="production.dt"):
        parse_spec({**tiny_spec, "production": {"steps": 2, "dt": 0}})


@pytest.mark.timeout(600)
def test_production_stage_on_executors_equals_in_process(ray_session, tiny_spec, tmp_path):
    """`production:` after the chains: replicas from the chains' final states with the last
    model, on the MD executors (calls counted there), frames to OUTPUT/replicaNNN.extxyz;
    the same frames as the coordinator's own thread makes (a pure function of model,
    structure and seed)."""
    import asyncio
    import shutil

    from ase.io import read as ase_read

    from orchestrator.coordinator.runner import CampaignRun

    base = {**tiny_spec, "steps": 2, "retrain_every": 0}
    run = CampaignRun(parse_spec(base), log=lambda m: None)
    asyncio.run(run.run())
    shutil.copytree(tiny_spec["store"], tmp_path / "store2")
    prod = {"steps": 20, "replicas": 3, "traj_interval": 10}
    local = CampaignRun(parse_spec({**base, "production": {
        **prod, "output": str(tmp_path / "local")}}), log=lambda m: None)
    s_local = asyncio.run(local.run())
    assert local.state == "finished", local.message
    remote = CampaignRun(parse_spec({**base, "store": str(tmp_path / "store2"),
                                     "executor": "ray", "production": {
                                         **prod, "output": str(tmp_path / "ray")},
                                     "resources": {"reference": {"num_cpus": 0.25},
                                                   "md": {"workers": 2, "num_cpus": 0.25}}}),
                         log=lambda m: None)
    s_ray = asyncio.run(remote.run())
    assert remote.state == "finished", remote.message
    assert s_ray["production"]["replicas"] == s_local["production"]["replicas"] == 3
    assert s_ray["production"]["frames"] == 3 * 3  # steps 0, 10, 20
    assert sum(w["calls"] for w in remote.status()["md_executors"]) == 3
    for r in range(3):
        a = ase_read(tmp_path / "local" / f"replica{r:03d}.extxyz", ":")
        b = ase_read(tmp_path / "ray" / f"replica{r:03d}.extxyz", ":")
        assert [x.info["step"] for x in b] == [0, 10, 20]
        assert b[0].info["chain"] == f"chain00{r % 2}"
        for x, y in zip(a, b):
            assert np.allclose(x.positions, y.positions, atol=1e-9)
            assert abs(x.info["energy_nnp"] - y.info["energy_nnp"]) < 1e-8
