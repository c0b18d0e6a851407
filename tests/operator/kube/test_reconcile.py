"""The operator end to end on an API server: kopf embedded, the reconciler, the emulator.

Every test creates ModelDeployments through the emulator and watches what the operator
does over real HTTP: children created, status written, drift repaired, nodes added and
removed, errors injected, and the count of write requests when nothing changed (zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

import kopf
import kubernetes.client
import pytest

from servegraph.operator.handlers import register
from servegraph.operator.kube import Kube
from servegraph.operator.reconcile import Reconciler
from servegraph.operator.settings import OperatorSettings
from tests.operator.conftest import GRAPH, node

from .conftest import OperatorRunner
from .emulator import MODELDEPLOYMENTS, ServegraphEmulator, eventually

NS = "default"
FULL = {
    "deployments": "apps/v1/deployments", "services": "v1/services", "configmaps": "v1/configmaps", "pods": "v1/pods",
    "serviceaccounts": "v1/serviceaccounts", "horizontalpodautoscalers": "autoscaling/v2/horizontalpodautoscalers",
    "poddisruptionbudgets": "policy/v1/poddisruptionbudgets", "roles": "rbac.authorization.k8s.io/v1/roles",
    "rolebindings": "rbac.authorization.k8s.io/v1/rolebindings",
}  # fmt: skip
"""The emulator's in-process accessors want a resource's group and version."""
NODES = ["a", "b", "c", "ens", "pre", "split"]


class Recorder:
    """The Events the reconciler would post, kept for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, body: dict[str, Any], reason: str, message: str, warning: bool) -> None:
        self.events.append((reason, message))


@pytest.fixture()
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture()
def reconciler(api_client: kubernetes.client.ApiClient, recorder: Recorder) -> Reconciler:
    kube = Kube(api_client, backoffs=(0.05, 0.1, 0.2))  # short: a stopped emulator must not hold teardown
    return Reconciler(kube, OperatorSettings(), notify=recorder, now=lambda: "2026-12-03T00:00:00Z")


def operating(run_operator: OperatorRunner, reconciler: Reconciler) -> contextlib.AbstractAsyncContextManager[None]:
    """The operator running in the test's own task (kopf cancels tasks it did not see start,
    so it cannot live in an async fixture, whose teardown runs in a new task)."""
    registry = kopf.OperatorRegistry()
    register(registry, reconciler)
    return run_operator(registry, watched=[MODELDEPLOYMENTS, *FULL.values()])


def create(emulator: ServegraphEmulator, manifest: dict[str, Any]) -> dict[str, Any]:
    return emulator.create_object(MODELDEPLOYMENTS, manifest, namespace=NS)


def mdep(emulator: ServegraphEmulator, name: str = "graph") -> dict[str, Any]:
    found = emulator.get_object(MODELDEPLOYMENTS, NS, name)
    assert found is not None
    return found


