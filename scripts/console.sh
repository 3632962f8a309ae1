#!/usr/bin/env bash
# `make console`: a local coordinator with its web console, running the demo campaign
# (examples/campaigns/cu-emt.yaml). Prints the URL and the login token; Ctrl-C stops it.
#
#   NNMD_CONSOLE_PORT=8080      the console's port
#   NNMD_COORDINATOR_PORT=50051 the coordinator's gRPC port
#   NNMD_CONSOLE_DIR=nnmd-console  token file, store and uploads
#   NNMD_TOKEN=...              the token (default: a fresh random one)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${NNMD_CONSOLE_PORT:-8080}
GRPC=${NNMD_COORDINATOR_PORT:-50051}
DIR=${NNMD_CONSOLE_DIR:-nnmd-console}
NNMD=.venv/bin/nnmd
PY=.venv/bin/python

mkdir -p "$DIR"
TOKEN=${NNMD_TOKEN:-$($PY -c 'import secrets; print(secrets.token_urlsafe(24))')}
(umask 077 && printf '%s\n' "$TOKEN" > "$DIR/token")

$NNMD serve coordinator --port "$GRPC" --token-file "$DIR/token" --store "$DIR/store" \
    --upload-dir "$DIR/uploads" --web-port "$PORT" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT INT TERM

# wait for the console to answer (the coordinator starts first)
$PY - "$PORT" "$pid" <<'PYEOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(120):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the coordinator did not start (see the lines above)")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"the console did not answer on port {port} within 60 s")
PYEOF

NNMD_TOKEN=$TOKEN $NNMD campaign start examples/campaigns/cu-emt.yaml \
    --address "127.0.0.1:$GRPC" --store "$DIR/store" >/dev/null
cat <<MSG

  nnmd console:  http://127.0.0.1:$PORT/campaigns/cu-emt
  token:         $TOKEN     (also in $DIR/token)

  The demo campaign cu-emt runs on the coordinator at 127.0.0.1:$GRPC; start more from
  the console's "New campaign" page. Ctrl-C stops both.

MSG
wait $pid
