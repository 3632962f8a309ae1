"""The SLHMC campaign tests' small network and 32-atom EMT copper cell."""

import pytest
from ase.build import bulk

TINY_TRAIN = {"descriptor": {"n_radial": 6, "n_angular": 3, "r_radial": 4.5, "r_angular": 4.0},
              "hidden": [8, 8], "max_epochs": 15, "warmup_epochs": 5}


@pytest.fixture(scope="module")
def cu(tmp_path_factory):
    """(atoms, path): conventional fcc Cu, 2 x 2 x 2, written to an xyz file."""
    d = tmp_path_factory.mktemp("cu")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    path = d / "cu.xyz"
    atoms.write(path)
    return atoms, str(path)
