"""SIGKILL `nnmd slhmc` mid-run, restart it: chains continue from their checkpoints and the
store holds every label exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from services.store import Store

TINY_TRAIN = {"descriptor": {"n_radial": 6, "n_angular": 3, "r_radial": 4.5, "r_angular": 4.0},
              "hidden": [8, 8], "max_epochs": 15, "warmup_epochs": 5}
NNMD = [sys.executable, "-m", "orchestrator.cli"]


def _hmc(url):
    try:
        a = Store(url, read_only=True).read(campaign="slhmc").arrays
    except Exception:  # not created yet
        return [], None
    hmc = a["source"] == "hmc"
    return list(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist())), a


def test_sigkill_and_resume(tmp_path):
    structure = tmp_path / "cu.xyz"
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)).write(structure)
    train = tmp_path / "train.json"
    train.write_text(json.dumps(TINY_TRAIN))
    url = str(tmp_path / "store")
    args = NNMD + ["slhmc", "--reference", "emt", "--structure", str(structure), "--store", url,
                   "--chains", "3", "--steps", "10", "--temperature", "500", "--md-steps", "10",
                   "--dt", "2", "--retrain-every", "9", "--retrain-epochs", "5",
                   "--bootstrap-steps", "6", "--train-config", str(train), "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            keys, _ = _hmc(url)
            if len(keys) >= 10:  # mid-run: some steps done, a re-training behind us
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_keys, _ = _hmc(url)
    docs = {c: Store(url, read_only=True).read_checkpoint("slhmc", c)
            for c in ("chain000", "chain001", "chain002")}
    before = {c: d["state"]["step"] for c, d in docs.items()}
    assert max(before.values()) < 10
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert "resuming campaign" in out.stderr
    keys, arrays = _hmc(url)
    assert len(keys) == len(set(keys))  # every label once
    assert set(killed_keys) <= set(keys)  # none lost
    store = Store(url, read_only=True)
    n_ok = 0
    for chain, start in before.items():
        doc = store.read_checkpoint("slhmc", chain)
        steps = [h["step"] for h in doc["history"]]
        assert steps == list(range(1, 11))  # no step twice, none missing
        n_ok += sum(h["energy_proposal"] is not None for h in doc["history"])
        # the resumed chain continued from its checkpoint: earlier rows unchanged
        assert doc["history"][:start] == docs[chain]["history"]
        assert doc["state"]["step"] == 10
    assert n_ok == len(keys)  # a label for every step that had a reference energy
    assert summary["reference_calls"] + summary["replayed"] == sum(10 - s for s in before.values())
    assert np.all(arrays["model_version"][arrays["source"] == "hmc"] >= 1)
