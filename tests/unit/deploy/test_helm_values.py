"""The chart's values: values.yaml and every example override against
values.schema.json (draft-07), planted bad overrides rejected with the field
named, and every `.Values` path in the templates present in values.yaml.
Needs no Helm and no cluster."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CHART = Path(__file__).resolve().parents[3] / "helm" / "nnmd"
TEMPLATES = sorted((CHART / "templates").rglob("*"))
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))


def load_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def load_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def helm_merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of an override file onto values.yaml: maps merge
    recursively, anything else (lists included) replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = helm_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def errors_for(values: dict) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft7Validator(load_schema())
    return sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))


def test_schema_is_valid_draft7():
    schema = load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


def test_default_values_validate():
    errors = errors_for(load_values())
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_override_validates(example):
    override = yaml.safe_load(example.read_text())
    assert isinstance(override, dict) and override, f"{example.name} is empty"
    errors = errors_for(helm_merge(load_values(), override))
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_there_are_examples_for_gpu_and_s3():
    names = {p.name for p in EXAMPLES}
    assert {"values-gpu.yaml", "values-s3.yaml"} <= names


# (override, the dotted path the error must name, the JSON-Schema keyword that fires)
BAD_OVERRIDES = {
    "wrong type: replicas as a word": (
        {"ray": {"gpuWorkers": {"maxReplicas": "two"}}}, "ray.gpuWorkers.maxReplicas", "type"),
    "wrong type: boolean as a string": (
        {"coordinator": {"enabled": "yes"}}, "coordinator.enabled", "type"),
    "negative replicas": (
        {"ray": {"cpuWorkers": {"replicas": -1}}}, "ray.cpuWorkers.replicas", "minimum"),
    "negative minReplicas": (
        {"ray": {"gpuWorkers": {"minReplicas": -3}}}, "ray.gpuWorkers.minReplicas", "minimum"),
    "zero GPUs per GPU pod": (
        {"ray": {"gpuWorkers": {"gpusPerPod": 0}}}, "ray.gpuWorkers.gpusPerPod", "minimum"),
    "unknown key (typo)": (
        {"coordinator": {"prot": 50051}}, "coordinator", "additionalProperties"),
    "unknown top-level key": ({"replicaCount": 3}, "", "additionalProperties"),
    "bad enum: pull policy": (
        {"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy", "enum"),
    "bad enum: store type": ({"store": {"type": "gcs"}}, "store.type", "enum"),
    "bad enum: service type": (
        {"coordinator": {"service": {"type": "Ingress"}}}, "coordinator.service.type", "enum"),
    "bad enum: PVC access mode": (
        {"store": {"pvc": {"accessModes": ["ReadWriteAll"]}}}, "store.pvc.accessModes.0", "enum"),
    "privileged port for the coordinator": (
        {"coordinator": {"port": 80}}, "coordinator.port", "minimum"),
    "nodePort outside the NodePort range": (
        {"coordinator": {"service": {"nodePort": 8080}}}, "coordinator.service.nodePort", "anyOf"),
    "not a Kubernetes quantity": (
        {"ray": {"head": {"resources": {"limits": {"memory": "lots"}}}}},
        "ray.head.resources.limits.memory", "oneOf"),
    "s3 store without a bucket URL": (
        {"store": {"type": "s3"}}, "store.s3.url", "minLength"),
    "s3 URL that is not s3://": (
        {"store": {"type": "s3", "s3": {"url": "https://bucket/x"}}}, "store.s3.url", "anyOf"),
    "existing PVC without its name": (
        {"store": {"pvc": {"create": False}}}, "store.pvc.existingClaim", "minLength"),
    "head given CPUs for work": (
        {"ray": {"head": {"rayStartParams": {"num-cpus": "4"}}}}, "ray.head.rayStartParams", "not"),
    "rayStartParams value not a string": (
        {"ray": {"cpuWorkers": {"rayStartParams": {"num-gpus": 1}}}},
        "ray.cpuWorkers.rayStartParams.num-gpus", "type"),
    "negative custom resource": (
        {"ray": {"cpuWorkers": {"customResources": {"qe": -1}}}},
        "ray.cpuWorkers.customResources.qe", "minimum"),
    "token too short to be a secret": (
        {"auth": {"token": "abc"}}, "auth.token", "anyOf"),
    "bad enum: autoscaler mode": (
        {"ray": {"autoscaler": {"upscalingMode": "Fast"}}}, "ray.autoscaler.upscalingMode", "enum"),
    "group name not a DNS label": (
        {"ray": {"cpuWorkers": {"groupName": "QE_workers"}}}, "ray.cpuWorkers.groupName", "pattern"),
    "required block deleted": ({"store": None}, "", "required"),
    "bad enum: console Ingress pathType": (
        {"console": {"ingress": {"pathType": "Regex"}}}, "console.ingress.pathType", "enum"),
    "console Ingress TLS without its Secret": (
        {"console": {"ingress": {"tls": [{"hosts": ["a.example"]}]}}},
        "console.ingress.tls.0", "required"),
}


@pytest.mark.parametrize("case", sorted(BAD_OVERRIDES))
def test_bad_override_is_rejected_naming_the_field(case):
    override, path, keyword = BAD_OVERRIDES[case]
    errors = errors_for(helm_merge(load_values(), override))
    assert errors, f"{case}: the schema accepted a bad value"
    found = [(".".join(map(str, e.absolute_path)), e.validator) for e in errors]
    assert (path, keyword) in found, f"{case}: expected {keyword} at '{path}', got {found}"


def _schema_paths(node: dict, schema: dict, prefix: str = "") -> set[str]:
    """Dotted paths of the object properties the schema declares (following $ref)."""
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    paths = set()
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.add(path)
        paths |= _schema_paths(sub, schema, path + ".")
    return paths


def _value_paths(values: dict, schema: dict) -> set[str]:
    """Dotted paths of values.yaml down to where the schema stops naming keys."""
    declared = _schema_paths(schema, schema)

    def walk(node, prefix):
        out = set()
        if isinstance(node, dict):
            for key, sub in node.items():
                path = f"{prefix}{key}"
                out.add(path)
                if any(d.startswith(path + ".") for d in declared):
                    out |= walk(sub, path + ".")
        return out

    return walk(values, "")


def test_schema_and_values_yaml_name_the_same_keys():
    """No key in values.yaml without a schema entry and no schema entry that
    values.yaml lacks (open maps such as nodeSelector and resources excepted)."""
    schema, values = load_schema(), load_values()
    declared = _schema_paths(schema, schema) - {"global"}
    present = _value_paths(values, schema)
    # Keys of free-form maps (resources.requests.cpu, ...) are declared by
    # definitions but need not appear in values.yaml, and vice versa.
    open_maps = ("resources.", "probes.startup.", "probes.readiness.", "probes.liveness.")
    missing = {p for p in declared - present if not any(m in p for m in open_maps)}
    undeclared = {p for p in present - declared if not any(m in p for m in open_maps)}
    assert not missing, f"schema keys absent from values.yaml: {sorted(missing)}"
    assert not undeclared, f"values.yaml keys the schema does not declare: {sorted(undeclared)}"


VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP_REF = re.compile(r"\$g\.([A-Za-z_][A-Za-z0-9_]*)")


def _template_texts():
    return {p.relative_to(CHART).as_posix(): p.read_text() for p in TEMPLATES if p.is_file()}


def _lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def test_every_values_reference_in_templates_exists():
    values = load_values()
    refs = {}
    for name, text in _template_texts().items():
        for match in VALUES_REF.finditer(text):
            refs.setdefault(match.group(1).lstrip("."), set()).add(name)
    assert len(refs) > 40, f"the regex found only {len(refs)} references: is it broken?"
    missing = {}
    for path, files in refs.items():
        try:
            _lookup(values, path)
        except KeyError:
            missing[path] = sorted(files)
    assert not missing, f".Values paths used in templates but absent from values.yaml: {missing}"


def test_worker_group_fields_used_in_templates_exist_in_both_groups():
    # raycluster.yaml and _helpers.tpl range over ray.cpuWorkers and ray.gpuWorkers as $g.
    groups = load_values()["ray"]
    used = set()
    for text in _template_texts().values():
        used |= set(GROUP_REF.findall(text))
    assert "maxReplicas" in used and "gpusPerPod" in used
    gpu_only = {"gpusPerPod"}  # read only inside `if eq $key "gpuWorkers"`
    assert used <= set(groups["gpuWorkers"]), used - set(groups["gpuWorkers"])
    assert used - gpu_only <= set(groups["cpuWorkers"]), used - gpu_only - set(groups["cpuWorkers"])


def test_template_actions_are_balanced_and_yaml_has_no_tabs():
    """A Helm-free syntax check: every `{{` closes, every block (if/range/with/
    define) has its `end`, and no tab indents YAML."""
    opener = re.compile(r"\{\{-?\s*(if|range|with|define)\b")
    closer = re.compile(r"\{\{-?\s*end\b")
    for name, text in _template_texts().items():
        stripped = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", text, flags=re.S)  # comments
        assert stripped.count("{{") == stripped.count("}}"), f"{name}: unbalanced {{{{ }}}}"
        opens, ends = len(opener.findall(stripped)), len(closer.findall(stripped))
        assert opens == ends, f"{name}: {opens} blocks opened, {ends} ended"
        assert "\t" not in text, f"{name}: tab character (YAML forbids tabs for indentation)"


def test_templates_reference_only_defined_helpers():
    texts = _template_texts()
    defined = set()
    for text in texts.values():
        defined |= set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', text))
    used = set()
    for text in texts.values():
        used |= set(re.findall(r'(?:include|template)\s+"([^"]+)"', text))
    assert used, "no include found: is the regex broken?"
    assert used <= defined, f"helpers used but not defined: {sorted(used - defined)}"
