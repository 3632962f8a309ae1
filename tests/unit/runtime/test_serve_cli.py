"""`nnmd serve store` as a real process: health, token, graceful exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.cli import main
from services.proto.nnmd.v1 import store_pb2, store_pb2_grpc
from services.runtime.channel import connect
from services.store.store import Store


def test_serve_store_process(tmp_path):
    url = str(tmp_path / "s")
    Store(url)
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "serve",
            "store",
            "--port",
            "0",
            "--token-file",
            str(token_file),
            "--store",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "NNMD_TOKEN"},
    )
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        address = line.rsplit(" ", 1)[1].strip()
        health = health_pb2_grpc.HealthStub(connect(address))
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        with pytest.raises(grpc.RpcError) as info:
            store_pb2_grpc.StoreStub(connect(address, token=None)).Info(
                store_pb2.StoreInfoRequest()
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = store_pb2_grpc.StoreStub(connect(address, token="file-token")).Info(
            store_pb2.StoreInfoRequest()
        )
        assert reply.url == url
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0
    assert "file-token" not in err  # never logged


def test_serve_refuses_without_token(monkeypatch, capsys):
    monkeypatch.delenv("NNMD_TOKEN", raising=False)
    assert main(["serve", "store", "--port", "0"]) == 2
    assert "NNMD_TOKEN" in capsys.readouterr().err
    assert main(["serve", "no-such-service"]) == 2
    assert "known: " in capsys.readouterr().err
