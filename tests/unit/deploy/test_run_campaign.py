"""examples/cluster/run_campaign.py: the spec bundle, and the detached, named
actor that owns a campaign's process and outlives the driver that started it.

The campaign command here is a small script standing in for `nnmd campaign
run` (which the coordinator issue delivers); everything else is real: a Ray
cluster (the session's), drivers in their own processes that join it and exit,
the actor, its child joining the same cluster, SIGTERM on --stop.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "cluster" / "run_campaign.py"


def load_module():
    spec = importlib.util.spec_from_file_location("run_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_spec(folder: Path, name: str, extra: dict | None = None) -> Path:
    (folder / "inputs").mkdir(parents=True, exist_ok=True)
    (folder / "inputs" / "si.pwi").write_text("&control\n/\n")
    (folder / "cu.xyz").write_text("1\n\nCu 0 0 0\n")
    spec = {
        "name": name,
        "reference": "qe:inputs/si.pwi",
        "structure": "cu.xyz",
        "chains": 2,
        "temperature": 800.0,
        "ensemble": "nvt",
        "store": "s3://bucket/prefix",
        "resources": {"reference": {"num_cpus": 1}, "trainer": {"num_gpus": 0}},
    }
    spec.update(extra or {})
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_bundle_takes_the_spec_and_the_files_it_names(tmp_path):
    rc = load_module()
    name, files = rc.bundle_spec(write_spec(tmp_path, "si-800K"))
    assert name == "si-800K"
    assert set(files) == {"spec.yaml", "inputs/si.pwi", "cu.xyz"}
    assert files["inputs/si.pwi"] == b"&control\n/\n"


def test_bundle_rejects_a_bad_name_naming_the_field(tmp_path):
    rc = load_module()
    with pytest.raises(ValueError, match="SPEC field 'name'"):
        rc.bundle_spec(write_spec(tmp_path, "two words"))
    with pytest.raises(FileNotFoundError, match="SPEC: no file"):
        rc.bundle_spec(tmp_path / "missing.yaml")


def test_bundle_leaves_paths_outside_the_spec_folder_alone(tmp_path):
    rc = load_module()
    (tmp_path / "secret.txt").write_text("x")
    inner = tmp_path / "spec"
    path = write_spec(inner, "c1", {"structure": "../secret.txt", "model": str(inner / "cu.xyz")})
    _, files = rc.bundle_spec(path)
    assert "../secret.txt" not in files and not any(k.startswith("/") for k in files)


CHILD = textwrap.dedent(
    """
    # Stands in for `nnmd campaign run`: joins the cluster through RAY_ADDRESS,
    # runs one task there, then works until its marker file says stop or it is signalled.
    import os, sys, time, ray
    ray.init(log_to_driver=False)
    n = ray.get(ray.remote(lambda: 21 * 2).remote())
    print("joined", os.environ["RAY_ADDRESS"], "task says", n, "spec", sys.argv[1], flush=True)
    while not os.path.exists("finish"):
        time.sleep(0.2)
    print("finished", flush=True)
    """
)


def run_driver(gcs: str, root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--address", gcs, "--root", str(root), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def wait_for(predicate, timeout: float = 90.0, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_campaign_actor_outlives_its_driver_attaches_and_stops(ray_session, tmp_path):
    ray = ray_session
    gcs = ray.get_runtime_context().gcs_address
    name = f"t-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "spec"
    spec = write_spec(folder, name, {"entry": "child.py"})
    (folder / "child.py").write_text(CHILD)
    root = tmp_path / "campaigns"
    command = f"{sys.executable} child.py {{spec}}"

    first = run_driver(gcs, root, str(spec), "--command", command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"campaign '{name}' started (detached)" in first.stdout

    # The driver process has exited; the actor and its child live on.
    actor = ray.get_actor(f"nnmd-campaign-{name}", namespace="nnmd")
    log = root / name / "campaign.log"
    wait_for(lambda: log.exists() and "task says 42" in log.read_text(), what="child joining Ray")
    assert "spec spec.yaml" in log.read_text()
    assert (root / name / "inputs" / "si.pwi").is_file()  # the bundle travelled
    assert ray.get(actor.status.remote())["running"]
    assert ray.get(actor.status.remote(lines=0))["log_tail"] == ""  # what --list asks for

    # The same spec again attaches; it does not start a second copy.
    again = run_driver(gcs, root, str(spec), "--command", command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already exists on this cluster: attached" in again.stdout
    assert log.read_text().count("=== ") == 1

    # The campaign ends on its own: status reports exit code 0.
    (root / name / "finish").write_text("")
    status = wait_for(lambda: (s := ray.get(actor.status.remote())) and not s["running"] and s,
                      what="child to finish")
    assert status["exit_code"] == 0 and "finished" in status["log_tail"]

    shown = run_driver(gcs, root, "--status", name)
    assert shown.returncode == 0 and "finished, exit code 0" in shown.stdout, shown.stderr[-2000:]

    stopped = run_driver(gcs, root, "--stop", name)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    with pytest.raises(ValueError):
        ray.get_actor(f"nnmd-campaign-{name}", namespace="nnmd")


def test_stop_signals_a_running_campaign_and_unknown_names_are_errors(ray_session, tmp_path):
    ray = ray_session
    gcs = ray.get_runtime_context().gcs_address
    name = f"t-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "spec"
    spec = write_spec(folder, name)
    root = tmp_path / "campaigns"
    started = run_driver(gcs, root, str(spec), "--command",
                         f"{sys.executable} -c 'import time; time.sleep(600)'")
    assert started.returncode == 0, started.stderr[-3000:]
    actor = ray.get_actor(f"nnmd-campaign-{name}", namespace="nnmd")
    pid = ray.get(actor.status.remote())["pid"]
    assert ray.get(actor.status.remote())["running"]

    stopped = run_driver(gcs, root, "--stop", name, "--grace", "10")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "exit code -15" in stopped.stdout  # ended by SIGTERM, not left behind
    assert not Path(f"/proc/{pid}").exists()
    assert (root / name / "exit_code").read_text().strip() == "-15"

    unknown = run_driver(gcs, root, "--status", "no-such-campaign")
    assert unknown.returncode == 2 and "no campaign 'no-such-campaign'" in unknown.stderr


def test_a_crashed_actor_is_restarted_without_leaving_its_old_child(ray_session, tmp_path):
    import os
    import signal

    ray = ray_session
    gcs = ray.get_runtime_context().gcs_address
    name = f"t-{uuid.uuid4().hex[:8]}"
    spec = write_spec(tmp_path / "spec", name)
    root = tmp_path / "campaigns"
    started = run_driver(gcs, root, str(spec), "--command",
                         f"{sys.executable} -c 'import time; time.sleep(600)'")
    assert started.returncode == 0, started.stderr[-3000:]
    actor = ray.get_actor(f"nnmd-campaign-{name}", namespace="nnmd")
    before = ray.get(actor.status.remote())

    os.kill(before["actor_pid"], signal.SIGKILL)  # the actor's process dies, as on a crash
    wait_for(lambda: not Path(f"/proc/{before['pid']}").exists(), timeout=30,
             what="the old child to die with its actor")

    def restarted():
        try:
            s = ray.get(actor.status.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None
        return s if s["actor_pid"] != before["actor_pid"] and s["running"] else None

    after = wait_for(restarted, what="Ray to restart the campaign actor")
    assert after["pid"] != before["pid"]
    assert (root / name / "campaign.log").read_text().count("=== ") == 2

    assert run_driver(gcs, root, "--stop", name, "--grace", "10").returncode == 0
    assert not Path(f"/proc/{after['pid']}").exists()
