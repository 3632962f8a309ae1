"""Checkpoints and `nnmd train --resume`: a training killed (SIGKILL) after a checkpoint
and resumed ends where an uninterrupted run with the same seed ends; presets and flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_formats import emt_frames
from test_trainer_kernels import DESC, emt_structures

from nnmd_kernels import Potential
from nnmd_kernels.training import CHECKPOINT, TrainConfig, load_checkpoint, train
from orchestrator.cli import main as cli
from services.trainer.formats import write_structures
from services.trainer.run import load_config

ROOT = Path(__file__).resolve().parents[3]
CFG = {"descriptor": {"n_radial": 5, "n_angular": 3, "r_radial": 4.5, "r_angular": 4.0}, "hidden": [6],
       "optimizer": "adam", "adam_lr": 3e-3, "max_epochs": 60, "warmup_epochs": 5, "patience": 1000,
       "checkpoint_every": 5, "batch_structures": 0}

# the training command in a subprocess, each loss evaluation slowed down (not changed) so
# that a checkpoint exists well before the end
SLOW = """
import sys, time
import nnmd_kernels.training as t
call = t.Objective.__call__
def slow(self, *a, **k):
    time.sleep(0.1)
    return call(self, *a, **k)
t.Objective.__call__ = slow
from orchestrator.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _weights(path):
    pot = Potential.load(path)
    return np.concatenate([w.ravel() for n in pot.networks for w in n.weights + n.biases])


def test_sigkill_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    data = tmp_path / "train.extxyz"
    write_structures(emt_frames(8, seed=3), data)
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    args = ["train", "--data", str(data), "--config", str(tmp_path / "cfg.json"), "--no-progress"]
    assert cli(args + ["--out", str(tmp_path / "ref.nnmd")]) == 0

    out = tmp_path / "cut.nnmd"
    report = tmp_path / "cut_training"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW] + args + ["--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (report / CHECKPOINT).exists():
            try:
                if load_checkpoint(report / CHECKPOINT)["epoch"] >= 20:
                    break
            except Exception:  # noqa: BLE001 (never partial: replaced atomically; be safe)
                pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # killed mid-run
    state = load_checkpoint(report / CHECKPOINT)
    assert 20 <= state["epoch"] < CFG["warmup_epochs"] + CFG["max_epochs"]
    assert not list(report.glob("*.tmp"))

    assert cli(["train", "--resume", str(report), "--no-progress"]) == 0
    ref_hist = json.loads((tmp_path / "ref_training" / "history.json").read_text())[0]
    cut_hist = json.loads((report / "history.json").read_text())[0]
    assert len(cut_hist) == len(ref_hist)
    assert cut_hist[-1]["loss"] == pytest.approx(ref_hist[-1]["loss"], rel=1e-6)
    a, b = _weights(tmp_path / "ref.nnmd"), _weights(out)
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["minibatch", "lbfgs"])
def test_resume_in_process(tmp_path, kind):
    """Mini-batch Adam resumes mid-epoch exactly (checkpoint every 3 steps: inside
    epochs); L-BFGS restarts its history from the checkpoint and completes."""
    structs = emt_structures(10, seed=5)
    if kind == "minibatch":
        cfg = TrainConfig(descriptor=DESC, hidden=(6,), optimizer="adam", adam_lr=3e-3, batch_structures=3,
                          max_epochs=6, warmup_epochs=4, checkpoint_every=3, patience=1000, seed=2)
    else:
        cfg = TrainConfig(descriptor=DESC, hidden=(6,), max_epochs=30, warmup_epochs=4, checkpoint_every=5,
                          seed=2)
    ref = train(structs, cfg, checkpoint_dir=tmp_path / "ref")
    calls = {"n": 0}

    def stop_after(m, ep, row):
        calls["n"] += 1
        if calls["n"] == 17:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(structs, cfg, progress=stop_after, checkpoint_dir=tmp_path / "cut")
    res = train(structs, cfg, checkpoint_dir=tmp_path / "cut", resume=True)
    a = np.concatenate([w.ravel() for n in ref.potential.networks for w in n.weights])
    b = np.concatenate([w.ravel() for n in res.potential.networks for w in n.weights])
    if kind == "minibatch":
        assert np.abs(a - b).max() <= 1e-9 * np.abs(a).max()
        assert [h["epoch"] for h in res.history[0]] == [h["epoch"] for h in ref.history[0]]
    else:
        assert np.all(np.isfinite(b)) and res.history[0][-1]["epoch"] >= 17
    with pytest.raises(ValueError, match="other data or settings"):
        train(structs[:-1], cfg, checkpoint_dir=tmp_path / "cut", resume=True)


def test_presets_config_and_flags_precedence(tmp_path):
    fast = load_config(None, None, preset="fast")
    assert fast.hidden == (24, 24) and fast.max_epochs == 100
    (tmp_path / "c.json").write_text(json.dumps({"hidden": [7], "max_epochs": 50}))
    c = load_config(str(tmp_path / "c.json"), {"max_epochs": 3}, preset="accurate")
    assert c.hidden == (7,) and c.max_epochs == 3 and c.descriptor == {
        "n_radial": 16, "n_angular": 8, "r_radial": 7.0, "r_angular": 6.0}
    assert c.validation_fraction == 0.0
    assert load_config(None, None, preset="default") == TrainConfig()
    with pytest.raises(ValueError, match="unknown"):
        load_config(None, None, preset="best")


def test_cli_help_shows_defaults_and_estimate_is_printed(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = capsys.readouterr().out
    assert "--preset" in text and "--resume" in text and "presets: fast" in text
    for line in text.split("\n  -")[1:]:
        if line.strip().startswith("h,") or "required" in line:  # -h/--help; --data, --out
            continue
        assert "default" in " ".join(line.split()), line
    data = tmp_path / "d.extxyz"
    write_structures(emt_frames(4, seed=1), data)
    rc = cli(["train", "--data", str(data), "--out", str(tmp_path / "m.nnmd"), "--preset", "fast", "--epochs",
              "3"])
    assert rc == 0
    assert "expected training time" in capsys.readouterr().err  # beside the progress bar
    assert json.loads((tmp_path / "m_training" / "metrics.json").read_text())["expected_seconds"] > 0
    inv = json.loads((tmp_path / "m_training" / "invocation.json").read_text())
    assert inv["config"]["hidden"] == [24, 24] and inv["config"]["max_epochs"] == 3
    assert cli(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert cli(["train", "--out", str(tmp_path / "x.nnmd")]) == 2
