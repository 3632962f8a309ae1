"""Render and lint the chart with real Helm, without a cluster.

Two ways, tried in order: a `helm` binary on PATH (`helm template`, `helm lint`),
or the helm-python-sdk package (Helm's own Go engine as a C library, loaded with
ctypes). The SDK is driven in a child process so that a Go runtime never shares
a process with Ray or gRPC in the test session. Neither present: `None`, and the
tests that need Helm skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RELEASE = "demo"
NAMESPACE = "sim"

# The child process: read {"chart", "cases": {name: values}} on stdin, write
# {name: {"ok", "manifests" | "error"}} and the lint report on stdout.
_SDK_SCRIPT = r"""
import json, sys
import helm_python as helm
job = json.load(sys.stdin)
out = {"cases": {}}
for name, values in job["cases"].items():
    try:
        with helm.Chart.load(job["chart"]) as chart:
            manifests = chart.render(values, name=job["release"], namespace=job["namespace"],
                                     is_install=True)
        out["cases"][name] = {"ok": True, "manifests": manifests}
    except helm.HelmError as exc:
        out["cases"][name] = {"ok": False, "error": str(exc)}
lint = helm.lint(job["chart"], strict=True, namespace=job["namespace"])
out["lint"] = {"errors": lint["errors"],
               "messages": [m for m in lint["messages"] if m["severity"] >= 2]}
json.dump(out, sys.stdout)
"""


def _sdk_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import helm_python"], capture_output=True)
    return probe.returncode == 0


def backend() -> str | None:
    """'binary', 'sdk' or None."""
    if shutil.which("helm"):
        return "binary"
    if _sdk_available():
        return "sdk"
    return None


SKIP_REASON = (
    "no Helm here: neither a `helm` binary on PATH nor the helm-python-sdk package "
    "(`pip install helm-python-sdk`, part of nnmd's dev extra) is installed"
)


def _split_template_output(text: str) -> dict[str, str]:
    """`helm template` output -> {template path: text}, keyed like the SDK's."""
    files: dict[str, str] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# Source: "):
            current = line[len("# Source: ") :].strip()
            files.setdefault(current, "")
        elif current is not None:
            files[current] += line
    return files


def render_all(chart: Path, cases: dict[str, dict]) -> dict:
    """Render every case; returns {"cases": {name: {"ok", "manifests"|"error"}}, "lint": ...}."""
    kind = backend()
    if kind == "sdk":
        job = {"chart": str(chart), "cases": cases, "release": RELEASE, "namespace": NAMESPACE}
        proc = subprocess.run(
            [sys.executable, "-c", _SDK_SCRIPT],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"helm-python-sdk child failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout)
    if kind == "binary":
        result: dict = {"cases": {}}
        with tempfile.TemporaryDirectory() as tmp:
            for name, values in cases.items():
                vfile = Path(tmp) / f"{name}.yaml"
                vfile.write_text(yaml.safe_dump(values))
                proc = subprocess.run(
                    ["helm", "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                     "-f", str(vfile)],
                    capture_output=True, text=True, timeout=120,
                )
                if proc.returncode == 0:
                    manifests = _split_template_output(proc.stdout)
                    result["cases"][name] = {"ok": True, "manifests": manifests}
                else:
                    result["cases"][name] = {"ok": False, "error": proc.stderr}
            proc = subprocess.run(
                ["helm", "lint", "--strict", str(chart)], capture_output=True, text=True, timeout=120
            )
            failed = proc.returncode != 0
            result["lint"] = {"errors": [proc.stdout + proc.stderr] if failed else [],
                              "messages": []}
        return result
    raise RuntimeError(SKIP_REASON)
