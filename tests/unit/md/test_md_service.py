"""The MD gRPC service: batched segments and streamed production into a store."""

import asyncio
import threading

import grpc
import numpy as np
import pytest
from ase import units
from ase.build import bulk

from nnmd_kernels import Potential
from nnmd_kernels.md.state import make_rng, maxwell_boltzmann
from services.md.native import run_native
from services.md.service import MDServicer
from services.md.spec import MDSpec
from services.proto.nnmd.v1 import common_pb2, md_pb2, md_pb2_grpc
from services.runtime.channel import connect
from services.runtime.convert import from_atoms, structure_to_proto
from services.runtime.server import ServerConfig, start_server
from services.store import Store


class Served:
    def __init__(self, servicer):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servicer = servicer
        self.running = asyncio.run_coroutine_threadsafe(start_server(
            [(servicer, md_pb2_grpc.add_MDServicer_to_server)], ("nnmd.v1.MD",),
            ServerConfig(allow_no_auth=True)), self.loop).result(60)
        self.channel = connect(f"localhost:{self.running.port}", timeout_s=120)
        self.stub = md_pb2_grpc.MDStub(self.channel)

    def stop(self):
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(60)
        self.servicer.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mdsvc")
    pot = Potential.random(["Li", "P", "S"], seed=0, n_radial=8, n_angular=4, r_radial=4.0,
                           r_angular=3.5)
    model = d / "m.nnmd"
    pot.save(model)
    url = str(d / "store")
    with Store(url).writer() as w:
        w.publish_model(model.read_bytes(), {"note": "test"})
    served = Served(MDServicer(backend="numpy"))
    yield pot, url, served
    served.stop()


def _atoms(seed):
    atoms = bulk("Li", "bcc", a=3.5, cubic=True).repeat(2)
    atoms.numbers[::3] = 15
    atoms.numbers[1::3] = 16
    atoms.rattle(0.03, seed=seed)
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), 300.0, make_rng(seed)) / units.fs)
    return atoms


def _model(url):
    return common_pb2.ModelRef(store=common_pb2.StoreRef(url=url), version=0)


def test_run_segments_equals_native_runs(setup):
    pot, url, served = setup
    structures = [_atoms(k) for k in range(3)]
    steps = [4, 4, 7]
    req = md_pb2.RunSegmentsRequest(model=_model(url), timestep_fs=0.5, segments=[
        md_pb2.Segment(chain=f"c{k}", start=structure_to_proto(from_atoms(a)[0]), n_steps=n)
        for k, (a, n) in enumerate(zip(structures, steps))])
    resp = served.stub.RunSegments(req, timeout=120)
    assert [r.chain for r in resp.results] == ["c0", "c1", "c2"]
    for a, n, r in zip(structures, steps, resp.results):
        ref = run_native(a, pot, MDSpec(ensemble="nve", dt_fs=0.5, steps=n), backend="numpy")
        end = np.array(r.end.positions_angstrom).reshape(-1, 3)
        np.testing.assert_allclose(end, ref.positions, atol=1e-10)
        assert len(r.end.velocities_angstrom_per_fs) == 3 * len(a)
        h0 = r.start_potential_energy_ev + r.start_kinetic_energy_ev
        h1 = r.end_potential_energy_ev + r.end_kinetic_energy_ev
        assert abs(h1 - h0) < 1e-3 * len(a)  # NVE over a few steps


def test_run_segments_rejects_bad_requests(setup):
    _, url, served = setup
    a = _atoms(0)
    a.numbers[0] = 32
    req = md_pb2.RunSegmentsRequest(model=_model(url), timestep_fs=0.5, segments=[
        md_pb2.Segment(chain="c", start=structure_to_proto(from_atoms(a)[0]), n_steps=2)])
    with pytest.raises(grpc.RpcError) as err:
        served.stub.RunSegments(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Ge" in err.value.details()
    a = _atoms(0)
    del a.arrays["momenta"]
    req.segments[0].start.CopyFrom(structure_to_proto(from_atoms(a)[0]))
    with pytest.raises(grpc.RpcError) as err:
        served.stub.RunSegments(req, timeout=60)
    assert "velocities" in err.value.details()


def test_production_streams_progress_and_writes_the_trajectory(setup):
    _, url, served = setup
    traj = common_pb2.TrajectoryRef(store=common_pb2.StoreRef(url=url), name="prod1")
    req = md_pb2.ProductionRequest(
        model=_model(url), initial=structure_to_proto(from_atoms(_atoms(5))[0]),
        ensemble=md_pb2.ENSEMBLE_NVT_BUSSI, temperature_k=300.0, timestep_fs=0.5, n_steps=12,
        sample_interval=4, trajectory=traj, seed=3)
    msgs = list(served.stub.Production(req, timeout=120))
    assert [m.step for m in msgs] == [0, 4, 8, 12, 12]
    assert msgs[-1].done and not any(m.done for m in msgs[:-1])
    assert msgs[-1].frames_written == 4
    frames = Store(url, read_only=True).read_trajectory("prod1")
    np.testing.assert_array_equal(frames["step"], [0, 4, 8, 12])
    assert frames["positions"].shape == (4, 16, 3)


def test_production_pressure_is_gpa(setup, monkeypatch):
    _, url, served = setup
    from services.md import native

    handed = []
    real = native.npt_scr

    def spy(*args, **kwargs):
        handed.append(kwargs["pressure_gpa"])
        return real(*args, **kwargs)

    monkeypatch.setattr(native, "npt_scr", spy)
    traj = common_pb2.TrajectoryRef(store=common_pb2.StoreRef(url=url), name="npt1")
    req = md_pb2.ProductionRequest(
        model=_model(url), initial=structure_to_proto(from_atoms(_atoms(6))[0]),
        ensemble=md_pb2.ENSEMBLE_NPT_ISOTROPIC, temperature_k=300.0, pressure_gpa=1.0,
        timestep_fs=0.5, n_steps=4, sample_interval=4, trajectory=traj, seed=1)
    msgs = list(served.stub.Production(req, timeout=120))
    assert msgs[-1].done and handed == [1.0]  # pressure_gpa goes to the engine as GPa
    req.pressure_gpa = 10000.0  # a value in bar
    req.trajectory.name = "npt2"
    with pytest.raises(grpc.RpcError) as err:
        list(served.stub.Production(req, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is it in bar? pressures are in GPa" in err.value.details()