def condition(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def names(emulator: ServegraphEmulator, resource: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in emulator.list_objects(FULL[resource], NS))


def roll_out(emulator: ServegraphEmulator) -> None:
    """What the Deployment controller would report once every pod is up."""
    for deployment in emulator.list_objects(FULL["deployments"], NS):
        meta = deployment["metadata"]
        replicas = deployment["spec"].get("replicas", 1)
        emulator.patch_object(
            FULL["deployments"], NS, meta["name"],
            {"status": {"observedGeneration": meta.get("generation", 1), "replicas": replicas,
                        "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}},
            subresource="status",
        )  # fmt: skip


async def settled(emulator: ServegraphEmulator, quiet: float = 0.5, timeout: float = 20.0) -> int:
    """Wait until no write has happened for ``quiet`` seconds; the number of writes so far."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count, since = len(emulator.writes(ok=True)), loop.time()
    while loop.time() - since < quiet:
        if loop.time() > deadline:
            raise AssertionError("the operator keeps writing")
        await asyncio.sleep(0.05)
        now = len(emulator.writes(ok=True))
        if now != count:
            count, since = now, loop.time()
    return count


async def converged(emulator: ServegraphEmulator) -> dict[str, Any]:
    """Create GRAPH, let the operator build it, report the pods up; the ready body."""
    create(emulator, copy.deepcopy(GRAPH))
    await eventually(timeout=15, predicate=lambda: len(names(emulator, "deployments")) == 6, what="six Deployments")
    roll_out(emulator)
    await eventually(timeout=15, predicate=lambda: (condition(mdep(emulator), "Ready") or {}).get("status") == "True", what="Ready=True")
    await settled(emulator)
    return mdep(emulator)


async def test_a_new_graph_gets_its_children_and_a_truthful_status(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    async with operating(run_operator, reconciler):
        create(emulator, copy.deepcopy(GRAPH))
        await eventually(timeout=15, predicate=lambda: condition(mdep(emulator), "Ready"), what="a Ready condition")
        assert names(emulator, "deployments") == [f"graph-{n}" for n in NODES]
        assert names(emulator, "services") == [f"graph-{n}" for n in NODES]
        assert names(emulator, "configmaps") == ["graph-graph"]
        body = mdep(emulator)
        status = body["status"]
        assert status["observedGeneration"] == body["metadata"]["generation"]
        assert condition(body, "Ready")["status"] == "False"  # type: ignore[index]
        assert {n["name"]: n["reason"] for n in status["nodes"]} == dict.fromkeys(NODES, "Progressing")
        assert status["url"] == "http://graph-pre.default.svc:8000/v2/models/graph"
        uid = body["metadata"]["uid"]
        for obj in emulator.list_objects(FULL["deployments"], NS) + emulator.list_objects(FULL["services"], NS):
            (owner,) = obj["metadata"]["ownerReferences"]
            assert owner["uid"] == uid and owner["controller"] is True
        # One POST per object, no finalizer, nothing written to the spec.
        creates = [w[2] for w in emulator.writes("create")]
        assert sorted(creates) == ["configmaps"] + ["deployments"] * 6 + ["services"] * 6
        assert not body["metadata"].get("finalizers")
        spec_writes = [c for c in emulator.calls if c.resource == "modeldeployments" and c.verb != "get"
                       and c.verb != "list" and c.verb != "watch" and c.subresource != "status"]
        assert spec_writes == []  # the operator writes only /status


async def test_ready_after_the_rollout_and_an_unchanged_world_writes_nothing(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    async with operating(run_operator, reconciler):
        body = await converged(emulator)
        assert condition(body, "Ready")["reason"] == "AllNodesReady"  # type: ignore[index]
        assert body["status"]["nodesReady"] == "6/6"
        before = len(emulator.writes())
        await reconciler.reconcile(NS, "graph")  # a resync
        expired = emulator.expire_watches()  # 410 Gone: kopf relists and sees every object again
        assert expired >= 5
        await eventually(timeout=15, predicate=lambda: emulator.watching(MODELDEPLOYMENTS) >= 1, what="the watch is back")
        await settled(emulator)
        assert emulator.writes()[before:] == []


async def test_reapplying_the_same_manifest_makes_the_operator_write_nothing(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    """GitOps: another manager applies what Git holds again (new annotations, same spec)."""
    async with operating(run_operator, reconciler):
        await converged(emulator)
        writes = len(emulator.writes())
        reads = sum(1 for c in emulator.calls if c.verb == "get" and c.resource == "modeldeployments")
        emulator.patch_object(
            MODELDEPLOYMENTS, NS, "graph",
            {"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
             "spec": copy.deepcopy(GRAPH["spec"])},
        )  # fmt: skip
        await eventually(timeout=15, predicate=
            lambda: sum(1 for c in emulator.calls if c.verb == "get" and c.resource == "modeldeployments") > reads,
            what="a reconcile of the re-applied object",
        )
        await settled(emulator)
        assert emulator.writes()[writes:] == []
        assert mdep(emulator)["metadata"]["generation"] == 1


async def test_a_changed_node_patches_only_its_own_deployment(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        before = len(emulator.writes("patch"))
        emulator.patch_object(MODELDEPLOYMENTS, NS, "graph", {"spec": {"nodes": _with(GRAPH, "ens", combiner={"method": "Max"})}})
        await eventually(timeout=15, predicate=lambda: mdep(emulator)["status"]["observedGeneration"] == 2, what="generation 2 observed")
        await settled(emulator)
        patched = {(w[2], w[4]) for w in emulator.writes("patch")[before:]}
        assert patched == {("configmaps", "graph-graph"), ("deployments", "graph-ens"), ("modeldeployments", "graph")}


def _with(manifest: dict[str, Any], name: str, **changes: Any) -> list[dict[str, Any]]:
    nodes = copy.deepcopy(manifest["spec"]["nodes"])
    for item in nodes:
        if item["name"] == name:
            item.update(changes)
    return nodes


async def test_an_added_node_gets_its_objects_and_a_removed_one_loses_them(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        bigger = copy.deepcopy(GRAPH)
        node(bigger, "ens")["children"] = ["b", "c", "d"]
        bigger["spec"]["nodes"].append({"name": "d", "type": "Model", "model": {"storageUri": "models/d"}})
        emulator.patch_object(MODELDEPLOYMENTS, NS, "graph", {"spec": {"nodes": bigger["spec"]["nodes"]}})
        await eventually(timeout=15, predicate=lambda: "graph-d" in names(emulator, "deployments") and "graph-d" in names(emulator, "services"))
        assert "d.overrides.json" in emulator.get_object(FULL["configmaps"], NS, "graph-graph")["data"]  # type: ignore[index]
        emulator.patch_object(MODELDEPLOYMENTS, NS, "graph", {"spec": {"nodes": GRAPH["spec"]["nodes"]}})
        await eventually(timeout=15, predicate=lambda: "graph-d" not in names(emulator, "deployments") + names(emulator, "services"))
        await eventually(timeout=15, predicate=lambda: "d.overrides.json" not in emulator.get_object(FULL["configmaps"], NS, "graph-graph")["data"])  # type: ignore[index]
        assert len(names(emulator, "deployments")) == 6


async def test_hand_edits_and_deletions_are_put_back(emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        emulator.delete_object(FULL["deployments"], NS, "graph-pre")
        await eventually(timeout=15, predicate=lambda: "graph-pre" in names(emulator, "deployments"), what="graph-pre recreated")
        emulator.patch_object(FULL["services"], NS, "graph-split", {"spec": {"ports": [{"name": "http", "port": 9999}]}})

        def restored() -> bool:
            ports = emulator.get_object(FULL["services"], NS, "graph-split")["spec"]["ports"]  # type: ignore[index]
            return [p["port"] for p in ports] == [8000, 8001, 8002]

        await eventually(timeout=15, predicate=restored, what="the Service's ports restored")
        emulator.patch_object(FULL["configmaps"], NS, "graph-graph", {"data": {"pre.json": "{}"}})
        await eventually(timeout=15, predicate=lambda: emulator.get_object(FULL["configmaps"], NS, "graph-graph")["data"]["pre.json"] != "{}")  # type: ignore[index]


async def test_an_invalid_spec_is_reported_and_touches_nothing(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler, recorder: Recorder
) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        cyclic = _with(GRAPH, "c", type="Router", children=["split"], model=None, router={"strategy": "Weighted", "weights": [{"child": "split", "weight": 100}]})
        cyclic = [{k: v for k, v in n.items() if v is not None} for n in cyclic]
        before = len(emulator.writes())
        emulator.patch_object(MODELDEPLOYMENTS, NS, "graph", {"spec": {"nodes": cyclic}})
        body = await eventually(timeout=15, predicate=lambda: (b := mdep(emulator)) and condition(b, "InvalidSpec") and b, what="InvalidSpec")
        assert "cycle" in condition(body, "InvalidSpec")["message"]  # type: ignore[index]
        assert condition(body, "Ready")["reason"] == "InvalidSpec"  # type: ignore[index]
        await settled(emulator)
        assert [w for w in emulator.writes()[before:] if w[2] != "modeldeployments"] == []
        assert len(names(emulator, "deployments")) == 6  # what ran keeps running
        quiet = len(emulator.writes())
        await reconciler.reconcile(NS, "graph")
        assert len(emulator.writes()) == quiet  # no retry loop, no repeated status write
        assert [r for r, _ in recorder.events].count("InvalidSpec") == 1


async def test_stuck_pods_reach_the_status(emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        labels = {"servegraph.io/deployment": "graph", "servegraph.io/node": "a", "app.kubernetes.io/managed-by": "servegraph"}
        emulator.create_object(
            FULL["pods"],
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graph-a-1", "labels": labels},
             "spec": {"containers": [{"name": "servegraph", "image": "x"}]}},
            namespace=NS,
        )  # fmt: skip
        emulator.patch_object(  # what the scheduler reports
            FULL["pods"], NS, "graph-a-1",
            {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}},
            subresource="status",
        )  # fmt: skip

        def degraded() -> dict[str, Any] | None:
            found = condition(mdep(emulator), "Degraded")
            return found if found and found["status"] == "True" else None

        found = await eventually(timeout=15, predicate=degraded, what="Degraded")
        assert found["reason"] == "Unschedulable" and "nvidia.com/gpu" in found["message"]
        assert condition(mdep(emulator), "Ready")["status"] == "False"  # type: ignore[index]
        node_a = next(n for n in mdep(emulator)["status"]["nodes"] if n["name"] == "a")
        assert node_a["reason"] == "Unschedulable"


async def test_api_errors_are_retried_without_duplicates(emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler) -> None:
    async with operating(run_operator, reconciler):
        emulator.inject("create", "deployments", 500, times=2)
        emulator.inject("create", "services", 429, retry_after=0.1)
        emulator.inject("patch", "modeldeployments", 409, subresource="status")
        emulator.inject("get", "configmaps", 503)
        create(emulator, copy.deepcopy(GRAPH))
        await eventually(timeout=15, predicate=lambda: len(names(emulator, "deployments")) == 6 and len(names(emulator, "services")) == 6)
        await eventually(timeout=15, predicate=lambda: condition(mdep(emulator), "Ready"), what="status written")
        await settled(emulator)
        done = sorted(w[2] for w in emulator.writes("create", ok=True))
        assert done == ["configmaps"] + ["deployments"] * 6 + ["services"] * 6


async def test_a_child_created_meanwhile_is_adopted(
    emulator: ServegraphEmulator, reconciler: Reconciler
) -> None:
    """409 AlreadyExists on create (a pass that died after its POST): adopted, not duplicated."""
    create(emulator, copy.deepcopy(GRAPH))
    await reconciler.reconcile(NS, "graph")
    # The read says "missing" (the object is created right after it), so the POST meets a 409.
    emulator.inject("get", "services", 404, name="graph-pre")
    outcome = await reconciler.reconcile(NS, "graph")
    assert outcome is not None and outcome.conflicts == [] and outcome.created == []
    assert emulator.writes("create", "services", ok=False) == [("create", "", "services", NS, "graph-pre")]
    assert names(emulator, "services").count("graph-pre") == 1


async def test_an_object_someone_else_owns_is_a_conflict(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler
) -> None:
    async with operating(run_operator, reconciler):
        emulator.create_object(
            FULL["services"],
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "graph-pre"},
             "spec": {"ports": [{"port": 80}]}},
            namespace=NS,
        )  # fmt: skip
        create(emulator, copy.deepcopy(GRAPH))

        def conflict() -> dict[str, Any] | None:
            found = condition(mdep(emulator), "Ready")
            return found if found and found["reason"] == "ChildConflict" else None

        found = await eventually(timeout=15, predicate=conflict, what="ChildConflict")
        assert "Service graph-pre" in found["message"]
        assert emulator.get_object(FULL["services"], NS, "graph-pre")["spec"]["ports"] == [{"port": 80}]  # type: ignore[index]
        await settled(emulator)  # and no hot loop


async def test_deleting_the_graph_deletes_its_children(emulator: ServegraphEmulator, run_operator: OperatorRunner, reconciler: Reconciler) -> None:
    async with operating(run_operator, reconciler):
        await converged(emulator)
        emulator.delete_object(MODELDEPLOYMENTS, NS, "graph")
        await eventually(timeout=15, predicate=lambda: names(emulator, "deployments") == [] and names(emulator, "configmaps") == [])
        assert names(emulator, "services") == []
        await settled(emulator)
