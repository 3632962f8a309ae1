"""A persistently failing reference for one chain, through `nnmd campaign run` as a user
runs it: with the default on_failure: stop, that chain ends `failed` with its reason (in
the run's output, `nnmd campaign status`'s store view and the report) while the other
chain goes on to the end; with on_failure: reject the run completes and the report flags
the bias. A failed calculation is never stored as a label."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.coordinator.runner import status_from_store
from services.store import Store
from tests.unit.coordinator.conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[3]


def run_campaign(tmp_path, on_failure):
    from ase.build import bulk

    bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2).write(tmp_path / "cu.xyz")
    spec = {"name": "flaky", "reference": "ase:tests.integration.faults.flaky_reference:make",
            "structure": "cu.xyz", "store": "store", "chains": 2, "steps": 6,
            "temperature": 500.0, "md_steps": 4, "md_steps_min": 2, "dt": 2.0,
            "retrain_every": 0, "bootstrap_steps": 4, "bootstrap_dt": 2.0, "seed": 0,
            "train": TINY_TRAIN, "executor": "local",
            "sampling": {"on_failure": on_failure}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NNMD_FAULT")}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "campaign", "run",
                        str(tmp_path / "spec.yaml")], env=env, capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, str(tmp_path / "store"), env


def last_json(text: str) -> dict:
    """The summary JSON that `nnmd campaign run` prints after its log lines."""
    return json.loads(text[text.rfind("\n{\n") + 1:])


def hmc_steps(url, chain):
    a = Store(url, read_only=True).read(campaign="flaky").arrays
    return sorted(a["step"][(a["source"] == "hmc") & (a["chain"] == chain)].tolist())


def test_stop_ends_the_failing_chain_and_the_other_goes_on(tmp_path):
    r, url, env = run_campaign(tmp_path, "stop")
    summary = last_json(r.stdout)
    assert summary["steps"] == {"chain000": 6, "chain001": 2}
    assert "injected for chain001" in summary["failed_chains"]["chain001"]
    assert "chain stopped" in r.stderr + r.stdout
    st = status_from_store(url, "flaky")
    chains = {c["chain"]: c for c in st["chains"]}
    assert chains["chain001"]["state"] == "failed" and "injected" in chains["chain001"]["failure"]
    assert chains["chain000"]["state"] == "finished"
    assert hmc_steps(url, "chain001") == [1, 2]  # nothing from the failed call
    assert hmc_steps(url, "chain000") == list(range(1, 7))
    stats = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", "--store", url,
                            "--format", "stats"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert stats.returncode == 0, stats.stderr
    (entry,) = json.loads(stats.stdout)
    assert "chain001" in entry["failed_chains"]


def test_reject_completes_and_reports_the_bias(tmp_path):
    r, url, env = run_campaign(tmp_path, "reject")
    summary = last_json(r.stdout)
    assert summary["steps"] == {"chain000": 6, "chain001": 6}
    assert summary["rejected_failures"] == 4 and "biased" in summary["bias_warning"]
    assert hmc_steps(url, "chain001") == [1, 2]
    stats = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", "--store", url,
                            "--format", "stats"], env=env, capture_output=True, text=True,
                           timeout=120)
    (entry,) = json.loads(stats.stdout)
    assert "biased" in entry["bias_warning"]
