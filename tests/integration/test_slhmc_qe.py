"""`nnmd slhmc` with real pw.x (examples/si8.pwi): the structure comes from the QE input,
bootstrap frames and chain labels are real QE energies, two pw.x runs side by side.
About 30 s (a dozen pw.x runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from services.store import Store
from tests.integration.qe_env import QE_MARKS

ROOT = Path(__file__).resolve().parents[2]
pytestmark = QE_MARKS

TINY_TRAIN = {"descriptor": {"n_radial": 6, "n_angular": 3, "r_radial": 4.5, "r_angular": 4.0},
              "hidden": [8, 8], "max_epochs": 15, "warmup_epochs": 5}


def test_slhmc_with_pw_x(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps(TINY_TRAIN))
    url = str(tmp_path / "store")
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "slhmc", "--reference",
         f"qe:{ROOT / 'examples' / 'si8.pwi'}", "--store", url, "--chains", "2", "--steps", "2",
         "--temperature", "1000", "--md-steps", "10", "--dt", "2", "--bootstrap-steps", "3",
         "--bootstrap-dt", "2", "--train-config", str(train), "--retrain-every", "0",
         "--reference-workers", "2", "--timeout", "300", "--out", str(tmp_path / "model")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    a = Store(url, read_only=True).read(campaign="slhmc").arrays
    src = a["source"]
    assert (src == "aimd").sum() == 4
    assert (src == "hmc").sum() == summary["reference_calls"] - summary["reference_failures"]
    # Si8 at 20 Ry: about -108 eV/atom (pw.x Ry energies converted to eV)
    per_atom = a["energy"] / 8
    assert np.all((per_atom > -110) & (per_atom < -105))
    assert len(set(a["reference_settings_hash"].tolist())) == 1
    assert (tmp_path / "model" / "model.nnmd").is_file()
