"""Bearer-token auth and TLS on every registered service and every one of its methods.

No token or a wrong one -> UNAUTHENTICATED; the right one gets past auth (any other
status); health stays open without a token (auth.OPEN_METHOD_PREFIXES, for probes).
The token never appears in the logs (in-process at DEBUG, and the stderr/stdout of
`nnmd serve` subprocesses). TLS: a self-signed certificate made here; a TLS client
gets through, a plaintext client against the TLS server gets UNAVAILABLE.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_fuzz_grpc import METHODS, Served, World, call

from services.proto.nnmd.v1 import store_pb2, store_pb2_grpc
from services.runtime.channel import connect
from services.runtime.server import ServerConfig

TOKEN = "auth-secret-Qx93LmZ0p"
ROOT = Path(__file__).resolve().parents[3]


def _ids(m):
    return f"{m[0]}:{m[2].name}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("auth"), token=TOKEN)  # the fuzz test's services
    yield world
    for s in world.servers.values():
        s.stop()


def _empty(method) -> bytes:
    return b""  # an empty message of any type: auth is decided before the servicer runs


@pytest.mark.parametrize("target", METHODS, ids=_ids)
def test_every_method_needs_the_token(servers, target, caplog):
    name, service, method = target
    if name not in servers.servers:
        pytest.skip(f"{name} cannot be served here: {servers.failed.get(name)}")
    served = servers.servers[name]
    caplog.set_level(logging.DEBUG)
    code, err = call(served, service, method, _empty(method), metadata=())
    assert code == grpc.StatusCode.UNAUTHENTICATED, code
    assert "missing" in err.details()
    for wrong in ("Bearer wrong", f"Bearer {TOKEN}x", TOKEN, f"bearer {TOKEN}", "Bearer "):
        code, err = call(served, service, method, _empty(method),
                         metadata=(("authorization", wrong),))
        assert code == grpc.StatusCode.UNAUTHENTICATED, (wrong, code)
        assert TOKEN not in (err.details() or "")
    code, err = call(served, service, method, _empty(method),
                     metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert code != grpc.StatusCode.UNAUTHENTICATED, err and err.details()
    assert TOKEN not in caplog.text
    # health stays open without a token, per service name and overall
    health = health_pb2_grpc.HealthStub(served.channel)
    for svc in ("", service):
        r = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("service", ["store", "reference", "md", "trainer"])
def test_token_not_in_serve_process_output(tmp_path, service):
    """`nnmd serve SERVICE --token-file F`: the token is in no line it writes."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    store = tmp_path / "store"
    extra = ["--store", str(store)] if service == "store" else []
    env = {k: v for k, v in os.environ.items() if k != "NNMD_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    if service == "store":
        from services.store.store import Store

        Store(str(store))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", service, "--port", "0",
         "--token-file", str(token_file), *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read() if proc.poll() is not None else line
        channel = grpc.insecure_channel(line.strip().rsplit(" ", 1)[-1])
        methods = [m for m in METHODS if m[0] == service]
        for _, full, method in methods:
            for md in ((), (("authorization", "Bearer nope"),),
                       (("authorization", f"Bearer {TOKEN}"),)):
                path = f"/{full}/{method.name}"
                try:
                    if method.server_streaming:
                        for _ in channel.unary_stream(path)(b"", timeout=10, metadata=md):
                            break
                    else:
                        channel.unary_unary(path)(b"", timeout=10, metadata=md)
                except grpc.RpcError:
                    pass
        channel.close()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "serving" in err  # the server's log did reach stderr
    assert TOKEN not in line + out and TOKEN not in err


def _self_signed(tmp_path, name="localhost"):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_with_a_self_signed_certificate(tmp_path):
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path, "nnmd-test.local")
    from services.store.store import Store

    url = str(tmp_path / "store")
    Store(url)
    served = Served("store", {"store_url": url},
                    ServerConfig(token=TOKEN, tls_cert=cert, tls_key=key))
    try:
        port = served.running.port
        channel = connect(f"127.0.0.1:{port}", token=TOKEN, tls=True, tls_ca=cert,
                          tls_server_name="nnmd-test.local", timeout_s=10)
        info = store_pb2_grpc.StoreStub(channel).Info(store_pb2.StoreInfoRequest())
        assert info.url == url
        channel.close()
        plain = connect(f"127.0.0.1:{port}", token=TOKEN, timeout_s=5, retry=None)
        with pytest.raises(grpc.RpcError) as err:
            store_pb2_grpc.StoreStub(plain).Info(store_pb2.StoreInfoRequest())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
        # TLS, but the wrong token: still UNAUTHENTICATED
        bad = connect(f"127.0.0.1:{port}", token="nope", tls_ca=cert,
                      tls_server_name="nnmd-test.local", timeout_s=10)
        with pytest.raises(grpc.RpcError) as err:
            store_pb2_grpc.StoreStub(bad).Info(store_pb2.StoreInfoRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad.close()
    finally:
        served.stop()
