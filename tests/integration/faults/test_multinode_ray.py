"""A campaign on a real multi-node Ray cluster loses two nodes and no label (issue 18).

One machine, four Ray nodes, each its own `ray start` (tests/integration/faults/
ray_cluster.py): a head with no custom resources (where the driver attaches), two QE
nodes {qe: 1} and an MD node {md: 1}, each with its own raylet, object store and worker
processes. The campaign (tiny EMT Cu, re-training off) runs from a driver process of its
own (multinode_driver.py) with 2 reference workers that need {qe: 0.5} and 2 MD
executors that need {md: 0.5}, so Ray places them by those resources across the nodes:
the test checks where each one is from the processes it runs in (an MD executor's pid,
the process listening on a reference worker's port) against each node's process tree.

Mid-campaign:
1. the QE node of the first reference worker hangs (all its processes SIGSTOPped, as a
   machine that hangs or is cut off: its connections stay open and nothing answers on
   them, so a reference call in flight there would wait for its deadline): Ray declares
   the node dead and restarts its reference workers on the other QE node, the pool sees
   them serve elsewhere (RayReferencePool watch_s), sends their calls again and follows
   them to their new ports, and the campaign goes on on what is left;
2. the MD node is SIGKILLed (its `ray start`, raylet, agents and workers, all at once):
   no node has {md} any more, so the chains wait (their lost proposals are sent again
   once the executors are back); after a while an MD node joins again (`ray start
   --address` with the same resources), Ray restarts the executors there, and the
   campaign finishes.

Every chain has all its steps, every label is stored exactly once (the store's HMC
labels' (chain, step) keys are the chains' histories'), and `nnmd store check` is clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.integration.faults.ray_cluster import LocalRayCluster

ROOT = Path(__file__).resolve().parents[3]
STEPS, CHAINS = 10, 2
LOSE_QE_AT, KILL_MD_AT = 4, 11  # chain steps done (all chains together)
MD_OUTAGE_S = 5.0


@pytest.fixture
def cluster():
    c = LocalRayCluster()
    try:
        yield c
    finally:
        c.shutdown()


def _progress(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait(path: Path, driver: subprocess.Popen, what: str, cond, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        doc = _progress(path)
        if doc and cond(doc):
            return doc
        if driver.poll() is not None:
            raise AssertionError(f"the driver ended (rc {driver.returncode}) before {what}: "
                                 f"{doc.get('state')} {doc.get('message')} {doc.get('error')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {doc}")
        time.sleep(0.05)


def _node_of(cluster: LocalRayCluster, pid: int | None) -> str | None:
    if pid is None:
        return None
    for name in cluster.nodes:
        if pid in cluster.pids(name):
            return name
    return None


def _reference_nodes(cluster: LocalRayCluster, workers: list[dict]) -> list[str | None]:
    """The node of each reference worker: that of the process listening on its port."""
    return [_node_of(cluster, cluster.listening_pid(int(w["address"].rsplit(":", 1)[1])))
            for w in workers]


def _listener_report(cluster: LocalRayCluster, workers: list[dict]) -> list[str]:
    """For an assertion message: who listens on each reference worker's port, system-wide,
    and that process's ancestry (to tell a placement error from a process-tree miss)."""
    import psutil

    out = []
    for w in workers:
        port = int(w["address"].rsplit(":", 1)[1])
        pids = {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        chains = []
        for pid in pids:
            try:
                chain = [f"{p.pid}:{p.name()}" for p in [psutil.Process(pid),
                                                         *psutil.Process(pid).parents()]]
            except psutil.NoSuchProcess:
                chain = [f"{pid}:gone"]
            chains.append(" <- ".join(chain))
        out.append(f"port {port}: {chains or 'nobody listens'}")
    out.append(f"node tops: { {n: p.pid for n, p in cluster.nodes.items()} }")
    return out


def _wait_reference_nodes(cluster: LocalRayCluster, progress: Path, ok, timeout_s: float = 30.0):
    """The reference workers' nodes once ``ok(nodes)`` holds (or the last seen, after
    ``timeout_s``): a worker's port can be reported a moment before its process shows in a
    scan of the node's process tree, under load."""
    deadline = time.monotonic() + timeout_s
    while True:
        workers = _progress(progress)["reference_workers"]
        nodes = _reference_nodes(cluster, workers)
        if ok(nodes) or time.monotonic() > deadline:
            return nodes, workers
        time.sleep(0.1)


def _md_nodes(cluster: LocalRayCluster, workers: list[dict]) -> list[str | None]:
    """The node of each MD executor: that of its process (address NODE_IP/pidN)."""
    return [_node_of(cluster, int(w["address"].rsplit("/pid", 1)[1])) for w in workers]


@pytest.mark.timeout(600)
def test_campaign_survives_losing_ray_nodes(cluster, tiny_spec, tmp_path):
    t0 = time.monotonic()
    cluster.start("head", head=True, num_cpus=1)

    spec = {**tiny_spec, "executor": "ray", "steps": STEPS, "chains": CHAINS,
            "retrain_every": 0, "md_steps": 10,
            "reference": "ase:tests.unit.reference.slow_emt:make",
            "resources": {"reference": {"workers": 2, "num_cpus": 0.25,
                                        "resources": {"qe": 0.5}, "max_restarts": 3},
                          "md": {"workers": 2, "num_cpus": 0.25, "resources": {"md": 0.5},
                                 "max_restarts": 3}}}
    spec_path, progress = tmp_path / "spec.json", tmp_path / "progress.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **cluster.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.faults.multinode_driver",
             str(spec_path), str(progress)], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # the worker nodes join while the driver makes the bootstrap
        cluster.start_nodes({"qe-a": {"qe": 1}, "qe-b": {"qe": 1}, "md": {"md": 1}})
        t_cluster = time.monotonic() - t0
        raylets = {name: cluster.raylet(name).pid for name in cluster.nodes}
        assert len(set(raylets.values())) == 4, raylets  # a raylet (object store) each
        # -- placement: reference workers on the QE nodes, MD executors on the MD node
        doc = _wait(progress, driver, "the pools to start",
                    lambda d: d.get("steps", 0) >= 1 and len(d.get("md_executors", [])) == 2
                    and len(d.get("reference_workers", [])) == 2)
        ref_nodes, workers = _wait_reference_nodes(
            cluster, progress, lambda n: set(n) <= {"qe-a", "qe-b"})
        assert set(ref_nodes) <= {"qe-a", "qe-b"}, (ref_nodes, workers,
                                                    _listener_report(cluster, workers))
        assert _md_nodes(cluster, doc["md_executors"]) == ["md", "md"], doc["md_executors"]

        # -- 1. the QE node of the first reference worker hangs: the campaign goes on
        doc = _wait(progress, driver, f"{LOSE_QE_AT} steps",
                    lambda d: d["steps"] >= LOSE_QE_AT)
        lost_qe = ref_nodes[0]
        left_qe = "qe-b" if lost_qe == "qe-a" else "qe-a"
        assert raylets[lost_qe] in cluster.freeze(lost_qe)
        steps_at_qe_loss = doc["steps"]

        # -- 2. kill the MD node once the campaign went on without the QE node
        doc = _wait(progress, driver, f"{KILL_MD_AT} steps",
                    lambda d: d["steps"] >= KILL_MD_AT)
        assert doc["steps"] < CHAINS * STEPS, "the campaign ended before the MD node's loss"
        # the reference workers now all run on the QE node that is left
        nodes, workers = _wait_reference_nodes(cluster, progress,
                                               lambda n: n == [left_qe] * 2)
        assert nodes == [left_qe] * 2, (nodes, workers, _listener_report(cluster, workers))
        old_md = {w["address"] for w in doc["md_executors"]}
        killed = cluster.kill("md")
        assert raylets["md"] in killed and not cluster.processes("md")
        steps_at_md_kill = _progress(progress)["steps"]
        assert steps_at_md_kill < CHAINS * STEPS, "the campaign ended before the MD node's loss"
        time.sleep(MD_OUTAGE_S)  # no MD node: the chains wait
        steps_in_outage = _progress(progress)["steps"] - steps_at_md_kill
        # at most the steps whose proposal had come back before the kill finish
        assert steps_in_outage <= CHAINS, steps_in_outage
        assert driver.poll() is None, "the driver gave up without MD executors"
        cluster.start("md", num_cpus=1, resources={"md": 1})  # the node comes back

        rc = driver.wait(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    doc = _progress(progress)
    assert rc == 0, (doc.get("state"), doc.get("message"), doc.get("error"),
                     (tmp_path / "driver.log").read_text()[-4000:])
    summary = doc["summary"]
    assert doc["state"] == "finished", doc.get("message")
    assert summary["steps"] == {f"chain{c:03d}": STEPS for c in range(CHAINS)}
    assert summary["reference_failures"] == 0
    assert steps_at_qe_loss < KILL_MD_AT
    assert doc["reference_retries"] >= 1  # calls sent again, off the hung node
    # the MD executors were restarted (new processes) on the MD node that came back
    new_md = {w["address"] for w in doc["md_executors"]}
    assert not new_md & old_md, (old_md, new_md)
    assert all(w["calls"] > 0 for w in doc["md_executors"]), doc["md_executors"]
    assert sum(w["calls"] for w in doc["reference_workers"]) >= CHAINS * STEPS

    # -- every chain step once, every label once
    from orchestrator.cli import main as nnmd
    from services.store import Store

    store = Store(spec["store"], read_only=True)
    hist = {f"chain{c:03d}": (store.read_checkpoint("tiny", f"chain{c:03d}") or {})
            .get("history", []) for c in range(CHAINS)}
    for chain, rows in hist.items():
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), (chain, rows)
        assert all(r["status"] in ("accepted", "rejected") for r in rows), (chain, rows)
    a = store.read(campaign="tiny").arrays
    hmc = np.flatnonzero(a["source"] == "hmc")
    keys = [(str(a["chain"][k]), int(a["step"][k])) for k in hmc]
    assert len(keys) == len(set(keys)), "a label stored twice"
    assert sorted(keys) == sorted((c, r["step"]) for c, rows in hist.items() for r in rows)
    assert nnmd(["store", "check", spec["store"]]) == 0
    print(f"multi-node fault test: reference workers on {ref_nodes}, {lost_qe} hung; "
          f"cluster up in {t_cluster:.1f} s, "
          f"{time.monotonic() - t0:.1f} s in all; driver: bootstrap "
          f"{doc.get('bootstrap_s', 0):.1f} s, md retries {doc.get('md_retries')}, "
          f"reference retries {doc.get('reference_retries')}")
