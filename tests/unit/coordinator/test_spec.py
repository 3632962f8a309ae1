"""Campaign specs: the examples parse; every kind of bad value is refused naming its field."""

from __future__ import annotations

import pytest

from orchestrator.coordinator.spec import SpecError, parse_spec
from tests.unit.coordinator.conftest import EXAMPLES


@pytest.mark.parametrize("name", ["cu-emt.yaml", "temperatures.yaml"])
def test_examples_parse(name):
    spec = parse_spec(EXAMPLES / name)
    assert spec.config.structure.endswith("cu-fcc-32.xyz")
    assert spec.store.startswith(str(EXAMPLES))  # relative to the spec's folder


def test_cluster_example_parses():
    spec = parse_spec(EXAMPLES.parent / "cluster" / "campaign.yaml")
    assert spec.reference_resources.num_cpus == 1 and spec.config.qe["ranks"] == 1


def test_chain_groups_give_each_chain_its_conditions():
    spec = parse_spec(EXAMPLES / "temperatures.yaml")
    cfg = spec.config
    assert cfg.chains == 8
    conds = [cfg.chain_conditions(c) for c in range(8)]
    assert [c["temperature"] for c in conds] == [600.0] * 4 + [900.0] * 4
    assert [c["ensemble"] for c in conds] == ["nvt"] * 4 + ["npt"] * 4
    assert cfg.kernel_config(5).ensemble == "npt" and cfg.kernel_config(1).temperature == 600.0


@pytest.mark.parametrize("change, field", [
    ({"chains": 0}, "chains"),
    ({"chains": "four"}, "chains"),
    ({"chains": 2.5}, "chains"),
    ({"temperature": -5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"dt": 0}, "dt"),
    ({"ensemble": "nve"}, "ensemble"),
    ({"chain": 4}, "chain"),  # a typo: unknown field, with a suggestion
    ({"name": "../escape"}, "name"),
    ({"name": ""}, "name"),
    ({"structure": "no-such-file.xyz"}, "structure"),
    ({"reference": 42}, "reference"),
    ({"executor": "slurm"}, "executor"),
    ({"chains": [{"count": 2, "temperature": 0}]}, "chains[0].temperature"),
    ({"chains": [{"temperature": 600}]}, "chains[0].count"),
    ({"chains": [{"count": 1, "colour": "red"}]}, "chains[0].colour"),
    ({"chains": []}, "chains"),
    ({"resources": {"reference": {"workers": 0}}}, "resources.reference.workers"),
    ({"resources": {"gpu": {}}}, "resources.gpu"),
    ({"resources": {"reference": {"resources": {"qe": -1}}}}, "resources.reference.resources"),
    ({"train": {"hidden": "big"}}, "train"),
    ({"volume_step": 0}, "volume_step"),
    ({"pressure": 1.0, "pressure_gpa": 1.0}, "pressure"),
])
def test_bad_values_name_the_field(tiny_spec, change, field):
    spec = {**tiny_spec, **change}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert info.value.field == field, str(info.value)
    assert f"'{field}'" in str(info.value)


def test_missing_required_fields(tiny_spec):
    for key in ("name", "reference"):
        spec = dict(tiny_spec)
        del spec[key]
        with pytest.raises(SpecError, match=f"'{key}'"):
            parse_spec(spec)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="mapping"):
        parse_spec([1, 2, 3])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec(bad)
    with pytest.raises(SpecError, match="no file"):
        parse_spec(tmp_path / "missing.yaml")


def test_unknown_field_suggests_the_right_name(tiny_spec):
    with pytest.raises(SpecError, match="did you mean 'temperature'"):
        parse_spec({**tiny_spec, "temprature": 500})


def test_explorer_settings_are_checked(tiny_spec):
    spec = parse_spec({**tiny_spec, "mc": {"explorers": 2, "rounds": 2, "steps": 100,
                                           "every": 20, "temperature": 1500}})
    assert spec.config.mc["explorers"] == 2
    for bad, field in (({"steps": 0}, "mc.steps"), ({"steps": 100, "every": 500}, "mc.every"),
                       ({"colour": 1}, "mc.colour"), ({"temperature": -1}, "mc.temperature")):
        with pytest.raises(SpecError) as info:
            parse_spec({**tiny_spec, "mc": bad})
        assert info.value.field == field, str(info.value)
    with pytest.raises(SpecError) as info:
        parse_spec({**tiny_spec, "mc": [1]})
    assert info.value.field == "mc"
