"""A coordinator SIGKILLed while it runs two campaigns in one store comes back by itself.

`nnmd serve coordinator --store DIR` starts two campaigns (EMT, tiny) in one store (each
with its own writer lease), is SIGKILLed mid-run and started again: with no client call
both campaigns resume and finish, no label is lost or written twice (`nnmd store check`),
and a campaign a user stopped stays stopped (issue 18).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.client import Client
from services.store import Store
from tests.served import stop_served

ROOT = Path(__file__).resolve().parents[3]
STEPS = 8
TOKEN = "restart-test-token"


def _serve(store: Path, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NNMD_TOKEN", "RAY_ADDRESS", "NNMD_FAULT")}
    env["PYTHONPATH"] = str(ROOT)
    (tmp_path / "token").write_text(TOKEN + "\n")
    log = open(tmp_path / f"coordinator-{time.time_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "serve", "coordinator", "--port", "0",
         "--store", str(store), "--executor", "local", "--upload-dir", str(tmp_path / "up"),
         "--token-file", str(tmp_path / "token")],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    assert "listening on" in line, (tmp_path / log.name).read_text()[-3000:]
    return proc, line.rsplit(" ", 1)[1].strip()


def _labels(store: Path, campaign: str) -> list[tuple[str, int]]:
    try:
        a = Store(store, read_only=True).read(campaign=campaign).arrays
    except Exception:  # noqa: BLE001 - not created yet
        return []
    hmc = a["source"] == "hmc"
    return list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))


def _wait(pred, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def test_sigkilled_coordinator_resumes_both_campaigns(tmp_path, tiny_spec, capsys):
    store = tmp_path / "store"
    specs = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        specs[name] = {**tiny_spec, "name": name, "seed": seed, "steps": STEPS,
                       "store": str(store)}
    proc, address = _serve(store, tmp_path)
    try:
        with Client(address, token=TOKEN) as client:
            for spec in specs.values():
                client.start(spec)
            # both running and labelling (the bootstrap and first training are behind them)
            def labelling():
                for n in specs:  # a failed campaign fails the test now, not in 10 minutes
                    st = client.status(n)
                    assert st["state"] != "failed", (n, st["message"])
                return all(len(_labels(store, n)) >= 2 for n in specs)

            _wait(labelling, 600, "labels of both campaigns")
            st = {n: client.status(n) for n in specs}
            assert all(s["state"] == "running" for s in st.values()), st
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    before = {n: set(_labels(store, n)) for n in specs}
    assert all(len(v) < 2 * STEPS for v in before.values()), "finished before the kill"
    leases = Store(store, read_only=True).leases()
    assert set(leases) == set(specs) and all(v["stale"] for v in leases.values())

    proc, address = _serve(store, tmp_path)  # no client call: it resumes both by itself
    try:
        _wait(lambda: all(len(_labels(store, n)) >= 2 * STEPS for n in specs), 900,
              "both campaigns to finish after the restart")
        with Client(address, token=TOKEN) as client:
            st = _wait(lambda: (lambda s: s if all(v["state"] == "finished" for v in
                                                   s.values()) else None)(
                {n: client.status(n) for n in specs}), 120, "finished states")
        assert all([c["step"] for c in s["chains"]] == [STEPS, STEPS] for s in st.values())
    finally:
        stop_served(proc, check=False)
    for name in specs:
        labels = _labels(store, name)
        assert len(labels) == len(set(labels)) == 2 * STEPS  # EMT never fails: one a step
        assert before[name] <= set(labels)  # nothing durable lost
    capsys.readouterr()
    assert main(["store", "check", str(store)]) == 0, capsys.readouterr().out
    assert Store(store, read_only=True).leases() == {}


def test_resume_skips_finished_failed_and_user_stopped_campaigns(tmp_path, tiny_spec):
    """Which recorded campaigns a starting coordinator resumes (no campaign runs here)."""
    from orchestrator.coordinator import service as svc

    store = str(tmp_path / "store")
    s = Store(store)
    base = {"spec": tiny_spec, "store": store, "base_dir": None}
    s.put_document(svc.DOC_KIND, "running", base)
    s.put_document(svc.DOC_KIND, "stopped", {**base, "stop": {"by": "user"}})
    s.put_document(svc.DOC_KIND, "failed", {**base, "failed": {"error": "x"}})
    s.put_document(svc.DOC_KIND, "nospec", {"store": store})
    servicer = svc.CoordinatorServicer(store=store, executor="local")
    assert [n for n, _ in servicer._resumable()] == ["running"]

    async def stop_then_list():
        s2 = svc.CoordinatorServicer(store=store, executor="local")

        class _Ctx:
            def invocation_metadata(self):
                return ()

        from services.proto.nnmd.v1 import coordinator_pb2

        await s2.Stop(coordinator_pb2.StopRequest(campaign="running"), _Ctx())
        return s2._resumable()

    # a user's Stop (campaign not running here) is recorded: nothing left to resume
    with pytest.raises(Exception):  # noqa: B017 - NOT_FOUND: the store has no such campaign
        asyncio.run(stop_then_list())
    assert Store(store).read_document(svc.DOC_KIND, "running")["stop"]["by"] == "user"
    assert servicer._resumable() == []
