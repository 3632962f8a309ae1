"""A real multi-node Ray cluster on one machine, for the fault suite (issue 18).

``LocalRayCluster`` starts a head (``ray start --head``) and worker nodes (``ray start
--address``), each its own raylet (with its own object store), agents and worker
processes, as the nodes of a cluster are (all on this machine's own address: Ray gives
a node the host's address even when told 127.0.0.1). Each node is started with
``--block``, so the ``ray start`` process stays the parent of the node's raylet, whose
children are the node's workers: the node's processes are exactly that tree.
``kill(node)`` ends the whole tree (SIGSTOP, then SIGKILL: the node vanishes at once,
nothing of it reports its end, its connections are closed by the kernel);
``freeze(node)`` only stops it (SIGSTOP: a machine that hangs or is cut off, whose
connections stay open and silent).

The cluster is this test's own: its own GCS port, its own temp dir (under /tmp, short,
for Ray's socket paths), its own ports and its own token (RAY_AUTH_MODE=token, for
its nodes and its driver: ``env``); ``shutdown()`` kills exactly its processes
(the trees it started, and any process whose command line names its temp dir), never
``ray stop`` (which would stop every Ray on the machine, the test session's too).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's, beside its python
if not os.path.exists(RAY):
    RAY = shutil.which("ray") or RAY
ROOT = Path(__file__).resolve().parents[3]  # on the workers' path: the tests' helpers
# The GCS declares a node dead after ~1.5 s without an answer (defaults: ~15-30 s), so a
# killed node's actors are restarted elsewhere, or wait for their resources, promptly.
FAST_FAILURE = {"RAY_health_check_initial_delay_ms": "1000",
                "RAY_health_check_period_ms": "500",
                "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, object_store_bytes: int = 80 * 1024 * 1024) -> None:
        self.root = tempfile.mkdtemp(prefix="nnmdray-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._store = int(object_store_bytes)
        self.nodes: dict[str, subprocess.Popen] = {}
        # Token authentication with a token of this cluster's own, explicitly: Ray turns
        # it on by itself for a head when ~/.ray/auth_token exists (a local ray.init() of
        # the test session writes one), but not for the nodes that join. The driver needs
        # these variables too (`env`).
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_ADDRESS": self.address, "RAY_USAGE_STATS_ENABLED": "0"}
        self._started: list[subprocess.Popen] = []
        self._logs: dict[str, tuple[Path, list[str], str]] = {}  # log, command, temp dir
        self._gen = 0

    # ----------------------------------------------------------------- nodes
    def _ports(self) -> list[str]:
        return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}"]

    def start(self, name: str, *, num_cpus: float = 1, resources: dict | None = None,
              head: bool = False, timeout_s: float = 120.0,
              attempts: int = 2) -> subprocess.Popen:
        """Starts node `name` and waits until it is up (`wait_up`). `ray start` gives a
        node 30 s to register with the GCS: on a loaded machine that can run out, so a
        node that did not come up is started afresh once more (`attempts`)."""
        for attempt in range(1, attempts + 1):
            proc = self.launch(name, num_cpus=num_cpus, resources=resources, head=head)
            try:
                self.wait_up(name, timeout_s)
                return proc
            except RuntimeError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def start_nodes(self, nodes: dict[str, dict], num_cpus: float = 1) -> None:
        """Starts worker nodes {name: resources} together, and waits until all are up;
        one that did not come up is started afresh, alone (`start`)."""
        for name, res in nodes.items():
            self.launch(name, num_cpus=num_cpus, resources=res)
        for name, res in nodes.items():
            try:
                self.wait_up(name)
            except RuntimeError:
                self.start(name, num_cpus=num_cpus, resources=res)

    def launch(self, name: str, *, num_cpus: float = 1, resources: dict | None = None,
               head: bool = False) -> subprocess.Popen:
        """Starts node `name`'s `ray start`, without waiting for it."""
        if name in self.nodes and self.nodes[name].poll() is None:
            raise RuntimeError(f"node {name} is running")
        self._gen += 1
        tmp = os.path.join(self.root, f"{name[:6]}{self._gen}")  # a fresh temp dir each start
        log = Path(self.root) / f"{name}-{self._gen}.log"
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus:g}", f"--resources={json.dumps(resources or {})}",
               f"--object-store-memory={self._store}", f"--temp-dir={tmp}",
               "--include-log-monitor=false", *self._ports()]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false",
                    f"--dashboard-port={free_port()}",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        env = {**os.environ, **FAST_FAILURE, **self.env}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._started.append(proc)
        self.nodes[name] = proc
        self._logs[name] = (log, cmd, tmp)
        return proc

    def wait_up(self, name: str, timeout_s: float = 120.0) -> None:
        """Waits until node `name`'s `ray start` says the node is up (it joined the
        cluster); raises with its output when it ended or timed out instead."""
        proc, (log, cmd, tmp) = self.nodes[name], self._logs[name]
        deadline = time.monotonic() + timeout_s
        while True:
            text = log.read_text(errors="replace")
            if "Ray runtime started" in text:
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                self._kill_tree(proc)
                self._sweep(tmp + os.sep)  # what it left (its raylet, if it started one)
                raise RuntimeError(f"ray node {name} did not start (rc {proc.poll()}):\n"
                                   f"{' '.join(cmd)}\n{text[-3000:]}")
            time.sleep(0.2)

    def processes(self, name: str) -> list[psutil.Process]:
        """Node `name`'s processes: its `ray start`, its raylet and agents, its workers."""
        return self._tree(self.nodes[name])

    @staticmethod
    def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
        if proc.poll() is not None:  # ended (and reaped: its pid may be another's now)
            return []
        try:
            top = psutil.Process(proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pids(self, name: str) -> set[int]:
        return {p.pid for p in self.processes(name)}

    def raylet(self, name: str) -> psutil.Process:
        for p in self.processes(name):
            try:
                if p.name() == "raylet" or p.cmdline()[:1] and p.cmdline()[0].endswith("raylet"):
                    return p
            except psutil.NoSuchProcess:
                pass
        raise LookupError(f"node {name} has no raylet")

    def listening_pid(self, port: int) -> int | None:
        """The pid of the process (of this cluster's nodes) listening on 127.0.0.1:port."""
        for name in self.nodes:
            for p in self.processes(name):
                try:
                    for c in p.net_connections(kind="tcp"):
                        if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                            return p.pid
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        return None

    def freeze(self, name: str, timeout_s: float = 10.0) -> list[int]:
        """SIGSTOPs node `name`, all of it: a machine that hangs or is cut off from the
        cluster. Its processes live on (killed by ``kill`` or ``shutdown``) and their
        connections stay open, but nothing answers on them any more. Returns once every
        one of them is stopped."""
        procs = self.processes(name)
        for p in procs:
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + timeout_s
        for p in procs:
            while True:
                try:
                    if p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE,
                                      psutil.STATUS_TRACING_STOP):
                        break
                except psutil.NoSuchProcess:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {name}: process {p.pid} did not stop")
                time.sleep(0.02)
        return [p.pid for p in procs]

    def kill(self, name: str) -> list[int]:
        """SIGKILLs node `name`: its raylet, its workers, everything of it, at once."""
        return self._kill_tree(self.nodes[name])

    @staticmethod
    def _kill_tree(*popens: subprocess.Popen) -> list[int]:
        """SIGKILLs the process trees of these `ray start`s, all frozen first (so no
        process sees another die), and waits until they are gone."""
        procs = [p for proc in popens for p in LocalRayCluster._tree(proc)]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
        psutil.wait_procs(procs, timeout=10)
        for proc in popens:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return [p.pid for p in procs]

    # ----------------------------------------------------------------- end
    def shutdown(self) -> None:
        """Kills every process of this cluster (and only those), then removes its dir."""
        self._kill_tree(*self._started)
        self._sweep(self.root + os.sep)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _sweep(path: str) -> None:
        """SIGKILLs the processes whose command line names `path` (a temp dir of this
        cluster: its GCS, raylets and monitors name theirs), and waits for them."""
        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != os.getpid() and path in " ".join(p.info["cmdline"] or ()):
                    mine.append(p)
            except psutil.NoSuchProcess:
                pass
        for p in mine:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(mine, timeout=10)
