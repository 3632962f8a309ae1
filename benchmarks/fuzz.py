"""Fuzz every gRPC method of every registered service with N requests and print a table.

    .venv/bin/python benchmarks/fuzz.py            # 10,000 requests (the issue's acceptance)
    .venv/bin/python benchmarks/fuzz.py -n 300     # the CI size

Runs tests/unit/runtime/test_fuzz_grpc.py with NNMD_FUZZ_EXAMPLES=N and prints, per
service: requests, status-code counts, crashes (UNKNOWN/INTERNAL/UNIMPLEMENTED), hung
calls (no status within the 10 s deadline) and whether the server still answered a
health check at the end. Exit status 0 only with 0 crashes and 0 hung calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--requests", type=int, default=10000, help="requests in total")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        report = Path(d) / "fuzz.json"
        env = {**os.environ, "NNMD_FUZZ_EXAMPLES": str(args.requests),
               "NNMD_FUZZ_REPORT": str(report)}
        t0 = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/unit/runtime/test_fuzz_grpc.py"], cwd=ROOT, env=env,
            capture_output=True, text=True)
        wall = time.time() - t0
        if not report.exists():
            print(proc.stdout[-4000:], proc.stderr[-4000:])
            return 1
        data = json.loads(report.read_text())
    stats, health = data["stats"], data["health"]
    codes = sorted({c for s in stats.values() for c in s})
    bad = {"UNKNOWN", "INTERNAL", "UNIMPLEMENTED"}
    head = ["service", "requests", *codes, "crashes", "hung", "health after"]
    rows = []
    for name in sorted(stats):
        s = stats[name]
        hung = sum(1 for h in data["hung"] if h.lower().startswith(f"nnmd.v1.{name}/"))
        rows.append([name, sum(s.values()), *(s.get(c, 0) for c in codes),
                     sum(s.get(c, 0) for c in bad), hung,
                     "SERVING" if health.get(name) else "NOT SERVING"])
    total = ["total", sum(r[1] for r in rows),
             *(sum(r[2 + k] for r in rows) for k in range(len(codes))),
             len(data["crashes"]), len(data["hung"]), ""]
    rows.append(total)
    print(f"nnmd gRPC fuzzing: {args.requests} requests requested, {total[1]} sent, "
          f"{wall:.0f} s, {platform.node()} ({os.cpu_count()} CPUs), "
          f"{time.strftime('%Y-%m-%d')}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    for name, why in data["skipped"].items():
        print(f"not fuzzed: {name}: {why}")
    for c in data["crashes"][:20]:
        print("crash:", c)
    for h in data["hung"][:20]:
        print("hung:", h)
    print(f"pytest: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.returncode}")
    return 0 if proc.returncode == 0 and not data["crashes"] and not data["hung"] else 1


if __name__ == "__main__":
    sys.exit(main())
