"""The chart rendered and linted with Helm's own library, every object checked against the
Kubernetes 1.33 schemas, for the default values and each documented option."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.install.chart import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    of_kind,
    one,
    operator_container,
    render,
    render_error,
)
from tests.install.restricted import restricted_violations

# Each documented option, as values a user would pass.
OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "metrics-and-servicemonitor": {
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "metrics-only": {"metrics": {"enabled": True, "port": 9100}},
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "network-policy-peers": {
        "networkPolicy": {
            "namespaces": ["models"],
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    },
    "pull-secrets": {"image": {"pullSecrets": ["regcred", "mirror"], "pullPolicy": "Always"}},
    "images": {
        "image": {"repository": "registry.example/sg/operator", "tag": "1.2.3"},
        "runtimeImage": {
            "cpu": {"repository": "registry.example/sg/runtime", "tag": "1.2.3"},
            "gpu": {"repository": "registry.example/sg/runtime-gpu", "tag": "1.2.3-cuda12"},
        },
    },
    "resources": {"resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}}},
    "scheduling": {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
    },
    "log-level": {"logLevel": "debug"},
}

# Kinds kubernetes-validate has no schema for: CRDs of other projects. Only these are skipped.
NOT_BUILT_IN = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@pytest.mark.parametrize("option", OPTIONS)
def test_every_object_is_valid_kubernetes(option: str) -> None:
    objects = render(OPTIONS[option])
    assert objects
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in NOT_BUILT_IN:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("option", OPTIONS)
def test_lint_is_clean(option: str) -> None:
    report = helm.lint(CHART, OPTIONS[option], strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


def test_values_validate_against_the_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        for values in OPTIONS.values():
            chart.validate_schema(chart.merge_values(values))


def test_namespaced_objects_name_their_namespace() -> None:
    """deploy/servegraph.yaml is applied without Helm: every namespaced object says where."""
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "Namespace"}
    for values in OPTIONS.values():
        for obj in render(values):
            if obj["kind"] not in cluster_scoped:
                assert obj["metadata"].get("namespace"), obj["metadata"]["name"]


# O11: exactly one active operator.
def test_one_replica_recreated_never_rolled() -> None:
    for values in OPTIONS.values():
        deployment = one(render(values), "Deployment")
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_more_replicas_are_refused() -> None:
    message = render_error({"replicas": 2})
    assert "/replicas" in message and "must be 1" in message


# S1: the operator's pod is PSS "restricted".
@pytest.mark.parametrize("option", OPTIONS)
def test_operator_pod_is_restricted(option: str) -> None:
    pod = one(render(OPTIONS[option]), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["securityContext"]["runAsUser"] == 65532


def test_restricted_checker_catches_each_rule() -> None:
    """The checker is not vacuous: a pod breaking each rule is reported."""
    pod = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [
            {
                "name": "c",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            }
        ],
    }
    problems = "\n".join(restricted_violations(pod))
    for expected in (
        "hostNetwork", "runAsUser is 0", "hostPath", "privileged", "hostPort", "allowPrivilegeEscalation",
        "runAsNonRoot", "seccompProfile", "drop must include ALL", "SYS_ADMIN", "readOnlyRootFilesystem",
    ):
        assert expected in problems, expected


def test_operator_arguments_and_environment() -> None:
    container = operator_container(render())
    assert container["args"] == [
        "operator", "--all-namespaces", "--liveness-port=8080", "--metrics-port=9090", "--log-level=info"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SERVEGRAPH_RUNTIME_IMAGE"] == "ghcr.io/servegraph/runtime:0.1.0"
    assert env["SERVEGRAPH_RUNTIME_GPU_IMAGE"] == "ghcr.io/servegraph/runtime-gpu:0.1.0"
    assert container["image"] == "ghcr.io/servegraph/operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]


def test_watched_namespaces_become_arguments() -> None:
    container = operator_container(render(OPTIONS["watch-namespaces"]))
    assert container["args"][:3] == ["operator", "--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in container["args"]
    assert "--log-level=debug" in operator_container(render(OPTIONS["log-level"]))["args"]


def test_images_come_from_values() -> None:
    container = operator_container(render(OPTIONS["images"]))
    assert container["image"] == "registry.example/sg/operator:1.2.3"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SERVEGRAPH_RUNTIME_IMAGE"] == "registry.example/sg/runtime:1.2.3"
    assert env["SERVEGRAPH_RUNTIME_GPU_IMAGE"] == "registry.example/sg/runtime-gpu:1.2.3-cuda12"


def test_pull_secrets_and_policy() -> None:
    deployment = one(render(OPTIONS["pull-secrets"]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    assert "imagePullSecrets" not in one(render(), "Deployment")["spec"]["template"]["spec"]


def test_resources_and_scheduling() -> None:
    container = operator_container(render(OPTIONS["resources"]))
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}}
    pod = one(render(OPTIONS["scheduling"]), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == OPTIONS["scheduling"]["nodeSelector"]
    assert pod["tolerations"] == OPTIONS["scheduling"]["tolerations"]
    assert pod["affinity"] == OPTIONS["scheduling"]["affinity"]
    default_pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity"} & default_pod.keys()


def test_metrics_service_and_service_monitor() -> None:
    assert of_kind(render(), "Service") == [] and of_kind(render(), "ServiceMonitor") == []
    only_metrics = render(OPTIONS["metrics-only"])
    assert of_kind(only_metrics, "ServiceMonitor") == []
    service = one(only_metrics, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    assert "--metrics-port=9100" in operator_container(only_metrics)["args"]
    objects = render(OPTIONS["metrics-and-servicemonitor"])
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_service_monitor_without_metrics_is_refused() -> None:
    message = render_error({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert "metrics.serviceMonitor.enabled needs metrics.enabled" in message


def test_crds_folder_is_not_rendered_as_templates() -> None:
    assert of_kind(render(), "CustomResourceDefinition") == []


# A kubeconfig for a server that does not exist: a client-side dry run never calls it.
UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def test_client_dry_run_install() -> None:
    """`helm install --dry-run=client`: Chart.yaml's kubeVersion is met, NOTES render, and the
    release's manifest is the objects rendered above."""
    import yaml

    with helm.Config(kubeconfig_content=UNREACHABLE_KUBECONFIG, storage_driver="memory", namespace=NAMESPACE) as config:
        release = config.install(CHART, "servegraph", {}, namespace=NAMESPACE, dry_run="client")
    assert release["app_version"] == "0.1.0"
    assert "It serves ModelDeployments in every namespace." in release["notes"]
    installed = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, installed)) == sorted(map(key, render()))
