"""The chart rendered by real Helm (a `helm` binary, or Helm's Go engine through
helm-python-sdk): default values and every example override render to valid
YAML; the RayCluster passes the KubeRay v1 CRD's own OpenAPI schema; the pieces
fit together (Service -> head pod -> coordinator port, probes, volumes, token,
store); bad values fail at render time with the field named; `helm lint
--strict` is clean. Skips, saying why, where no Helm is available."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from . import helm_renderer
from .test_helm_values import CHART, EXAMPLES, helm_merge, load_values

pytestmark = pytest.mark.skipif(helm_renderer.backend() is None, reason=helm_renderer.SKIP_REASON)

# The openAPIV3Schema of KubeRay's ray.io/v1 RayCluster CRD (descriptions
# stripped), from ray-project/kuberay ray-operator/config/crd/bases/
# ray.io_rayclusters.yaml at commit feeaf72f (v1.7.0-rc.0+5), Apache-2.0.
CRD_SCHEMA = Path(__file__).parent / "data" / "kuberay-raycluster-v1.openapi.json.gz"

CASES = {"default": {}} | {p.stem: yaml.safe_load(p.read_text()) for p in EXAMPLES}
CASES |= {
    "no-auth-s3-keys-gcs-port": {
        "auth": {"enabled": False},
        "ray": {"head": {"rayStartParams": {"port": "6380"}}},
        "store": {"type": "s3", "s3": {"url": "s3://bucket/x", "accessKeyId": "AKIAEXAMPLE",
                                       "secretAccessKey": "example-secret",
                                       "endpointUrl": "http://minio:9000"}},
    },
    "nodeport-no-coordinator-gpu-only": {
        "coordinator": {"enabled": False, "service": {"type": "NodePort", "nodePort": 31051}},
        "ray": {"cpuWorkers": {"enabled": False}, "autoscaler": {"enabled": False}},
    },
}
CASES |= {
    "console-nodeport-ingress-tls": {
        "console": {"port": 8443, "service": {"type": "NodePort", "port": 80, "nodePort": 31080},
                    "ingress": {"enabled": True, "className": "nginx",
                                "host": "console.example.org",
                                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout":
                                                "3600"},
                                "tls": [{"secretName": "console-tls",
                                         "hosts": ["console.example.org"]}]}},
    },
    "console-off": {"console": {"enabled": False}},
    "coordinator-no-resume-lease-60": {"coordinator": {"resume": False, "leaseTtlSeconds": 60}},
}
# Values the schema accepts but that cannot work: the templates must refuse them.
BAD_CASES = {
    "bad-min-above-max": ({"ray": {"cpuWorkers": {"minReplicas": 5, "maxReplicas": 2,
                                                  "replicas": 2}}},
                          "ray.cpuWorkers: minReplicas (5) is greater than maxReplicas (2)"),
    "bad-replicas-outside": ({"ray": {"gpuWorkers": {"replicas": 9}}},
                             "ray.gpuWorkers: replicas (9) must lie between"),
    "bad-same-group-names": ({"ray": {"gpuWorkers": {"groupName": "qe"}}},
                             "groupName must differ"),
    "bad-no-workers": ({"ray": {"cpuWorkers": {"enabled": False},
                                "gpuWorkers": {"enabled": False}}},
                       "enable at least one worker group"),
    "bad-s3-key-without-secret": ({"store": {"type": "s3", "s3": {"url": "s3://bkt/x",
                                                                  "accessKeyId": "AKIA"}}},
                                  "store.s3.secretAccessKey"),
    "bad-console-ingress-without-console": (
        {"console": {"enabled": False, "ingress": {"enabled": True}}},
        "console.ingress.enabled: the Ingress needs the console"),
    "bad-console-on-the-coordinator-port": ({"console": {"port": 50051}},
                                            "console.port: 50051 is the coordinator's port"),
    # and one the schema itself refuses, through Helm's own schema validation
    "bad-schema-negative": ({"ray": {"cpuWorkers": {"replicas": -2}}}, "replicas"),
}


@pytest.fixture(scope="module")
def rendered():
    return helm_renderer.render_all(CHART, {**CASES, **{k: v for k, (v, _) in BAD_CASES.items()}})


def documents(result) -> list[dict]:
    assert result["ok"], result.get("error")
    docs = []
    for name, text in result["manifests"].items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs, kind, component=None):
    found = [d for d in docs if d["kind"] == kind and (
        component is None
        or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"expected one {kind} ({component}), found {len(found)}"
    return found[0]


def crd_validator():
    schema = json.loads(gzip.decompress(CRD_SCHEMA.read_bytes()))

    def openapi_to_jsonschema(node):
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string"):
                node.pop("type", None)
                node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            for sub in node.values():
                openapi_to_jsonschema(sub)
        elif isinstance(node, list):
            for sub in node:
                openapi_to_jsonschema(sub)

    openapi_to_jsonschema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_to_yaml_and_raycluster_passes_kuberay_crd(rendered, case):
    docs = documents(rendered["cases"][case])
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    rc = one(docs, "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in crd_validator().iter_errors(rc)]
    assert not errors, errors


def test_crd_check_catches_a_planted_error(rendered):
    rc = one(documents(rendered["cases"]["default"]), "RayCluster")
    rc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert any(list(e.absolute_path)[-1] == "maxReplicas"
               for e in crd_validator().iter_errors(rc))


@pytest.mark.parametrize("case", sorted(CASES))
def test_ray_groups_match_values(rendered, case):
    values = helm_merge(load_values(), CASES[case])
    rc = one(documents(rendered["cases"][case]), "RayCluster")
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "work would land on the head"
    groups = {g["groupName"]: g for g in rc["spec"].get("workerGroupSpecs", [])}
    expected = [values["ray"][k] for k in ("cpuWorkers", "gpuWorkers")
                if values["ray"][k]["enabled"]]
    assert set(groups) == {g["groupName"] for g in expected}
    for want in expected:
        got = groups[want["groupName"]]
        assert (got["replicas"], got["minReplicas"], got["maxReplicas"]) == (
            want["replicas"], want["minReplicas"], want["maxReplicas"])
        container = got["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        if "gpusPerPod" in want:
            assert limits["nvidia.com/gpu"] == want["gpusPerPod"]
        else:
            assert "nvidia.com/gpu" not in limits
        if want["customResources"]:
            quoted = got["rayStartParams"]["resources"]
            # KubeRay strips the outer quotes and parses the JSON.
            assert json.loads(quoted.strip("'\"` ").replace('\\"', '"')) == want["customResources"]
    assert rc["spec"].get("enableInTreeAutoscaling", False) == values["ray"]["autoscaler"]["enabled"]


def _pod_specs(rc):
    yield rc["spec"]["headGroupSpec"]["template"]["spec"]
    for group in rc["spec"].get("workerGroupSpecs", []):
        yield group["template"]["spec"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_volumes_store_and_images_are_consistent(rendered, case):
    values = helm_merge(load_values(), CASES[case])
    docs = documents(rendered["cases"][case])
    rc = one(docs, "RayCluster")
    stores = set()
    for spec in _pod_specs(rc):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            assert container["image"].startswith(values["image"]["repository"] + ":")
            for mount in container.get("volumeMounts") or []:
                assert mount["name"] in volumes, f"{container['name']} mounts unknown {mount}"
            env = {e["name"]: e for e in container.get("env", [])}
            stores.add(env["NNMD_STORE"]["value"])
            if values["store"]["type"] == "s3" and (
                    values["store"]["s3"]["existingSecret"] or values["store"]["s3"]["accessKeyId"]):
                ref = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"]
                secret_names = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
                assert ref == values["store"]["s3"]["existingSecret"] or ref in secret_names
        if values["store"]["type"] == "pvc":
            claim = volumes["store"]["persistentVolumeClaim"]["claimName"]
            if values["store"]["pvc"]["create"]:
                assert claim == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert len(stores) == 1, f"pods disagree on the store: {stores}"
    (store,) = stores
    if values["store"]["type"] == "s3":
        assert store == values["store"]["s3"]["url"]
    else:
        assert store.startswith("file://" + values["store"]["pvc"]["mountPath"] + "/")


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "nodeport-no-coordinator-gpu-only"))
def test_coordinator_service_probes_and_token(rendered, case):
    values = helm_merge(load_values(), CASES[case])
    docs = documents(rendered["cases"][case])
    rc = one(docs, "RayCluster")
    pod = rc["spec"]["headGroupSpec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert list(containers)[0] == "ray-head", "KubeRay takes the first container as Ray's"
    coord = containers["coordinator"]
    port = values["coordinator"]["port"]
    assert coord["command"] == ["nnmd"] and coord["args"][:2] == ["serve", "coordinator"]
    args = coord["args"]
    assert args[args.index("--port") + 1] == str(port)
    env = {e["name"]: e.get("value") for e in coord["env"]}
    assert args[args.index("--store") + 1] == env["NNMD_STORE"]
    (grpc_port,) = [p for p in coord["ports"] if p["name"] == "grpc"]
    assert grpc_port["containerPort"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert coord[probe]["grpc"]["port"] == port, probe  # Kubernetes-native gRPC probe

    # A Ray driver needs its raylet's sockets (/tmp/ray) and object store (/dev/shm).
    def mounts(container):
        return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}

    head_mounts, coord_mounts = mounts(containers["ray-head"]), mounts(coord)
    for path in ("/tmp/ray", "/dev/shm"):
        assert coord_mounts.get(path) is not None and coord_mounts[path] == head_mounts.get(path), path
    gcs_port = values["ray"]["head"]["rayStartParams"].get("port", "6379")
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{gcs_port}"

    svc = one(docs, "Service", "coordinator")
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["appProtocol"] == "grpc" and svc_port["targetPort"] == "grpc"
    assert svc_port["port"] == values["coordinator"]["service"]["port"]
    assert svc["spec"]["type"] == values["coordinator"]["service"]["type"]
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service selects no head pod"

    if values["auth"]["enabled"]:
        token_file = args[args.index("--token-file") + 1]
        (mount,) = [m for m in coord["volumeMounts"] if m["name"] == "auth-token"]
        assert token_file == f"{mount['mountPath']}/{values['auth']['secretKey']}"
        volume = {v["name"]: v for v in pod["spec"]["volumes"]}["auth-token"]
        secret_name = volume["secret"]["secretName"]
        if values["auth"]["existingSecret"]:
            assert secret_name == values["auth"]["existingSecret"]
            assert not [d for d in docs if d["kind"] == "Secret"
                        and d["metadata"]["name"] == secret_name]
        else:
            secret = [d for d in docs if d["kind"] == "Secret"
                      and d["metadata"]["name"] == secret_name]
            assert len(secret) == 1
            assert len(secret[0]["data"][values["auth"]["secretKey"]]) >= 40  # base64 of 40 chars
    else:
        assert "--token-file" not in args and "--no-auth" in args
    assert args[args.index("--host") + 1] == "0.0.0.0", "probes and the Service use the pod IP"


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "nodeport-no-coordinator-gpu-only"))
def test_coordinator_survives_a_pod_restart(rendered, case):
    """Issue 18: the coordinator's store (campaign specs, checkpoints, leases) and uploads
    are on the PVC, it resumes campaigns on start, and the kubelet probes its gRPC health."""
    values = helm_merge(load_values(), CASES[case])
    rc = one(documents(rendered["cases"][case]), "RayCluster")
    pod = rc["spec"]["headGroupSpec"]["template"]["spec"]
    coord = {c["name"]: c for c in pod["containers"]}["coordinator"]
    args, env = coord["args"], {e["name"]: e.get("value") for e in coord["env"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert coord[probe]["grpc"]["port"] == values["coordinator"]["port"]
        assert coord[probe]["periodSeconds"] > 0 and coord[probe]["failureThreshold"] >= 1
    assert ("--no-resume" in args) == (not values["coordinator"]["resume"])
    assert env["NNMD_LEASE_TTL_S"] == str(values["coordinator"]["leaseTtlSeconds"])
    if values["store"]["type"] == "pvc":
        pvc = values["store"]["pvc"]
        mounts = {m["mountPath"]: m["name"] for m in coord["volumeMounts"]}
        assert mounts.get(pvc["mountPath"]) == "store"
        claim = {v["name"]: v for v in pod["volumes"]}["store"]["persistentVolumeClaim"]
        assert claim["claimName"]
        store = args[args.index("--store") + 1]
        assert store == f"file://{pvc['mountPath'].rstrip('/')}/{pvc['path']}"
        uploads = args[args.index("--upload-dir") + 1]
        assert uploads.startswith(pvc["mountPath"].rstrip("/") + "/")
    else:
        assert "--upload-dir" not in args


def test_coordinator_off_renders_no_service(rendered):
    docs = documents(rendered["cases"]["nodeport-no-coordinator-gpu-only"])
    assert not [d for d in docs if d["kind"] == "Service"]
    rc = one(docs, "RayCluster")
    assert [c["name"] for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]] == [
        "ray-head"]


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_values_that_cannot_work_fail_at_render_naming_the_field(rendered, case):
    result = rendered["cases"][case]
    _, message = BAD_CASES[case]
    assert not result["ok"], f"{case} rendered although it cannot work"
    assert message in result["error"], result["error"]


def test_notes_say_how_to_install_kuberay_and_reach_the_coordinator(rendered):
    manifests = rendered["cases"]["default"]["manifests"]
    notes = [text for name, text in manifests.items() if name.endswith("NOTES.txt")]
    if not notes:
        pytest.skip("`helm template` does not render NOTES.txt")
    (text,) = notes
    assert "helm repo add kuberay https://ray-project.github.io/kuberay-helm/" in text
    assert "helm install kuberay-operator kuberay/kuberay-operator" in text
    assert "port-forward" in text and "demo-nnmd-coordinator" in text and "NNMD_TOKEN" in text


def test_helm_lint_strict_is_clean(rendered):
    lint = rendered["lint"]
    assert not lint["errors"] and not lint["messages"], lint


@pytest.mark.parametrize("case", sorted(CASES))
def test_console_service_ingress_and_port(rendered, case):
    """The console: --web-port on the coordinator, a named container port, its own
    Service selecting the head pod, and the Ingress (when asked for) routing to it."""
    values = helm_merge(load_values(), CASES[case])
    docs = documents(rendered["cases"][case])
    console = values["console"]
    on = console["enabled"] and values["coordinator"]["enabled"]
    services = [d for d in docs if d["kind"] == "Service"
                and d["metadata"]["labels"].get("app.kubernetes.io/component") == "console"]
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    if not on:
        assert not services and not ingresses
        if values["coordinator"]["enabled"]:
            rc = one(docs, "RayCluster")
            coord = {c["name"]: c for c in
                     rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]}["coordinator"]
            assert "--web-port" not in coord["args"]
            assert [p["name"] for p in coord["ports"]] == ["grpc"]
        return
    rc = one(docs, "RayCluster")
    pod = rc["spec"]["headGroupSpec"]["template"]
    coord = {c["name"]: c for c in pod["spec"]["containers"]}["coordinator"]
    args = coord["args"]
    assert args[args.index("--web-port") + 1] == str(console["port"])
    (http,) = [p for p in coord["ports"] if p["name"] == "http"]
    assert http["containerPort"] == console["port"]
    (svc,) = services
    assert svc["spec"]["type"] == console["service"]["type"]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http" and port["port"] == console["service"]["port"]
    if console["service"]["type"] == "NodePort" and console["service"]["nodePort"]:
        assert port["nodePort"] == console["service"]["nodePort"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    if not console["ingress"]["enabled"]:
        assert not ingresses
        return
    (ing,) = ingresses
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    assert ing["spec"].get("ingressClassName", "") == console["ingress"]["className"]
    assert ing["metadata"]["annotations"] == console["ingress"]["annotations"]
    assert ing["spec"].get("tls", []) == console["ingress"]["tls"]
    (rule,) = ing["spec"]["rules"]
    assert rule.get("host", "") == console["ingress"]["host"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == console["ingress"]["path"]
    assert path["backend"]["service"] == {"name": svc["metadata"]["name"],
                                          "port": {"name": "http"}}


def test_notes_say_how_to_open_the_console(rendered):
    for case, expected in (("default", "svc/demo-nnmd-console 8080:8080"),
                           ("console-nodeport-ingress-tls", "https://console.example.org/")):
        manifests = rendered["cases"][case]["manifests"]
        notes = [text for name, text in manifests.items() if name.endswith("NOTES.txt")]
        if not notes:
            pytest.skip("`helm template` does not render NOTES.txt")
        assert "web console" in notes[0] and expected in notes[0], notes[0]
