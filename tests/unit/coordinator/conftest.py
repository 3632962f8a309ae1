"""Small campaign specs for the coordinator tests (EMT copper, tiny network)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "campaigns"
TINY_TRAIN = {"descriptor": {"n_radial": 6, "n_angular": 3, "r_radial": 4.0, "r_angular": 3.5},
              "hidden": [8], "max_epochs": 15, "warmup_epochs": 3, "validation_fraction": 0.0}


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    """(store url, Potential): a small random Cu model published as version 1 of a store."""
    from nnmd_kernels import Potential
    from services.store import Store

    d = tmp_path_factory.mktemp("model")
    pot = Potential.random(["Cu"], seed=0, n_radial=6, n_angular=3, r_radial=4.0,
                           r_angular=3.5)
    pot.save(d / "m.nnmd")
    url = str(d / "store")
    with Store(url).writer() as w:
        w.publish_model((d / "m.nnmd").read_bytes(), {"campaign": "t"})
    return url, Potential.load(d / "m.nnmd")


@pytest.fixture
def tiny_spec(tmp_path):
    """A spec dict whose files exist under tmp_path: 2 chains x 3 steps, 6 bootstrap frames."""
    shutil.copy(EXAMPLES / "cu-fcc-32.xyz", tmp_path / "cu.xyz")
    return {"name": "tiny", "reference": "emt", "structure": str(tmp_path / "cu.xyz"),
            "store": str(tmp_path / "store"), "chains": 2, "steps": 3, "temperature": 600.0,
            "md_steps": 5, "md_steps_min": 2, "md_steps_max": 20, "dt": 2.0,
            "retrain_every": 4, "retrain_epochs": 5, "bootstrap_steps": 6, "bootstrap_dt": 2.0,
            "seed": 1, "train": TINY_TRAIN, "executor": "local"}
