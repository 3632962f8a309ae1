"""The Reference gRPC service and its Ray worker pool, on EMT (no pw.x): labels
over the wire equal the plain function's, failures travel as empty labels plus
a trailer, idempotency keys run once, and 8 concurrent requests over 2 workers
complete even when a worker is killed mid-request."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from services.proto.nnmd.v1 import reference_pb2
from services.reference import make_backend
from services.reference.service import ReferenceServicer, failures_of
from services.runtime.channel import idempotency_metadata
from services.runtime.convert import from_atoms, labels_from_proto, structure_to_proto
from tests.unit.reference.served import Served

SLOW = "ase:tests.unit.reference.slow_emt:make"


def cu(seed):
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.05, seed=seed)
    return a


def request(structures, properties=()):
    return reference_pb2.ComputeRequest(
        structures=[structure_to_proto(from_atoms(a)[0]) for a in structures],
        properties=list(properties))


class Counting:
    """Unit-test wrapper: counts calls to the real EMT backend."""

    name = "counting-emt"

    def __init__(self):
        self.calls, self.inner = 0, make_backend("emt")

    def compute(self, atoms_list):
        self.calls += 1
        return self.inner.compute(atoms_list)


@pytest.fixture
def served():
    s = Served(ReferenceServicer("emt", backend=Counting()))
    yield s
    s.stop()


def test_labels_over_grpc_equal_emt(served):
    structures = [cu(0), cu(1)]
    resp = served.stub.Compute(request(structures, ["energy", "forces", "stress"]))
    assert len(resp.labels) == 2 and len(resp.reference_settings_hash) == 16
    for a, msg in zip(structures, resp.labels):
        lab = labels_from_proto(msg, len(a))
        a = a.copy()
        a.calc = EMT()
        assert lab.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(lab.forces, a.get_forces(), atol=1e-12)
        np.testing.assert_allclose(lab.stress, a.get_stress(voigt=False), atol=1e-12)
    # default properties: energy and forces only
    resp = served.stub.Compute(request([cu(0)]))
    assert resp.labels[0].HasField("energy_ev") and not resp.labels[0].stress_ev_per_angstrom3


def test_failed_structure_has_no_numbers_and_a_reason(served):
    si = bulk("Si", "diamond", a=5.43)
    resp, call = served.stub.Compute.with_call(request([cu(0), si]))
    assert resp.labels[0].HasField("energy_ev")
    assert not resp.labels[1].HasField("energy_ev") and not resp.labels[1].forces_ev_per_angstrom
    (f,) = failures_of(call)
    assert f["index"] == 1 and f["reason"] == "crashed"


def test_bad_requests_name_the_field(served):
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Compute(request([cu(0)], ["energy", "dipole"]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "properties[1]" in info.value.details()
    bad = request([cu(0)])
    del bad.structures[0].positions_angstrom[-1]
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Compute(bad)
    assert "structures[0].positions_angstrom" in info.value.details()


def test_idempotency_key_runs_once(served):
    req = request([cu(2)])
    md = idempotency_metadata()
    a = served.stub.Compute(req, metadata=md)
    b = served.stub.Compute(req, metadata=md)
    assert served.servicer.backend.calls == 1 and a == b
    served.stub.Compute(req, metadata=idempotency_metadata())
    served.stub.Compute(req)
    assert served.servicer.backend.calls == 3


def test_pool_eight_concurrent_requests_two_workers_one_killed(ray_session):
    """8 concurrent gRPC requests over a pool of 2 Ray workers; one worker is
    killed while the requests run; all 8 complete with correct labels."""
    served = Served(ReferenceServicer(SLOW, workers=2, worker_cpus=0.5))
    try:
        pool = served.servicer.pool
        assert len(pool) == 2 and pool.num_cpus == 0.5
        structures = [cu(i) for i in range(8)]

        def call(a):
            return served.stub.Compute(request([a]), metadata=idempotency_metadata())

        with ThreadPoolExecutor(8) as ex:
            futures = [ex.submit(call, a) for a in structures]
            time.sleep(1.0)  # both workers busy, others queued
            victim = pool.actors[0]
            ray_session.kill(victim)
            responses = [f.result(timeout=120) for f in futures]
        for a, resp in zip(structures, responses):
            lab = labels_from_proto(resp.labels[0], len(a))
            a = a.copy()
            a.calc = EMT()
            assert lab.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        assert victim not in pool.actors and len(pool) == 2  # replaced, never reused
    finally:
        served.stop()


def test_pool_spreads_work_over_workers(ray_session):
    from services.reference.pool import WorkerPool

    pool = WorkerPool(SLOW, workers=2, num_cpus=0.5)
    try:
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda a: pool.compute([a])[0], [cu(i) for i in range(4)]))
        assert all(o.ok for o in outs)
        assert len({o.info["worker_pid"] for o in outs}) == 2  # both workers took requests
    finally:
        pool.close()


def test_destination_appends_only_converged_labels_once(served, tmp_path):
    from services.proto.nnmd.v1 import common_pb2
    from services.store import Store

    url = str(tmp_path / "store")
    structures = [cu(3), bulk("Si", "diamond", a=5.43), cu(4)]
    req = request(structures, ["energy", "forces", "stress"])
    req.destination.url = url
    for step in range(3):
        req.provenance.append(common_pb2.Provenance(
            campaign="c1", chain="chain-0", step=step, source=common_pb2.SOURCE_KIND_HMC,
            model_version=2, accepted=step != 1))
    md = idempotency_metadata()
    resp, call = served.stub.Compute.with_call(req, metadata=md)
    assert list(resp.record_ids) == [0, 1]
    assert [f["index"] for f in failures_of(call)] == [1]
    again = served.stub.Compute(req, metadata=md)  # a retry: no second append
    assert list(again.record_ids) == [0, 1] and served.servicer.backend.calls == 1
    served.servicer.close()  # the servicer is the store's writer; release it to read
    records = list(Store(url, read_only=True).read())
    assert len(records) == 2
    for rec, a, step in zip(records, (structures[0], structures[2]), (0, 2)):
        p = rec.provenance
        assert (p.campaign, p.chain, p.step, p.source, p.model_version) == (
            "c1", "chain-0", step, "hmc", 2)
        assert p.reference_settings_hash == resp.reference_settings_hash
        a = a.copy()
        a.calc = EMT()
        assert rec.labels.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(rec.labels.forces, a.get_forces(), atol=1e-12)


def test_destination_needs_key_and_provenance(served, tmp_path):
    req = request([cu(0)])
    req.destination.url = str(tmp_path / "store")
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Compute(req, metadata=idempotency_metadata())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "provenance" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Compute(req)
    assert "idempotency key" in info.value.details()


def test_client_is_a_backend_over_the_service(served):
    from services.reference.client import ReferenceClient
    from services.reference.types import ReferenceBackend

    client = make_backend(f"service:localhost:{served.running.port}")
    try:
        assert isinstance(client, ReferenceClient) and isinstance(client, ReferenceBackend)
        structures = [cu(5), bulk("Si", "diamond", a=5.43)]
        ok, failed = client.compute(structures)
        a = structures[0].copy()
        a.calc = EMT()
        assert ok.ok and ok.energy == pytest.approx(a.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(ok.stress, a.get_stress(voigt=False), atol=1e-12)
        assert not failed.ok and failed.reason.value == "crashed"
    finally:
        client.close()
