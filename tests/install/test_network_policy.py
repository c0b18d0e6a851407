"""S3: graph pods deny ingress by default and allow only the serving and metrics ports."""

from __future__ import annotations

from tests.install.chart import NAMESPACE, of_kind, one, render

# The labels the operator puts on every graph pod (issue 9); the policies select on two.
GRAPH_POD = {
    "app.kubernetes.io/name": "servegraph-node",
    "app.kubernetes.io/managed-by": "servegraph",
    "app.kubernetes.io/instance": "ab-test",
    "servegraph.io/deployment": "ab-test",
    "servegraph.io/node": "scorer-a",
    "servegraph.io/role": "model",
}
SERVING = [{"port": 8000, "protocol": "TCP"}, {"port": 8001, "protocol": "TCP"}]


def policies(values: dict | None = None) -> dict[tuple[str, str], dict]:
    return {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in of_kind(render(values), "NetworkPolicy")}


def test_default_deny_and_allow_in_the_release_namespace() -> None:
    found = policies()
    assert set(found) == {(NAMESPACE, "servegraph-nodes-default-deny"), (NAMESPACE, "servegraph-nodes-allow")}
    deny = found[(NAMESPACE, "servegraph-nodes-default-deny")]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    for policy in found.values():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= GRAPH_POD.items()
        assert "app.kubernetes.io/instance" not in selector  # all graphs, not one
    allow = found[(NAMESPACE, "servegraph-nodes-allow")]["spec"]["ingress"]
    assert allow == [
        {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "servegraph-node", "app.kubernetes.io/managed-by": "servegraph"}}}], "ports": SERVING},
        {"ports": [{"port": 8002, "protocol": "TCP"}]},
    ]


def test_operator_pod_is_not_selected() -> None:
    deployment = one(render(), "Deployment")
    operator_pod = deployment["spec"]["template"]["metadata"]["labels"]
    for policy in policies().values():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert not selector.items() <= operator_pod.items()


def test_policies_follow_the_watched_namespaces() -> None:
    found = policies({"watchNamespaces": ["team-a", "team-b"]})
    assert {ns for ns, _ in found} == {"team-a", "team-b"}
    found = policies({"watchNamespaces": ["team-a"], "networkPolicy": {"namespaces": ["models"]}})
    assert {ns for ns, _ in found} == {"models"}


def test_ingress_and_metrics_peers() -> None:
    nginx = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    found = policies({"networkPolicy": {"ingressFrom": [nginx], "metricsFrom": [monitoring]}})
    rules = found[(NAMESPACE, "servegraph-nodes-allow")]["spec"]["ingress"]
    assert rules[1] == {"from": [nginx], "ports": SERVING}
    assert rules[2] == {"from": [monitoring], "ports": [{"port": 8002, "protocol": "TCP"}]}
    for rule in rules:
        assert {p["port"] for p in rule["ports"]} <= {8000, 8001, 8002}


def test_disabled() -> None:
    assert policies({"networkPolicy": {"enabled": False}}) == {}
