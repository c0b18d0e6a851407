"""S2, the static half: the operator's RBAC as rendered. The rules are written once, in
charts/servegraph/rbac-rules.yaml; the operator's suite checks them against its calls."""

from __future__ import annotations

from typing import Any

from tests.install import rbac
from tests.install.chart import CHART, NAMESPACE, of_kind, one, rbac_rules_file, render

ESCALATING = {"escalate", "bind", "impersonate"}

# What the operator calls (the lead's list for issue 9), plus `update` on configmaps, held
# only so that it may grant it in a bandit router's state Role (RBAC escalation check).
EXPECTED = {
    ("servegraph.io", "modeldeployments"): {"get", "list", "watch"},
    ("servegraph.io", "modeldeployments/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "list", "watch", "create", "patch", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "list", "watch", "create", "patch", "delete"},
}


def permissions(rule_list: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, over all rules."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rule_list:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def file_rules() -> list[dict[str, Any]]:
    return rbac.rules()


def test_rules_file_is_what_the_operator_needs() -> None:
    assert permissions(file_rules()) == EXPECTED
    for rule in rbac_rules_file()["rules"]:
        assert rule["reason"].strip(), rule  # every rule says why
    # Nothing is held that the operator does not call itself (tests/operator/kube/test_rbac_coverage.py).
    assert rbac_rules_file()["delegated"] == []


def test_all_namespaces_gets_one_cluster_role_with_the_file_rules() -> None:
    objects = render()
    assert of_kind(objects, "Role") == [] and of_kind(objects, "RoleBinding") == []
    role, binding = one(objects, "ClusterRole"), one(objects, "ClusterRoleBinding")
    assert role["rules"] == file_rules()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    account = one(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_watched_namespaces_get_roles_and_nothing_cluster_wide() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    assert of_kind(objects, "ClusterRole") == [] and of_kind(objects, "ClusterRoleBinding") == []
    roles, bindings = of_kind(objects, "Role"), of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == file_rules()
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_no_wildcards_escalation_or_secrets() -> None:
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        for obj in render(values):
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                    assert "*" not in rule.get(field, []), (obj["kind"], rule)
                assert not ESCALATING & set(rule["verbs"]), rule
                assert "secrets" not in rule["resources"], rule
                assert "nonResourceURLs" not in rule, rule


def test_rule_reasons_are_comments_in_the_template_output() -> None:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        text = chart.render({}, name="servegraph", namespace=NAMESPACE, is_install=True)["servegraph/templates/rbac.yaml"]
    for rule in rbac_rules_file()["rules"]:
        assert f"# {rule['reason']}" in text


def test_s2_helpers() -> None:
    """What the operator's suite will call with its recorded requests."""
    every_call = {(verb, group, resource) for (group, resource), verbs in EXPECTED.items() for verb in verbs}
    calls = every_call - rbac.delegated()
    assert rbac.not_allowed(calls) == set()
    assert rbac.never_used(calls) == set()
    assert rbac.not_allowed(calls | {("list", "", "secrets")}) == {("list", "", "secrets")}
    assert rbac.never_used(calls - {("delete", "apps", "deployments")}) == {("delete", "apps", "deployments")}
    assert rbac.delegated() == set()
