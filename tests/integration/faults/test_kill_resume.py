"""The fault suite: `nnmd campaign run` SIGKILLed at exact points of a step, then resumed.

One campaign is killed again and again, each time at another point (services/runtime/
faults.py): before and after a reference call, inside a store append (rows written, not
committed), after an append (label durable, chain not checkpointed) and after a
re-training (model not yet published). In this design the NNP MD and the re-training run
in the coordinator's process, so a kill there is the "MD executor" and "trainer" kill too.
After the last restart, which runs without faults, the campaign has finished and:
every label is stored exactly once, each chain's step counter ran 1..steps with no step
twice or missing, the acceptance counters agree with the step history, and every step
that got a reference energy has its label.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.store import Store
from tests.unit.coordinator.conftest import EXAMPLES, TINY_TRAIN

NNMD = [sys.executable, "-m", "orchestrator.cli", "campaign", "run"]
STEPS = 10
CHAINS = 3


def _spec(tmp_path: Path) -> Path:
    import shutil

    shutil.copy(EXAMPLES / "cu-fcc-32.xyz", tmp_path / "cu.xyz")
    spec = {"name": "faults", "reference": "emt", "structure": "cu.xyz", "store": "store",
            "chains": CHAINS, "steps": STEPS, "temperature": 600.0, "md_steps": 5,
            "md_steps_min": 2, "md_steps_max": 20, "dt": 2.0, "retrain_every": 5,
            "retrain_epochs": 4, "bootstrap_steps": 6, "bootstrap_dt": 2.0, "seed": 7,
            "train": TINY_TRAIN, "executor": "local",
            "resources": {"reference": {"workers": 2}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec: Path, fault: str | None):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NNMD_FAULT")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])
    if fault:
        env["NNMD_FAULT"] = fault
    return subprocess.run(NNMD + [str(spec)], env=env, capture_output=True, text=True,
                          timeout=600)


def _labels(url: str):
    try:
        a = Store(url, read_only=True).read(campaign="faults").arrays
    except Exception:  # noqa: BLE001 - not created yet
        return []
    hmc = a["source"] == "hmc"
    return list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))


# (point, n-th time it is reached): after the bootstrap and the first model, mid-run
KILLS = [("store_write", 10), ("after_reference", 4), ("after_append", 3),
         ("training", 1), ("before_reference", 2)]


def test_killed_at_every_point_resumes_with_every_label_once(tmp_path):
    spec = _spec(tmp_path)
    url = str(tmp_path / "store")
    seen: set = set()
    for point, n in KILLS:
        out = _run(spec, f"{point}:{n}")
        labels = _labels(url)
        if out.returncode == 0:  # finished before reaching the point: nothing to test
            pytest.fail(f"the campaign finished before the fault {point}:{n}; "
                        f"{len(labels)} labels")
        assert out.returncode == -9, f"{point}: rc {out.returncode}\n{out.stderr[-3000:]}"
        assert len(labels) == len(set(labels)), f"a label twice after the kill at {point}"
        assert seen <= set(labels), f"a durable label lost after the kill at {point}"
        seen = set(labels)
    out = _run(spec, None)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming campaign" in out.stdout
    summary = json.loads(out.stdout[out.stdout.index("\n{") + 1:])

    labels = _labels(url)
    assert len(labels) == len(set(labels)) == CHAINS * STEPS  # EMT never fails
    assert seen <= set(labels)
    store = Store(url, read_only=True)
    for c in range(CHAINS):
        doc = store.read_checkpoint("faults", f"chain{c:03d}")
        hist = doc["history"]
        assert [h["step"] for h in hist] == list(range(1, STEPS + 1))
        st = doc["state"]
        assert st["step"] == STEPS
        assert st["hmc_tried"] == STEPS
        assert st["hmc_accepted"] == sum(h["accepted"] for h in hist)
        assert all(h["energy_proposal"] is not None for h in hist)
    a = store.read(campaign="faults").arrays
    hmc = a["source"] == "hmc"
    # the stored accepted flags agree with the chains' histories
    flags = {(ch, int(s)): bool(acc) for ch, s, acc in
             zip(a["chain"][hmc], a["step"][hmc], a["accepted"][hmc])}
    for c in range(CHAINS):
        for h in store.read_checkpoint("faults", f"chain{c:03d}")["history"]:
            assert flags[(f"chain{c:03d}", h["step"])] == h["accepted"]
    assert summary["steps"] == {f"chain{c:03d}": STEPS for c in range(CHAINS)}
    # a model was published after the kill during training
    assert summary["model_version"] >= 2
