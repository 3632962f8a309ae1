"""The service runtime: health, auth, typed errors, limits, deadlines, retries, idempotency, TLS, shutdown."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.proto.nnmd.v1 import store_pb2, store_pb2_grpc
from services.runtime.channel import RetryPolicy, connect, connect_aio, idempotency_metadata
from services.runtime.errors import InvalidArgument, error_detail
from services.runtime.server import IdempotencyCache, ServerConfig, start_server, start_service
from services.store.store import Store

TOKEN = "test-token-123"


class ToyStore(store_pb2_grpc.StoreServicer):
    """A test double of the Store service: counts calls, can sleep, can fail with a typed error."""

    def __init__(self) -> None:
        self.calls = 0
        self.cache = IdempotencyCache()

    async def Info(self, request, context):
        async def work():
            self.calls += 1
            if request.store.url.startswith("sleep:"):
                await asyncio.sleep(float(request.store.url[6:]))
            if request.store.url == "bad":
                raise InvalidArgument("store.url", "'bad' is not a store", "give a folder")
            return store_pb2.StoreInfo(url=request.store.url, structures=self.calls)

        return await self.cache.run(context, work)


class Served:
    """A server on a private event loop in a thread, so sync clients can call it from the test."""

    def __init__(
        self, config: ServerConfig, servicer=None, service: str | None = None, options=None
    ):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servicer = servicer or ToyStore()
        if service:
            coro = start_service(service, options or {}, config)
        else:
            coro = start_server(
                [(self.servicer, store_pb2_grpc.add_StoreServicer_to_server)],
                ("nnmd.v1.Store",),
                config,
            )
        self.running = self.run(coro)
        self.address = f"localhost:{self.running.port}"

    def run(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace=0.5):
        self.run(self.running.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture
def served():
    s = Served(ServerConfig(token=TOKEN))
    yield s
    s.stop()


def test_health_is_open_and_serving(served):
    stub = health_pb2_grpc.HealthStub(connect(served.address, token=None))
    for name in ("", "nnmd.v1.Store"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_token_required(served, monkeypatch):
    monkeypatch.delenv("NNMD_TOKEN", raising=False)
    for token in (None, "wrong"):
        stub = store_pb2_grpc.StoreStub(connect(served.address, token=token))
        with pytest.raises(grpc.RpcError) as info:
            stub.Info(store_pb2.StoreInfoRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in info.value.details()
    assert served.servicer.calls == 0
    ok = store_pb2_grpc.StoreStub(connect(served.address, token=TOKEN)).Info(
        store_pb2.StoreInfoRequest()
    )
    assert ok.structures == 1
    monkeypatch.setenv("NNMD_TOKEN", TOKEN)  # the client reads it from the environment too
    assert (
        store_pb2_grpc.StoreStub(connect(served.address))
        .Info(store_pb2.StoreInfoRequest())
        .structures
        == 2
    )


def test_typed_error_becomes_invalid_argument_with_detail(served):
    stub = store_pb2_grpc.StoreStub(connect(served.address, token=TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        stub.Info(store_pb2.StoreInfoRequest(store={"url": "bad"}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(info.value)
    assert detail.field == "store.url" and detail.hint == "give a folder"


def test_deadline_and_message_limit():
    s = Served(ServerConfig(token=TOKEN, max_message_bytes=4096))
    try:
        stub = store_pb2_grpc.StoreStub(connect(s.address, token=TOKEN, timeout_s=0.2))
        with pytest.raises(grpc.RpcError) as info:
            stub.Info(store_pb2.StoreInfoRequest(store={"url": "sleep:2"}))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as info:
            stub.Info(store_pb2.StoreInfoRequest(store={"url": "x" * 10000}), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        s.stop()


def test_reflection_lists_services(served):
    stub = reflection_pb2_grpc.ServerReflectionStub(connect(served.address, token=TOKEN))
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"nnmd.v1.Store", "grpc.health.v1.Health"} <= names


def test_idempotency_key_runs_once(served):
    stub = store_pb2_grpc.StoreStub(connect(served.address, token=TOKEN))
    md = idempotency_metadata()
    first = stub.Info(store_pb2.StoreInfoRequest(store={"url": "sleep:0.2"}), metadata=md)
    again = stub.Info(store_pb2.StoreInfoRequest(store={"url": "sleep:0.2"}), metadata=md)
    assert first == again and served.servicer.calls == 1
    stub.Info(store_pb2.StoreInfoRequest(), metadata=idempotency_metadata())
    assert served.servicer.calls == 2


def test_concurrent_retries_with_one_key_share_the_run(served):
    async def go():
        stub = store_pb2_grpc.StoreStub(connect_aio(served.address, token=TOKEN))
        md = idempotency_metadata("same-key")
        req = store_pb2.StoreInfoRequest(store={"url": "sleep:0.3"})
        return await asyncio.gather(*(stub.Info(req, metadata=md) for _ in range(3)))

    replies = asyncio.run(go())
    assert served.servicer.calls == 1 and all(r == replies[0] for r in replies)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retries_on_unavailable_until_the_server_is_up():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # without retries a call to a server that is not up yet fails at once
    with pytest.raises(grpc.RpcError) as info:
        store_pb2_grpc.StoreStub(connect(address, token=TOKEN, retry=None)).Info(
            store_pb2.StoreInfoRequest()
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    result = {}

    def call():
        stub = store_pb2_grpc.StoreStub(
            connect(
                address,
                token=TOKEN,
                retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.5, max_backoff_s=2),
            )
        )
        result["reply"] = stub.Info(store_pb2.StoreInfoRequest(), timeout=20)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    s = Served(ServerConfig(token=TOKEN, port=port))
    t.join(30)
    s.stop()
    assert result["reply"].structures == 1


def test_graceful_shutdown_finishes_running_calls(served):
    stub = store_pb2_grpc.StoreStub(connect(served.address, token=TOKEN))
    future = stub.Info.future(store_pb2.StoreInfoRequest(store={"url": "sleep:0.5"}))
    time.sleep(0.1)
    served.run(served.running.stop(3.0))
    assert future.result().structures == 1  # the in-flight call completed
    with pytest.raises(grpc.RpcError):
        stub.Info(store_pb2.StoreInfoRequest(), timeout=1)


def test_config_validation():
    with pytest.raises(ValueError, match="NNMD_TOKEN"):
        ServerConfig()
    with pytest.raises(ValueError, match="tls"):
        ServerConfig(token="t", tls_cert="a.pem")
    assert "t0k" not in repr(ServerConfig(token="t0k"))


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    s = Served(ServerConfig(token=TOKEN, tls_cert=str(cert), tls_key=str(key)))
    try:
        stub = store_pb2_grpc.StoreStub(connect(s.address, token=TOKEN, tls_ca=str(cert)))
        assert stub.Info(store_pb2.StoreInfoRequest()).structures == 1
        plain = store_pb2_grpc.StoreStub(connect(s.address, token=TOKEN, retry=None))
        with pytest.raises(grpc.RpcError):
            plain.Info(store_pb2.StoreInfoRequest(), timeout=2)
    finally:
        s.stop()


def test_real_store_service(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    s = Served(ServerConfig(token=TOKEN), service="store", options={"store_url": url})
    try:
        stub = store_pb2_grpc.StoreStub(connect(s.address, token=TOKEN))
        info = stub.Info(store_pb2.StoreInfoRequest())
        assert info.url == url and info.structures == 0
        with pytest.raises(grpc.RpcError) as err:
            stub.Info(store_pb2.StoreInfoRequest(store={"url": str(tmp_path / "none")}))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        s.stop()
