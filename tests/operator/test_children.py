"""The operator's desired objects: every example rendered, validated and held to PSS "restricted"."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from servegraph.operator.children import (
    CONFIG_HASH,
    GPU_TOLERATION,
    desired_children,
    object_name,
)
from servegraph.operator.manifest import load_manifest, parse_manifest
from servegraph.operator.settings import OperatorSettings
from servegraph.operator.spec import ModelDeployment
from servegraph.operator.validation import SpecError
from tests.install.restricted import restricted_violations
from tests.operator.conftest import GRAPH, MANIFESTS, ROOT, node

EXAMPLES = sorted((ROOT / "examples" / "graphs").glob("*.yaml")) + sorted(MANIFESTS.glob("*.yaml"))
SETTINGS = OperatorSettings()
UID = "0b9f7a3e-1111-4222-8333-444455556666"


def _objects(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return desired_children(parse_manifest(manifest), UID, SETTINGS).objects


def assert_restricted(pod: dict[str, Any]) -> None:
    """PSS "restricted" (tests/install/restricted.py, also used on the chart's operator pod),
    plus: only a bandit router reaches the API, with its own account."""
    assert restricted_violations(pod) == []
    assert pod.get("automountServiceAccountToken") is bool(pod.get("serviceAccountName"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_object_of_every_example_is_valid_kubernetes(path: Path) -> None:
    deployment = load_manifest(path)
    objects = desired_children(deployment, UID, SETTINGS).objects
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "ConfigMap" and kinds.count("Deployment") == kinds.count("Service")
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
        meta = obj["metadata"]
        assert "generateName" not in meta
        assert len(meta["name"]) <= 63
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "servegraph"
        assert meta["labels"]["app.kubernetes.io/part-of"] == deployment.metadata.name
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "servegraph.io/v1alpha1", "kind": "ModelDeployment", "name": owner["name"],
            "uid": UID, "controller": True, "blockOwnerDeletion": True,
        }  # fmt: skip
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            assert_restricted(template["spec"])
            assert obj["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            assert obj["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
            (container,) = template["spec"]["containers"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
            assert template["spec"]["terminationGracePeriodSeconds"] > SETTINGS.exit_timeout_secs
        if obj["kind"] == "Service":
            assert [(p["name"], p["port"]) for p in obj["spec"]["ports"]] == [
                ("http", 8000), ("grpc", 8001), ("metrics", 8002),
            ]  # fmt: skip


def test_rendering_is_deterministic() -> None:
    assert _objects(GRAPH) == _objects(copy.deepcopy(GRAPH))


def _by_name(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_children_are_wired_by_service_dns_names() -> None:
    objects = _objects(GRAPH)
    config = objects[0]["data"]
    assert sorted(config) == ["a.overrides.json", "b.overrides.json", "c.overrides.json", "ens.json", "pre.json", "split.json"]
    split = yaml.safe_load(config["split.json"])
    assert [c["grpc"] for c in split["children"]] == ["graph-a.default.svc:8001", "graph-ens.default.svc:8001"]
    pre = _by_name(objects, "Deployment")["graph-pre"]["spec"]["template"]["spec"]["containers"][0]
    assert pre["args"][-2:] == ["--node-config", "/etc/servegraph/pre.json"]


def test_a_changed_node_rolls_only_its_own_deployment() -> None:
    before = _by_name(_objects(GRAPH), "Deployment")
    changed = copy.deepcopy(GRAPH)
    node(changed, "ens")["combiner"] = {"method": "Max"}
    after = _by_name(_objects(changed), "Deployment")
    rolled = [n for n in before if before[n]["spec"]["template"] != after[n]["spec"]["template"]]
    assert rolled == ["graph-ens"]
    hashes = {n: d["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH] for n, d in after.items()}
    assert hashes["graph-ens"] != before["graph-ens"]["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]


def test_a_gpu_model_gets_the_gpu_image_limits_and_toleration() -> None:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "a")["model"].update(
        resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    )
    pod = _by_name(_objects(manifest), "Deployment")["graph-a"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == SETTINGS.runtime_gpu_image
    assert pod["initContainers"][0]["image"] == SETTINGS.runtime_gpu_image
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}, GPU_TOLERATION,
    ]  # fmt: skip
    other = _by_name(_objects(manifest), "Deployment")["graph-b"]["spec"]["template"]["spec"]
    assert other["containers"][0]["image"] == SETTINGS.runtime_image and "tolerations" not in other


def test_credentials_reach_only_the_model_puller() -> None:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "a")["model"].update(storageUri="s3://bucket/models/a", storageSecret="s3-creds")
    pod = _by_name(_objects(manifest), "Deployment")["graph-a"]["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert fetch["args"][:3] == ["fetch", "s3://bucket/models/a", "/var/lib/servegraph/fetched/a"]
    assert "--overrides" in fetch["args"] and "envFrom" not in pod["containers"][0] and "env" not in pod["containers"][0]


def test_a_pvc_uri_is_mounted_read_only() -> None:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "b")["model"]["storageUri"] = "pvc://models-claim/scorers/b"
    pod = _by_name(_objects(manifest), "Deployment")["graph-b"]["spec"]["template"]["spec"]
    assert {"name": "claim", "persistentVolumeClaim": {"claimName": "models-claim", "readOnly": True}} in pod["volumes"]
    assert pod["initContainers"][0]["args"][1] == "/mnt/models/scorers/b"
    assert {"name": "claim", "mountPath": "/mnt/models", "readOnly": True} in pod["initContainers"][0]["volumeMounts"]


def test_autoscaling_leaves_replicas_to_the_hpa_and_adds_a_budget() -> None:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "a")["model"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 5, "targetCpuUtilizationPercentage": 70}
    node(manifest, "b")["model"]["replicas"] = 3
    objects = _objects(manifest)
    deployments = _by_name(objects, "Deployment")
    assert "replicas" not in deployments["graph-a"]["spec"] and deployments["graph-b"]["spec"]["replicas"] == 3
    (hpa,) = _by_name(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "graph-a"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert sorted(_by_name(objects, "PodDisruptionBudget")) == ["graph-a", "graph-b"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_long_names_stay_dns_labels_and_distinct() -> None:
    manifest = copy.deepcopy(GRAPH)
    manifest["metadata"]["name"] = "m" * 60
    deployment: ModelDeployment = parse_manifest(manifest)
    names = {object_name(deployment, n) for n in ("a", "b", "c", "ens", "pre", "split")}
    assert len(names) == 6 and all(len(n) <= 63 for n in names)


def test_an_invalid_spec_renders_nothing() -> None:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "split")["children"] = ["a", "nowhere"]
    with pytest.raises(SpecError, match="nowhere"):
        _objects(manifest)


RESOURCE_CASES = [
    {},
    {"resources": {"cpu": "500m", "memory": "1Gi"}},
    {"resources": {"gpu": 2}, "replicas": 2},
    {"storageUri": "pvc://claim/x", "tolerations": [{"operator": "Exists"}]},
    {"autoscaling": {"maxReplicas": 3, "targetConcurrency": 8}},
]


@pytest.mark.parametrize("extra", RESOURCE_CASES)
def test_every_pod_is_restricted_whatever_the_model_asks(extra: dict[str, Any]) -> None:
    manifest = copy.deepcopy(GRAPH)
    for name in ("a", "b", "c"):
        node(manifest, name)["model"].update(copy.deepcopy(extra))
    for obj in _objects(manifest):
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
        if obj["kind"] == "Deployment":
            assert_restricted(obj["spec"]["template"]["spec"])


def test_a_bandit_router_shares_its_state_through_a_config_map_only_it_may_touch() -> None:
    deployment = load_manifest(ROOT / "examples" / "graphs" / "bandit.yaml")
    objects = desired_children(deployment, UID, SETTINGS).objects
    (router,) = [n.name for n in deployment.spec.nodes if n.router is not None and n.router.strategy in ("EpsilonGreedy", "ThompsonSampling")]
    name = object_name(deployment, router)
    state = f"{name}-state"
    config = yaml.safe_load(objects[0]["data"][f"{router}.json"])
    assert config["router"]["state_config_map"] == state and not config["router"].get("state_file")
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [state], "verbs": ["get", "patch"]}]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": deployment.metadata.namespace}]
    assert state in [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
    pod = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is True
    assert [e["name"] for e in pod["containers"][0]["env"]] == ["POD_NAME", "POD_NAMESPACE"]
    others = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] != name]
    assert all(o["spec"]["template"]["spec"]["automountServiceAccountToken"] is False for o in others)


QUANTITIES = st.sampled_from(["100m", "2", "0.5", "512Mi", "4Gi"])
MODEL_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "resources": st.fixed_dictionaries(
            {}, optional={"cpu": QUANTITIES, "memory": QUANTITIES, "gpu": st.integers(0, 4)}
        ),
        "replicas": st.integers(1, 5),
        "autoscaling": st.builds(
            lambda low, extra, cpu: {"minReplicas": low, "maxReplicas": low + extra, "targetCpuUtilizationPercentage": cpu},
            st.integers(1, 3), st.integers(0, 5), st.integers(10, 100),
        ),
        "storageUri": st.sampled_from(["models/m", "s3://bucket/m", "gs://bucket/m", "https://x/m.tgz", "pvc://claim/m"]),
        "storageSecret": st.sampled_from(["creds", "s3-keys"]),
        "nodeSelector": st.dictionaries(st.sampled_from(["gpu", "zone", "pool"]), st.sampled_from(["a", "b"]), max_size=2),
        "tolerations": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["ml", "spot"]), "operator": st.just("Exists")}), max_size=2),
    },
)


@settings(max_examples=25, deadline=None)
@given(models=st.lists(MODEL_SETTINGS, min_size=3, max_size=3), bandit=st.booleans())
def test_generated_specs_render_restricted_valid_pods(models: list[dict[str, Any]], bandit: bool) -> None:
    """S1 over many specs: whatever a model asks for, every pod is restricted and valid."""
    manifest = copy.deepcopy(GRAPH)
    for name, extra in zip(("a", "b", "c"), models, strict=True):
        node(manifest, name)["model"].update(copy.deepcopy(extra))
    if bandit:
        node(manifest, "split")["router"] = {"strategy": "ThompsonSampling"}
    for obj in _objects(manifest):
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
        if obj["kind"] == "Deployment":
            assert_restricted(obj["spec"]["template"]["spec"])


def test_transformer_files_resolve_inside_the_runtime_image() -> None:
    """A step's relative file (written for servegraph run) is read where the image ships examples."""
    deployment = load_manifest(ROOT / "examples" / "graphs" / "transformer-chain.yaml")
    objects = desired_children(deployment, UID, SETTINGS).objects
    files = [
        step[key]
        for text in objects[0]["data"].values()
        for side in ("input", "output")
        for step in (yaml.safe_load(text).get("transformer") or {}).get(side, [])
        for key in ("params_file", "reference_file", "file")
        if step.get(key)
    ]
    assert files and all(f.startswith(SETTINGS.relative_model_root + "/") for f in files), files
