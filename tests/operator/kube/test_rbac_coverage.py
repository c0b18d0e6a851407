"""S2: the chart's RBAC rules are exactly what the operator calls, no more, no less.

One operator run that touches every kind it manages (a bandit router with its state
account, an autoscaled model with its budget, Events posted by kopf) records every request
on the emulator; each must be allowed by charts/servegraph/rbac-rules.yaml, and each rule
there must have been used (or be listed as delegated, with its reason).
"""

from __future__ import annotations

import copy
from typing import Any

import kopf
import kubernetes.client

from servegraph.operator.handlers import post_event, register
from servegraph.operator.kube import Kube
from servegraph.operator.reconcile import Reconciler
from servegraph.operator.settings import OperatorSettings
from tests.install.rbac import never_used, not_allowed
from tests.operator.conftest import GRAPH, node

from .conftest import OperatorRunner
from .emulator import MODELDEPLOYMENTS, ServegraphEmulator, eventually
from .test_reconcile import FULL, NS, condition, mdep, names, roll_out, settled


def _everything() -> dict[str, Any]:
    manifest = copy.deepcopy(GRAPH)
    node(manifest, "split")["router"] = {"strategy": "EpsilonGreedy", "epsilon": 0.1}
    node(manifest, "a")["model"]["autoscaling"] = {"minReplicas": 2, "maxReplicas": 4}
    node(manifest, "ens")["children"] = ["b", "c", "d"]
    manifest["spec"]["nodes"].append({"name": "d", "type": "Model", "model": {"storageUri": "models/d"}})
    return manifest


HAND_EDITS = {
    "services": ("graph-pre", {"spec": {"ports": [{"name": "http", "port": 80}]}}),
    "serviceaccounts": ("graph-split", {"automountServiceAccountToken": True}),
    "horizontalpodautoscalers": ("graph-a", {"spec": {"maxReplicas": 40}}),
    "poddisruptionbudgets": ("graph-a", {"spec": {"maxUnavailable": 3}}),
    "roles": ("graph-split", {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
    "rolebindings": ("graph-split", {"subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]}),
}
"""What someone changes by hand in each kind; the operator must put each back."""


async def test_every_call_is_allowed_and_every_rule_is_used(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, api_client: kubernetes.client.ApiClient
) -> None:
    reconciler = Reconciler(Kube(api_client, backoffs=(0.05, 0.1)), OperatorSettings(), notify=post_event)
    registry = kopf.OperatorRegistry()
    register(registry, reconciler)

    def posting(settings: kopf.OperatorSettings) -> None:
        settings.posting.enabled = True

    async with run_operator(registry, posting, watched=[MODELDEPLOYMENTS, *FULL.values()]):
        emulator.create_object(MODELDEPLOYMENTS, _everything(), namespace=NS)
        await eventually(timeout=15, predicate=lambda: len(names(emulator, "deployments")) == 7, what="seven Deployments")
        roll_out(emulator)
        await eventually(timeout=15, predicate=lambda: (condition(mdep(emulator), "Ready") or {}).get("status") == "True", what="Ready")
        await settled(emulator)
        for plural, (name, edit) in HAND_EDITS.items():
            before = len(emulator.writes("patch", plural))
            emulator.patch_object(FULL[plural], NS, name, edit)
            await eventually(timeout=15, predicate=lambda: len(emulator.writes("patch", plural)) > before, what=f"{plural} put back")
        # Back to the plain graph: node d, the HPA, the budget and the router's account go.
        emulator.patch_object(MODELDEPLOYMENTS, NS, "graph", {"spec": {"nodes": GRAPH["spec"]["nodes"]}})
        await eventually(timeout=15, predicate=lambda: not emulator.list_objects("autoscaling/v2/horizontalpodautoscalers", NS)
                         and not emulator.list_objects("rbac.authorization.k8s.io/v1/roles", NS))  # fmt: skip
        await settled(emulator)
    calls = {(verb, group, resource) for group, resource, verb in emulator.rbac_rules()}
    assert not_allowed(calls) == set()
    unused = sorted(never_used(calls))
    assert unused == [], "\n".join(map(str, unused))
