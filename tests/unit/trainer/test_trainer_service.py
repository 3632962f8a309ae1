"""The trainer as users meet it: `nnmd train` on files, and the Trainer gRPC service on a store."""

from __future__ import annotations

import asyncio
import json
import threading

import grpc
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from test_trainer_kernels import emt_structures

from nnmd_kernels import Potential
from orchestrator.cli import main as cli
from services.proto.nnmd.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from services.runtime.channel import connect
from services.runtime.convert import LabelArrays, StructureArrays
from services.runtime.errors import error_detail
from services.runtime.server import ServerConfig, start_service
from services.store.store import Provenance, Record, Store

SMALL = {"descriptor": {"n_radial": 6, "n_angular": 4, "r_radial": 4.5, "r_angular": 4.5}, "hidden": [6, 6],
         "max_epochs": 15, "warmup_epochs": 3}


def _write_extxyz(path, structures):
    frames = []
    for s in structures:
        a = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=True)
        a.calc = SinglePointCalculator(a, energy=s.energy, forces=s.forces, stress=s.stress)
        frames.append(a)
    write(path, frames, format="extxyz")


def test_cli_train_writes_model_metrics_and_plots(tmp_path):
    data = emt_structures(10, seed=5)
    _write_extxyz(tmp_path / "train.extxyz", data[:8])
    _write_extxyz(tmp_path / "test.extxyz", data[8:])
    (tmp_path / "cfg.json").write_text(json.dumps(SMALL))
    rc = cli(["train", "--data", str(tmp_path / "train.extxyz"), "--test", str(tmp_path / "test.extxyz"),
              "--out", str(tmp_path / "m.nnmd"), "--config", str(tmp_path / "cfg.json"), "--no-progress"])
    assert rc == 0
    pot = Potential.load(tmp_path / "m.nnmd")
    assert set(pot.species) == {"Cu", "Ag"}
    rep = tmp_path / "m_training"
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["errors"]["test"]["n_structures"] == 2
    for png in ("learning_curve.png", "parity_energy.png", "parity_forces.png"):
        assert (rep / png).stat().st_size > 1000
    # warm start from it
    rc = cli(["train", "--data", str(tmp_path / "train.extxyz"), "--out", str(tmp_path / "m2.nnmd"),
              "--init", str(tmp_path / "m.nnmd"), "--epochs", "3", "--no-progress"])
    assert rc == 0 and Potential.load(tmp_path / "m2.nnmd").metadata["warm_start"] == pot.content_hash[:16]


def test_cli_train_bad_data_is_a_clear_error(tmp_path, capsys):
    a = Atoms("Cu4", positions=np.eye(4, 3) * 2.0, cell=np.eye(3) * 6, pbc=True)
    a.calc = SinglePointCalculator(a, energy=1.0)  # no forces
    write(tmp_path / "x.extxyz", a)
    assert cli(["train", "--data", str(tmp_path / "x.extxyz"), "--out", str(tmp_path / "m.nnmd")]) == 2
    assert "field 'forces' is missing" in capsys.readouterr().err
    assert cli(["train", "--data", str(tmp_path / "missing.xyz"), "--out", str(tmp_path / "m.nnmd")]) == 2


class _Server:
    def __init__(self, config):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running = asyncio.run_coroutine_threadsafe(
            start_service("trainer", {}, config), self.loop).result(30)
        self.address = f"localhost:{self.running.port}"

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture()
def trainer_server():
    s = _Server(ServerConfig(token="tok"))
    yield s
    s.stop()


def test_trainer_service_trains_from_store_and_publishes(tmp_path, trainer_server):
    url = str(tmp_path / "store")
    store = Store(url)
    with store.writer() as w:
        recs = [Record(StructureArrays(s.positions, s.numbers.astype(np.int32), s.cell, np.array([True] * 3)),
                       LabelArrays(s.energy, s.forces, s.stress), Provenance(campaign="c1", source="import"))
                for s in emt_structures(8, seed=1)]
        w.append(recs)
    stub = trainer_pb2_grpc.TrainerStub(connect(trainer_server.address, token="tok", timeout_s=120))
    req = trainer_pb2.TrainRequest(dataset=common_pb2.DatasetRef(store=common_pb2.StoreRef(url=url), campaign="c1"),
                                   config_json=json.dumps(SMALL), campaign="c1")
    msgs = list(stub.Train(req))
    assert msgs[-1].done and msgs[-1].model.version == 1 and len(msgs) > 5
    assert msgs[-1].train_force_rmse_ev_per_angstrom > 0
    data, meta = Store(url, read_only=True).load_model(1)
    from nnmd_kernels.model_file import loads

    assert loads(data).species == ("Cu", "Ag") and meta["campaign"] == "c1"
    # warm start from version 1 publishes version 2
    req2 = trainer_pb2.TrainRequest(dataset=req.dataset, config_json=json.dumps({"max_epochs": 2}),
                                    warm_start=common_pb2.ModelRef(store=common_pb2.StoreRef(url=url), version=1))
    assert list(stub.Train(req2))[-1].model.version == 2
    # a bad config names the field
    bad = trainer_pb2.TrainRequest(dataset=req.dataset, config_json='{"epochs": 3}')
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Train(bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(err.value).field == "config_json" and "epochs" in err.value.details()
    # and no token, no training
    anon = trainer_pb2_grpc.TrainerStub(connect(trainer_server.address, timeout_s=10))
    with pytest.raises(grpc.RpcError) as err:
        list(anon.Train(req))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
