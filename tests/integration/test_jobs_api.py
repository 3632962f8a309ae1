"""The Jobs API path of issue 10: `ray start --head` on this machine, then
`nnmd campaign run SPEC` submitted as a Ray job with --working-dir, waited
for, and its labels found in the store.

The job's `nnmd campaign run` joins the head through RAY_ADDRESS (set by the Jobs API),
so the campaign's reference runs in Ray actors serving it over gRPC on that head.

The head is isolated so that it cannot disturb other Ray instances on a shared
machine: its own temp dir (so `ray.init()` elsewhere does not find it through
/tmp/ray/ray_current_cluster), its own free ports, Ray token auth off, and a
teardown that ends only the processes of this head, by pid (never `ray stop`,
which ends every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster"
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _processes_of(temp_dir: str):
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _end_head(temp_dir: str) -> None:
    import psutil

    procs = _processes_of(temp_dir)
    family = {p.pid: p for p in procs}
    for p in procs:
        try:
            for child in p.children(recursive=True):
                family[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    for p in family.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(family.values()), timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def ray_head():
    # Short path: Ray's Unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="nnmd-rh-", dir="/tmp")
    gcs, dashboard, agent, client, metrics = _free_ports(5)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")  # jobs find `nnmd`
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2",
           f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
           "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield {"dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        _end_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_emt_campaign_through_ray_job_submit(ray_head, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from services.store import Store

    name = f"jobs-{uuid.uuid4().hex[:6]}"
    store_url = str(tmp_path / "store")
    workdir = tmp_path / "job"
    workdir.mkdir()
    spec = yaml.safe_load((EXAMPLE / "campaign.yaml").read_text())
    spec.update(name=name, chains=2, steps=3, store=store_url, bootstrap_steps=5,
                bootstrap_dt=2.0, md_steps=5, md_steps_min=2, md_steps_max=20, dt=2.0,
                retrain_every=4, retrain_epochs=5,
                train={"descriptor": {"n_radial": 6, "n_angular": 3, "r_radial": 4.0,
                                      "r_angular": 3.5},
                       "hidden": [8], "max_epochs": 15, "warmup_epochs": 3})
    (workdir / "campaign.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(EXAMPLE / spec["structure"], workdir / spec["structure"])

    # What a user types: ray job submit --working-dir . -- nnmd campaign run campaign.yaml
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"],
         "--working-dir", str(workdir), "--no-wait", "--", "nnmd", "campaign", "run",
         "campaign.yaml"],
        env=ray_head["env"], capture_output=True, text=True, timeout=180,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    job_id = next(word.strip("'\"") for word in submit.stdout.split()
                  if word.strip("'\"").startswith("raysubmit_"))

    client = JobSubmissionClient(ray_head["dashboard"])
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}

    def hmc_labels() -> int:
        try:
            a = Store(store_url, read_only=True).read(campaign=name).arrays
        except Exception:  # the store does not exist before the first label
            return 0
        return int((a["source"] == "hmc").sum())

    deadline = time.monotonic() + 900
    status = client.get_job_status(job_id)
    while status not in terminal and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if status not in terminal:
        client.stop_job(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}: {logs[-4000:]}"
    assert "Ray worker(s) serving emt" in logs  # the reference ran in Ray actors
    assert '"executor": "ray"' in logs

    batch = Store(store_url, read_only=True).read(campaign=name)
    assert set(batch.arrays["campaign"]) == {name}
    hmc = batch.arrays["source"] == "hmc"
    assert hmc_labels() == 2 * 3  # EMT never fails: a label per chain step
    keys = list(zip(batch.arrays["chain"][hmc].tolist(), batch.arrays["step"][hmc].tolist()))
    assert sorted(keys) == [(f"chain00{c}", s) for c in range(2) for s in (1, 2, 3)]
