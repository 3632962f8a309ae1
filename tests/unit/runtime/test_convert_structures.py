"""proto <-> numpy <-> ase round trips and validation of incoming structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from services.proto.nnmd.v1 import common_pb2
from services.runtime.convert import (
    LabelArrays,
    Limits,
    StructureArrays,
    from_atoms,
    labels_from_proto,
    labels_to_proto,
    structure_from_proto,
    structure_to_proto,
    to_atoms,
)
from services.runtime.errors import InvalidArgument


def _random_structure(rng, n=7, velocities=True):
    cell = np.diag(rng.uniform(4, 6, 3)) + rng.normal(0, 0.3, (3, 3))
    return StructureArrays(
        positions=rng.normal(0, 3, (n, 3)),
        numbers=rng.integers(1, 90, n).astype(np.int32),
        cell=cell,
        pbc=np.array([True, True, False]),
        velocities=rng.normal(0, 0.01, (n, 3)) if velocities else None,
        id="chain-1/step-2",
    )


def test_proto_numpy_round_trip_is_bitwise():
    rng = np.random.default_rng(0)
    s = _random_structure(rng)
    msg = structure_to_proto(s)
    back = structure_from_proto(common_pb2.Structure.FromString(msg.SerializeToString()))
    for name in ("positions", "numbers", "cell", "pbc", "velocities"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name), err_msg=name)
    assert back.positions.dtype == np.float64 and back.id == s.id
    labels = LabelArrays(-12.345678901234567, rng.normal(size=(7, 3)), rng.normal(size=(3, 3)))
    lb = labels_from_proto(
        common_pb2.Labels.FromString(labels_to_proto(labels).SerializeToString()), 7
    )
    assert lb.energy == labels.energy
    np.testing.assert_array_equal(lb.forces, labels.forces)
    np.testing.assert_array_equal(lb.stress, labels.stress)
    empty = labels_from_proto(labels_to_proto(LabelArrays()), 7)
    assert np.isnan(empty.energy) and empty.forces is None and empty.stress is None


def test_numpy_ase_round_trip():
    rng = np.random.default_rng(1)
    s = _random_structure(rng)
    back, _ = from_atoms(to_atoms(s))
    for name in ("positions", "numbers", "cell", "pbc"):
        np.testing.assert_array_equal(getattr(back, name), getattr(s, name), err_msg=name)
    # velocities pass through ASE's momenta (m v) and its time unit: equal to rounding
    np.testing.assert_allclose(back.velocities, s.velocities, rtol=1e-14, atol=0)


def test_ase_labels_round_trip_through_proto():
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    e, f, st = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    s, labels = from_atoms(atoms)
    s2 = structure_from_proto(structure_to_proto(s))
    l2 = labels_from_proto(labels_to_proto(labels), s2.n_atoms)
    atoms2 = to_atoms(s2, l2)
    assert atoms2.get_potential_energy() == e
    np.testing.assert_array_equal(atoms2.get_forces(), f)
    np.testing.assert_array_equal(atoms2.get_stress(voigt=False), st)
    np.testing.assert_array_equal(atoms2.positions, atoms.positions)
    np.testing.assert_array_equal(atoms2.cell[:], atoms.cell[:])


def _msg(**overrides):
    msg = common_pb2.Structure(
        positions_angstrom=[0, 0, 0, 1.2, 0, 0],
        numbers=[14, 14],
        cell_angstrom=[5, 0, 0, 0, 5, 0, 0, 0, 5],
        pbc=[True, True, True],
    )
    for key, value in overrides.items():
        msg.ClearField(key)
        getattr(msg, key).extend(value)
    return msg


@pytest.mark.parametrize(
    ("overrides", "limits", "field"),
    [
        (
            {"positions_angstrom": [0, 0, float("nan"), 1, 0, 0]},
            Limits(),
            "structure.positions_angstrom[0, 2]",
        ),
        ({"positions_angstrom": [0, 0, 0, 1]}, Limits(), "structure.positions_angstrom"),
        ({"cell_angstrom": [5, 0, 0, 0, 5]}, Limits(), "structure.cell_angstrom"),
        ({"pbc": [True, True]}, Limits(), "structure.pbc"),
        ({}, Limits(max_atoms=1), "structure.numbers"),
        ({"numbers": [14, 200]}, Limits(), "structure.numbers[1]"),
        ({"numbers": [14, 0]}, Limits(), "structure.numbers[1]"),
        ({"numbers": [14, 8]}, Limits(allowed_numbers=frozenset({14})), "structure.numbers[1]"),
        ({"cell_angstrom": [5, 0, 0, 10, 0, 0, 0, 0, 5]}, Limits(), "structure.cell_angstrom"),
        ({"cell_angstrom": []}, Limits(), "structure.cell_angstrom"),
        (
            {"velocities_angstrom_per_fs": [0, 0, 0]},
            Limits(),
            "structure.velocities_angstrom_per_fs",
        ),
        ({"numbers": [], "positions_angstrom": []}, Limits(), "structure.numbers"),
    ],
)
def test_validation_names_the_field(overrides, limits, field):
    with pytest.raises(InvalidArgument) as info:
        structure_from_proto(_msg(**overrides), limits)
    assert info.value.field.replace(" ", "") == field.replace(" ", "")
    assert info.value.detail().field == info.value.field


def test_valid_inputs_pass():
    assert structure_from_proto(_msg()).n_atoms == 2
    # vacancy sites where allowed; a molecule without a cell
    s = structure_from_proto(_msg(numbers=[14, 0]), Limits(allow_vacancy=True))
    assert list(s.numbers) == [14, 0]
    mol = structure_from_proto(_msg(cell_angstrom=[], pbc=[False, False, False]))
    assert mol.cell is None
    atoms = to_atoms(mol)
    assert isinstance(atoms, Atoms) and not atoms.pbc.any()
