#!/usr/bin/env python
"""Run an nnmd campaign on the Ray cluster this script lands on, detached.

    # from your machine: start it on the cluster's head, then hang up
    ray submit examples/cluster/aws.yaml examples/cluster/run_campaign.py \
        -- ~/nnmd/examples/cluster/campaign.yaml
    # later: follow it, or stop it
    ray submit examples/cluster/aws.yaml examples/cluster/run_campaign.py -- --status cu-emt-demo
    ray submit examples/cluster/aws.yaml examples/cluster/run_campaign.py -- --logs cu-emt-demo
    ray submit examples/cluster/aws.yaml examples/cluster/run_campaign.py -- --stop cu-emt-demo

How it detaches. The script reads SPEC (YAML), bundles it with the files it
names by relative path (the structure, a QE input in `qe:inputs/si.pwi`), and
hands the bundle to a named, detached Ray actor, "nnmd-campaign-<name>" in the
Ray namespace "nnmd", pinned to the head node (worker nodes come and go with the
autoscaler). The actor writes the bundle to ~/nnmd-campaigns/<name>/ on the head
and runs `nnmd campaign run spec.yaml` there as its child, joined to this Ray
cluster (RAY_ADDRESS). The driver returns once the child has started: the SSH
session, `ray submit` and this script may then end; the actor is owned by the
cluster, not by them. Submitting the same name again attaches to the running
campaign instead of starting a second one. If the actor's process dies, Ray
restarts it (max_restarts) and it starts the campaign again, which resumes from
the Zarr store; the child is tied to the actor (SIGTERM when it dies), so a
restart never leaves two copies running. `--stop` ends the child (SIGTERM, then
SIGKILL after --grace seconds) and removes the actor.

Only Ray, PyYAML and the standard library are needed here; the campaign itself
is whatever `nnmd campaign run` does (--command overrides the command line).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray
import yaml

NAMESPACE = "nnmd"
ACTOR_PREFIX = "nnmd-campaign-"
DEFAULT_COMMAND = "nnmd campaign run {spec}"
DEFAULT_ROOT = "~/nnmd-campaigns"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------
# The spec bundle: the spec and the files it names, as {relative path: bytes}.
# ---------------------------------------------------------------------------


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def bundle_spec(spec_path: Path) -> tuple[str, dict[str, bytes]]:
    """(campaign name, {path relative to the spec's folder: content}) for SPEC.

    A file is bundled when a string in the spec, or the part after `scheme:`
    (as in `qe:inputs/si.pwi`), is a relative path to an existing file beside
    the spec. URLs (`s3://...`) and absolute paths are left alone: they must
    exist on the cluster as written.
    """
    spec_path = spec_path.expanduser().resolve()
    if not spec_path.is_file():
        raise FileNotFoundError(f"SPEC: no file {spec_path}")
    spec = yaml.safe_load(spec_path.read_text())
    if not isinstance(spec, dict):
        raise ValueError(f"SPEC: {spec_path} must be a YAML mapping (name: ..., reference: ...)")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"SPEC field 'name': {name!r} is not a usable campaign name; use letters, digits, "
            "'.', '_' or '-' (at most 63, starting with a letter or digit)"
        )
    root = spec_path.parent
    files = {"spec.yaml": spec_path.read_bytes()}
    for text in _strings(spec):
        candidates = [text]
        if ":" in text and "://" not in text:
            candidates.append(text.split(":", 1)[1])
        for candidate in candidates:
            rel = Path(candidate)
            if not candidate or rel.is_absolute() or ".." in rel.parts or len(candidate) > 4096:
                continue
            path = root / rel
            if path.is_file():
                files[rel.as_posix()] = path.read_bytes()
    size = sum(len(b) for b in files.values())
    if size > MAX_BUNDLE_BYTES:
        raise ValueError(
            f"SPEC: the files it names add up to {size / 2**20:.0f} MiB; put large inputs in the "
            "store or on shared storage and name them by absolute path or URL"
        )
    return name, files


# ---------------------------------------------------------------------------
# The detached actor that owns the campaign's process.
# ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the actor's process dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # not Linux: the child may outlive a crashed actor
        pass


class CampaignHost:
    """Owns one campaign: its folder on the head and the `nnmd campaign run` child."""

    def __init__(self, name: str, files: dict[str, bytes], command: list[str], root: str):
        self.name = name
        self.dir = Path(root).expanduser() / name
        self.dir.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            path = self.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        self.command = command
        self.log_path = self.dir / "campaign.log"
        self.exit_path = self.dir / "exit_code"
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        if not ray.get_runtime_context().was_current_actor_reconstructed:
            self.exit_path.unlink(missing_ok=True)  # a new submission of an old name runs again
        if not self.exit_path.exists():  # a restarted actor does not re-run a finished campaign
            self._start()

    def _start(self) -> None:
        env = dict(os.environ)
        # The child joins this cluster rather than starting a Ray of its own.
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {self.command}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: --stop signals the whole tree
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.time()
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        code = self.proc.wait()
        tmp = self.exit_path.with_suffix(".tmp")
        tmp.write_text(f"{code}\n")
        tmp.replace(self.exit_path)

    def status(self, lines: int = 20) -> dict:
        code = self.proc.poll() if self.proc is not None else None
        if code is None and self.exit_path.exists():
            code = int(self.exit_path.read_text().split()[0])
        running = self.proc is not None and self.proc.poll() is None
        return {
            "name": self.name,
            "dir": str(self.dir),
            "node": ray.get_runtime_context().get_node_id(),
            "pid": self.proc.pid if self.proc is not None else None,
            "actor_pid": os.getpid(),
            "command": self.command,
            "running": running,
            "exit_code": None if running else code,
            "started_at": self.started_at,
            "log_tail": self.logs(lines),
        }

    def logs(self, lines: int = 200) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            tail = f.read().decode(errors="replace").splitlines()
        return "\n".join(tail[-lines:]) if lines > 0 else ""

    def stop(self, grace_s: float = 30.0) -> dict:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGTERM)  # first ask the campaign to end cleanly
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        return self.status()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:  # already gone
            pass


# ---------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------


def actor_name(name: str) -> str:
    return ACTOR_PREFIX + name


def start(args) -> int:
    name, files = bundle_spec(Path(args.spec))
    if args.name:
        if not NAME_RE.match(args.name):
            raise ValueError(f"--name: {args.name!r} is not a usable campaign name")
        name = args.name
    command = [part.replace("{spec}", "spec.yaml") for part in shlex.split(args.command)]
    options = {
        "name": actor_name(name),
        "namespace": NAMESPACE,
        "lifetime": "detached",  # owned by the cluster: survives this driver and its SSH session
        "get_if_exists": True,  # the same name again attaches instead of starting twice
        "max_restarts": args.max_restarts,
        "num_cpus": 0,  # it only waits on its child; the campaign asks Ray for its own resources
    }
    if not args.anywhere:
        # The head is the one node the autoscaler never removes.
        options["resources"] = {"node:__internal_head__": 0.001}
    existing = actor_name(name) in {a["name"] for a in _named_actors()}
    host = ray.remote(CampaignHost).options(**options).remote(name, files, command, args.root)
    status = ray.get(host.status.remote(lines=5), timeout=args.timeout)
    if existing:
        print(f"campaign {name!r} already exists on this cluster: attached, not restarted")
    else:
        print(f"campaign {name!r} started (detached) on node {status['node']}")
    _print_status(status)
    if args.wait:
        return _wait(host, args.poll)
    print(
        "It keeps running after this script exits. Follow it with\n"
        f"  python {Path(__file__).name} --status {name}   (--logs {name}, --stop {name})"
    )
    return 0


def _wait(host, poll_s: float) -> int:
    shown = 0
    while True:
        status = ray.get(host.status.remote(lines=10_000))
        lines = status["log_tail"].splitlines()
        for line in lines[shown:]:
            print(line)
        shown = len(lines)
        if not status["running"]:
            print(f"campaign {status['name']!r} finished with exit code {status['exit_code']}")
            return 0 if status["exit_code"] == 0 else 1
        time.sleep(poll_s)


def _named_actors() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(ACTOR_PREFIX)]


def _get(name: str):
    try:
        return ray.get_actor(actor_name(name), namespace=NAMESPACE)
    except ValueError:
        known = sorted(a["name"][len(ACTOR_PREFIX):] for a in _named_actors())
        raise ValueError(f"no campaign {name!r} on this cluster (campaigns: {known or 'none'})") from None


def _print_status(status: dict) -> None:
    state = "running" if status["running"] else f"finished, exit code {status['exit_code']}"
    print(f"  {status['name']}: {state}; folder {status['dir']} on the head; pid {status['pid']}")
    if status["log_tail"]:
        print("  log (last lines):")
        for line in status["log_tail"].splitlines():
            print("    " + line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Start an nnmd campaign on this Ray cluster as a detached actor, "
        "or query/stop one.")
    p.add_argument("spec", nargs="?", help="campaign spec (YAML) to start")
    p.add_argument("--address", default="auto",
                   help="Ray cluster to join (default: auto, the cluster of this node)")
    p.add_argument("--name", help="campaign name (default: the spec's name)")
    p.add_argument("--command", default=DEFAULT_COMMAND,
                   help="command the actor runs in the campaign folder; {spec} is the "
                        f"bundled spec (default: '{DEFAULT_COMMAND}')")
    p.add_argument("--root", default=DEFAULT_ROOT,
                   help=f"folder on the head for campaign folders (default: {DEFAULT_ROOT})")
    p.add_argument("--max-restarts", type=int, default=-1,
                   help="times Ray restarts a dead campaign actor (-1: always)")
    p.add_argument("--anywhere", action="store_true",
                   help="do not pin the actor to the head node")
    p.add_argument("--wait", action="store_true", help="stay and stream the log until it ends")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between polls with --wait")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the actor to start")
    p.add_argument("--grace", type=float, default=30.0,
                   help="with --stop: seconds between SIGTERM and SIGKILL")
    p.add_argument("--lines", type=int, default=100, help="with --logs: lines to show")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", metavar="NAME", help="show a campaign's state")
    group.add_argument("--logs", metavar="NAME", help="print the end of a campaign's log")
    group.add_argument("--stop", metavar="NAME", help="stop a campaign and remove its actor")
    group.add_argument("--list", action="store_true", help="list the campaigns on this cluster")
    args = p.parse_args(argv)
    query = args.status or args.logs or args.stop or args.list
    if bool(args.spec) == bool(query):
        p.error("give either SPEC or one of --status/--logs/--stop/--list")

    ray.init(address=args.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        if args.spec:
            return start(args)
        if args.list:
            for actor in sorted(_named_actors(), key=lambda a: a["name"]):
                status = ray.get(ray.get_actor(actor["name"], namespace=NAMESPACE)
                                 .status.remote(lines=0))
                _print_status(status)
            return 0
        if args.status:
            _print_status(ray.get(_get(args.status).status.remote()))
            return 0
        if args.logs:
            print(ray.get(_get(args.logs).logs.remote(args.lines)))
            return 0
        host = _get(args.stop)
        status = ray.get(host.stop.remote(args.grace))
        ray.kill(host, no_restart=True)
        print(f"campaign {args.stop!r} stopped (exit code {status['exit_code']}); its folder "
              f"{status['dir']} on the head is kept")
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as exc:
        print(f"run_campaign: error: {exc}", file=sys.stderr)
        sys.exit(2)
