"""Every command that takes labelled data reads every format: train, mc, label, store import."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_formats import emt_frames

from nnmd_kernels import Potential
from orchestrator.cli import main as cli
from services.trainer.formats import read_structures, write_structures

TINY = {"descriptor": {"n_radial": 4, "n_angular": 2, "r_radial": 4.0, "r_angular": 3.5},
        "hidden": [4], "max_epochs": 2, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    frames = emt_frames(6, seed=7)
    write_structures(frames, d / "input.data")
    write_structures(frames, d / "train.json")  # mlearn JSON
    write_structures(frames, d / "train.extxyz")
    return d


def test_train_reads_n2p2_and_mlearn(data, tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    rc = cli(["train", "--data", str(data / "input.data"), "--test", str(data / "train.json"),
              "--out", str(tmp_path / "m.nnmd"), "--config", str(tmp_path / "cfg.json"),
              "--no-progress"])
    assert rc == 0
    metrics = json.loads((tmp_path / "m_training" / "metrics.json").read_text())
    assert metrics["errors"]["test"]["n_structures"] == 6
    assert set(Potential.load(tmp_path / "m.nnmd").species) == {"Cu", "Ag"}
    # --format forces the reader; the wrong one is a one-line error
    rc = cli(["train", "--data", str(data / "input.data"), "--format", "mlearn",
              "--out", str(tmp_path / "x.nnmd")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "input.data: not valid JSON" in err and len(err.splitlines()) == 1


def test_mc_training_data_reads_mlearn_json(data, tmp_path, capsys):
    pot = Potential.random(["Cu", "Ag"], seed=0, hidden=(4,), n_radial=4, n_angular=2,
                           r_radial=4.0, r_angular=3.5)
    pot.save(tmp_path / "model.nnmd")
    rc = cli(["mc", "--model", str(tmp_path / "model.nnmd"),
              "--structure", str(data / "train.extxyz"), "--steps", "2", "--every", "2",
              "--temperature", "300", "--training-data", str(data / "train.json"),
              str(data / "input.data")])
    assert rc == 0
    assert "histograms from 12 training structures" in capsys.readouterr().out
    rc = cli(["mc", "--model", str(tmp_path / "model.nnmd"),
              "--structure", str(data / "train.extxyz"), "--steps", "1", "--temperature", "300",
              "--training-data", str(tmp_path / "missing.json")])
    assert rc == 2 and "--training-data" in capsys.readouterr().err


def test_label_in_and_store_import_read_n2p2(data, tmp_path, capsys):
    assert cli(["label", "--in", str(data / "input.data"), "--index", "1:3",
                "--out", str(tmp_path / "l.extxyz"), "--reference", "emt"]) == 0
    assert "labelled 2 of 2 structures" in capsys.readouterr().out
    labelled = read_structures(tmp_path / "l.extxyz")
    ref = read_structures(data / "input.data")[1:3]
    np.testing.assert_allclose([a.get_potential_energy() for a in labelled],
                               [a.get_potential_energy() for a in ref], rtol=1e-9)
    assert cli(["label", "--in", str(data / "input.data"), "--index", "x",
                "--out", str(tmp_path / "l2.extxyz")]) == 2

    store = str(tmp_path / "store")
    assert cli(["store", "import", str(data / "input.data"), "--store", store]) == 0
    assert cli(["store", "import", str(data / "train.json"), "--store", store,
                "--campaign", "mlearn"]) == 0
    assert "imported 6 structures" in capsys.readouterr().out
    back = read_structures(store + "#mlearn")
    assert len(back) == 6 and back[0].info["nnmd_chain"] == "train"
    np.testing.assert_allclose(back[3].get_forces(),
                               read_structures(data / "train.json")[3].get_forces(), rtol=1e-12)
    assert len(read_structures(store)) == 12
    assert cli(["store", "import", str(tmp_path / "nope.data"), "--store", store]) == 2
