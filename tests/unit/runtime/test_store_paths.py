"""User-supplied names never become paths outside the store root.

Every place a name from a user or a request becomes a key or path in the store:
checkpoint keys (campaign, chain), trajectory names, campaign names of records,
model versions (integers only), the Store service's URL, the MD service's
trajectory name and store URL, the Trainer's store URLs and campaign, the Reference
destination, `nnmd store import --campaign` and `nnmd md --traj-name`. Each refuses
"../x", "/abs", "a/../../b", "", NUL, backslashes, newlines and very long names with a
ValueError / INVALID_ARGUMENT that names the field, and writes nothing outside.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from test_fuzz_grpc import World

from orchestrator.cli import main as cli
from services.proto.nnmd.v1 import (
    common_pb2,
    md_pb2,
    reference_pb2,
    store_pb2,
    trainer_pb2,
)
from services.runtime.channel import connect
from services.runtime.convert import LabelArrays, StructureArrays
from services.runtime.errors import InvalidArgument, error_detail
from services.store.store import Provenance, Record, Store, check_store_url, safe_name

BAD_NAMES = ["../x", "/abs", "a/../../b", "", "a\x00b", "a\\b", "..\\..\\x", "x" * 129,
             "x" * 100000, "line\n", ".hidden", "..", "a/b", " a", "\u2215etc"]
TOKEN = "paths-token-1"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_safe_name_refuses(name):
    with pytest.raises(InvalidArgument) as err:
        safe_name(name, "trajectory.name")
    assert err.value.field == "trajectory.name"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_store_api_refuses_bad_names(tmp_path, name):
    store = Store(str(tmp_path / "s"))
    with store.writer() as w:
        with pytest.raises(ValueError, match="campaign"):
            w.write_checkpoint(name, "c0", {})
        with pytest.raises(ValueError, match="chain"):
            w.write_checkpoint("camp", name, {})
        with pytest.raises(ValueError, match="trajectory.name"):
            w.append_frames(name, np.array([29]), np.zeros((1, 3)))
        s = StructureArrays(np.zeros((1, 3)), np.array([29], np.int32))
        if name:  # "" means "no campaign" for records and is fine there
            with pytest.raises(ValueError, match="provenance.campaign"):
                w.append(Record(s, LabelArrays(), Provenance(campaign=name)))
    if name:
        with pytest.raises(ValueError, match="campaign"):
            store.read_checkpoint(name, "c0")
        with pytest.raises(ValueError, match="campaign"):
            store.list_checkpoints(name)
    with pytest.raises(ValueError, match="trajectory.name"):
        store.read_trajectory(name)
    with pytest.raises(ValueError, match="model.version"):
        store.load_model(10**9)
    outside = {p.name for p in tmp_path.parent.iterdir()}
    assert "x" not in outside and "b" not in outside and "abs" not in outside


@pytest.mark.parametrize("url", ["", "a\x00b", "~nobody-here/x", "x" * 5000, "line\nbreak"])
def test_store_urls_refused_always(url):
    with pytest.raises(InvalidArgument) as err:
        check_store_url(url, "store.url")
    assert err.value.field == "store.url"


def test_store_roots(tmp_path):
    root = tmp_path / "root"
    (root / "s").mkdir(parents=True)
    (tmp_path / "evil").symlink_to(tmp_path)
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    ok = [str(root), str(root / "s"), f"file://{root}/s", str(root / "new" / "store")]
    for url in ok:
        assert check_store_url(url, "f", [str(root)]) == url
    bad = [str(root / ".." / "x"), str(tmp_path), "/abs", "../x", str(root / "link"),
           f"{root}/s/../../x", "memory://x", "s3://other/x", str(root) + "-sibling"]
    for url in bad:
        with pytest.raises(InvalidArgument, match="outside") as err:
            check_store_url(url, "dataset.store.url", [str(root)])
        assert err.value.field == "dataset.store.url"
    assert check_store_url("s3://bucket/a/b", "f", ["s3://bucket/a"])
    for url in ("s3://bucket/ab", "s3://bucket/a/../b"):
        with pytest.raises(InvalidArgument):
            check_store_url(url, "f", ["s3://bucket/a"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("paths"), token=TOKEN)
    yield w
    for s in w.servers.values():
        s.stop()


def _invalid(fn, field_part):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    detail = error_detail(err.value)
    assert detail is not None and field_part in detail.field, (detail, err.value.details())


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../b", "a\x00b", "a\\b", "x" * 300,
                                  "line\n"])
def test_services_refuse_bad_names_and_urls(world, name, tmp_path):
    from services.proto.nnmd.v1 import (
        md_pb2_grpc,
        reference_pb2_grpc,
        store_pb2_grpc,
        trainer_pb2_grpc,
    )

    def stub(service, cls):
        return cls(connect(world.servers[service].address, token=TOKEN, timeout_s=20))

    outside = str(tmp_path / "outside")
    store_ref = common_pb2.StoreRef(url=world.store)
    # Store.Info with a URL outside the root
    s = stub("store", store_pb2_grpc.StoreStub)
    for url in (outside, world.root + "/../x", name if name.startswith("/") else "../" + name):
        _invalid(lambda u=url: s.Info(store_pb2.StoreInfoRequest(store={"url": u})), "store.url")
    # MD.Production: trajectory name and store URL
    m = stub("md", md_pb2_grpc.MDStub)
    model = common_pb2.ModelRef(store=store_ref)
    base = dict(model=model, ensemble=md_pb2.ENSEMBLE_NVE, timestep_fs=1.0, n_steps=2)
    req = md_pb2.ProductionRequest(**base, trajectory=common_pb2.TrajectoryRef(
        store=store_ref, name=name))
    _invalid(lambda: list(m.Production(req)), "trajectory.name")
    req = md_pb2.ProductionRequest(**base, trajectory=common_pb2.TrajectoryRef(
        store={"url": outside}, name="ok"))
    _invalid(lambda: list(m.Production(req)), "trajectory.store.url")
    _invalid(lambda: m.RunSegments(md_pb2.RunSegmentsRequest(
        model=common_pb2.ModelRef(store={"url": outside}), timestep_fs=1.0,
        segments=[md_pb2.Segment(n_steps=1)])), "model.store.url")
    # Trainer: dataset, output and warm-start stores, campaign
    t = stub("trainer", trainer_pb2_grpc.TrainerStub)
    ds = common_pb2.DatasetRef(store=store_ref)
    for req, field in [
        (trainer_pb2.TrainRequest(dataset=common_pb2.DatasetRef(store={"url": outside})),
         "dataset.store.url"),
        (trainer_pb2.TrainRequest(dataset=ds, output={"url": outside}), "output.url"),
        (trainer_pb2.TrainRequest(dataset=ds, warm_start=common_pb2.ModelRef(
            store={"url": outside})), "warm_start.store.url"),
        (trainer_pb2.TrainRequest(dataset=common_pb2.DatasetRef(store=store_ref, campaign=name)),
         "dataset.campaign"),
    ]:
        _invalid(lambda r=req: list(t.Train(r)), field)
    # Reference: destination store
    r = stub("reference", reference_pb2_grpc.ReferenceStub)
    _invalid(lambda: r.Compute(reference_pb2.ComputeRequest(destination={"url": outside})),
             "destination.url")
    assert not (tmp_path / "outside").exists()


def test_cli_refuses_bad_names(tmp_path, capsys):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    write(tmp_path / "a.extxyz", atoms)
    store = str(tmp_path / "s")
    for name in ("../x", "/abs", "a/../../b", "a\\b", "x" * 200):
        assert cli(["store", "import", "--store", store, str(tmp_path / "a.extxyz"),
                    "--campaign", name]) != 0
        assert "campaign" in capsys.readouterr().err
    assert len(Store(store, read_only=True)) == 0
    from nnmd_kernels import Potential

    Potential.random(["Cu"], seed=0, n_radial=4, n_angular=2, r_radial=4.0,
                     r_angular=3.5).save(tmp_path / "m.nnmd")
    for name in ("../x", "/abs", "a/../../b", "a\\b", "x" * 200):
        rc = cli(["md", "--model", str(tmp_path / "m.nnmd"), "--structure",
                  str(tmp_path / "a.extxyz"), "--steps", "1", "--traj", str(tmp_path / "t.xyz"),
                  "--store", store, "--traj-name", name])
        assert rc != 0
        assert "--traj-name" in capsys.readouterr().err
    assert Store(store, read_only=True).trajectories() == []
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "b").exists()
