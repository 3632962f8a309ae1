#!/usr/bin/env bash
# Regenerates the Python gRPC stubs of proto/nnmd/v1 into services/proto/nnmd/v1
# (or into the directory given as $1; tests use that to check the committed
# stubs are current). Needs grpcio-tools (pinned in pyproject's dev extra).
#
# protoc writes imports as `from nnmd.v1 import ...`; we rewrite them to the
# package the stubs live in, `services.proto.nnmd.v1`, so no sys.path tricks
# are needed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/services/proto}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3

mkdir -p "$out/nnmd/v1"
"$python" -m grpc_tools.protoc \
  --proto_path="$root/proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/proto/nnmd/v1/*.proto

for f in "$out"/nnmd/v1/*_pb2.py "$out"/nnmd/v1/*_pb2.pyi "$out"/nnmd/v1/*_pb2_grpc.py; do
  sed -i -e 's/^from nnmd\.v1 import /from services.proto.nnmd.v1 import /' "$f"
done
for d in "$out" "$out/nnmd" "$out/nnmd/v1"; do
  [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
done
