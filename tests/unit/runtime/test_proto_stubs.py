"""The committed gRPC stubs are exactly what grpcio-tools makes from proto/."""

from __future__ import annotations

import filecmp
import re
import subprocess
import sys
from pathlib import Path

import google.protobuf
import pytest

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "services" / "proto" / "nnmd" / "v1"


def test_stubs_match_protos(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = tmp_path / "nnmd" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    committed = sorted(p.name for p in COMMITTED.iterdir() if p.suffix in (".py", ".pyi"))
    assert names == committed, "stub file set differs: run scripts/gen_proto.sh"
    _, mismatch, errors = filecmp.cmpfiles(fresh, COMMITTED, names, shallow=False)
    assert not mismatch and not errors, (
        f"stale stubs {mismatch + errors}: run scripts/gen_proto.sh and commit"
    )


def test_runtime_not_older_than_generator():
    text = (COMMITTED / "common_pb2.py").read_text()
    gen = tuple(
        int(x) for x in re.search(r"Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", text).groups()
    )
    runtime = tuple(int(x) for x in google.protobuf.__version__.split(".")[:3])
    assert runtime >= gen
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"protobuf>=([\d.]+)"', pyproject).group(1)
    assert tuple(int(x) for x in floor.split(".")) >= gen, "raise pyproject's protobuf floor"


def test_stubs_import_as_package():
    from services.proto.nnmd.v1 import (
        common_pb2,
        coordinator_pb2_grpc,
        md_pb2_grpc,
        reference_pb2_grpc,
        trainer_pb2_grpc,
    )

    for mod, service in [
        (reference_pb2_grpc, "Reference"),
        (trainer_pb2_grpc, "Trainer"),
        (md_pb2_grpc, "MD"),
        (coordinator_pb2_grpc, "Coordinator"),
    ]:
        assert hasattr(mod, f"{service}Servicer") and hasattr(mod, f"{service}Stub")
    s = common_pb2.Structure(numbers=[14], positions_angstrom=[0.0, 0.0, 0.0])
    assert common_pb2.Structure.FromString(s.SerializeToString()) == s
