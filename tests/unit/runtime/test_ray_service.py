"""A service served inside Ray actors; a pool that follows restarts and drops dead actors."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.proto.nnmd.v1 import store_pb2, store_pb2_grpc
from services.runtime.channel import connect
from services.store.store import Store

TOKEN = "ray-test-token"


def _info(channel):
    return store_pb2_grpc.StoreStub(channel).Info(store_pb2.StoreInfoRequest(), timeout=10)


def _wait_until_down(address, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    channel = connect(address, token=TOKEN, retry=None)
    while time.monotonic() < deadline:
        try:
            _info(channel)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return
        time.sleep(0.05)
    raise AssertionError(f"{address} still answers after the kill")


def test_service_in_actor_and_pool(ray_session, tmp_path):
    ray = ray_session
    from services.runtime.ray_service import EndpointPool, NoLiveEndpoints, start_service_actor

    url = str(tmp_path / "s")
    with Store(url).writer() as w:
        w.publish_model(b"model", {})
    actors = []
    try:
        for _ in range(2):
            actor, address = start_service_actor(
                "store", {"store_url": url}, token=TOKEN, num_cpus=0, max_restarts=1
            )
            actors.append(actor)
            health = health_pb2_grpc.HealthStub(connect(address))
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status
                == health_pb2.HealthCheckResponse.SERVING
            )
            with pytest.raises(grpc.RpcError) as info:
                _info(connect(address, token=None, retry=None))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _info(connect(address, token=TOKEN)).latest_model_version == 1

        pool = EndpointPool(actors, token=TOKEN)
        assert len(set(pool.addresses)) == 2
        assert all(pool.call(_info).url == url for _ in range(4))

        # a crash: Ray restarts the actor (max_restarts=1), the pool finds its new port
        old_address = pool.addresses[0]
        ray.kill(actors[0], no_restart=False)
        _wait_until_down(old_address)
        assert all(pool.call(_info).latest_model_version == 1 for _ in range(4))
        current = ray.get([a.address.remote() for a in actors], timeout=60)
        assert len(pool) == 2 and sorted(pool.addresses) == sorted(current)

        # gone for good: dropped, never handed out again
        # ray.kill returns before the process is gone: wait until its server stops answering,
        # or the pool may (rightly) still be served by it
        addr1 = pool.addresses[1]
        ray.kill(actors[1], no_restart=True)
        _wait_until_down(addr1)
        assert all(pool.call(_info).url == url for _ in range(4))
        assert len(pool) == 1
        addr0 = pool.addresses[0]
        ray.kill(actors[0], no_restart=True)
        _wait_until_down(addr0)
        with pytest.raises(NoLiveEndpoints):
            for _ in range(3):
                pool.call(_info)
        assert len(pool) == 0
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
