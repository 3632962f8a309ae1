"""QE failure modes end to end: a campaign on real pw.x whose runs fail on purpose.

pw.x runs through tests/integration/faults/data/faulty_pw.sh (QEConfig.pw), which runs
the real /usr/bin/pw.x but, on chosen calls, makes the SCF not converge
(electron_maxstep = 1, pw.x's exit code 2), crashes, hangs past the timeout, or points
pw.x at a pseudopotential folder that does not exist. One reference worker, so the calls
come in a fixed order. As documented (docs/reference.md, docs/coordinator.md): a
non-converged SCF and a crash are retried (attempts: 2, the first two rungs of the retry
ladder: the SCF retry with more steps and less mixing, a crash on the same settings); with
on_failure: reject, a run that still fails, a timeout and a missing pseudopotential file
(not retried) reject the move; no failed run's numbers are stored; the report counts each
failed step.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from services.store import Store
from tests.integration.qe_env import QE_MARKS
from tests.unit.coordinator.conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[3]
pytestmark = QE_MARKS

BOOTSTRAP = 3  # AIMD steps: BOOTSTRAP + 1 pw.x runs
# after the bootstrap: (pw.x modes of one chain step's attempts, the step's outcome)
STEPS = [(["notconv", "ok"], "labelled"),        # retried with more SCF steps: converged
         (["notconv", "notconv"], "failed"),     # not converged twice: rejected
         (["crash", "crash"], "failed"),         # crashed twice: rejected
         (["timeout"], "failed"),                # killed at the timeout: not retried
         (["badpseudo"], "failed"),              # pw.x cannot read its pseudopotential
         (["ok"], "labelled"), (["ok"], "labelled"), (["ok"], "labelled")]


def test_failed_pw_runs_are_rejected_moves_and_never_labels(tmp_path):
    plan = tmp_path / "plan"
    modes = ["ok"] * (BOOTSTRAP + 1) + [m for attempts, _ in STEPS for m in attempts]
    plan.write_text("\n".join(modes) + "\n")
    shutil.copy(ROOT / "examples" / "si8.pwi", tmp_path / "si8.pwi")
    spec = {"name": "qe-faults", "reference": "qe:si8.pwi", "store": "store",
            "chains": 2, "steps": 4, "temperature": 600.0, "md_steps": 3, "md_steps_min": 2,
            "md_steps_max": 10, "dt": 1.0, "retrain_every": 0, "bootstrap_steps": BOOTSTRAP,
            "bootstrap_dt": 1.0, "seed": 0, "train": TINY_TRAIN, "executor": "local",
            "sampling": {"on_failure": "reject"},
            # restarts off: a failed restarted attempt is followed by an extra cold one,
            # which would shift the plan's one-mode-per-call order (restarts with failures:
            # tests/integration/test_qe_restart.py and tests/unit/reference)
            "qe": {"pw": str(Path(__file__).parent / "data" / "faulty_pw.sh"),
                   "timeout_s": 20.0, "attempts": 2, "restart": False},
            "resources": {"reference": {"workers": 1}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NNMD_FAULT")}
    env.update(NNMD_TEST_PW_PLAN=str(plan), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "campaign", "run",
                        str(tmp_path / "spec.yaml")], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls = (tmp_path / "plan.log").read_text().split()
    faulty = BOOTSTRAP + 1 + sum(len(att) for att, outcome in STEPS[:5])
    # every fault was met (a step whose NNP trajectory blew up calls no reference at all)
    assert len(calls) // 2 >= faulty, (tmp_path / "plan.log").read_text()

    url = str(tmp_path / "store")
    store = Store(url, read_only=True)
    a = store.read(campaign="qe-faults").arrays
    hmc = a["source"] == "hmc"
    n_failed = sum(outcome == "failed" for _, outcome in STEPS)
    assert int(hmc.sum()) == len(calls) // 2 - faulty + 1  # failed runs stored nowhere
    assert int((a["source"] == "aimd").sum()) == BOOTSTRAP + 1
    assert np.all(np.isfinite(a["energy"]))
    # the stored numbers are real, converged QE energies of 8 Si atoms (about -850 eV)
    assert np.all(np.abs(a["energy"] / 8 + 107) < 5), a["energy"]

    report = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", "--store",
                             url, "--format", "csv"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert len(rows) == 2 * 4
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == n_failed
    assert all(row["accepted"] == "False" and row["energy_proposal"] in ("", "None")
               for row in failed)
    labelled = {(row["chain"], int(row["step"])) for row in rows
                if row["energy_proposal"] not in ("", "None")}
    assert labelled == set(zip(a["chain"][hmc].tolist(), a["step"][hmc].tolist()))
    assert "reference failed" in r.stdout
    for word in ("not_converged", "timeout", "crashed", "missing_pseudo"):
        assert word in r.stdout, word
