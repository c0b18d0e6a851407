"""Status from children (pure): per-node reasons, conditions with stable transition times, no-op writes."""

from __future__ import annotations

from typing import Any

import pytest

from servegraph.operator.diff import merge_patch, quantity, same
from servegraph.operator.status import (
    Wanted,
    graph_conditions,
    invalid_conditions,
    next_conditions,
    node_state,
    status_patch,
)


def deployment(replicas: int = 2, updated: int = 2, ready: int = 2, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated, "readyReplicas": ready},
    }


def pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p-1"}, "status": status}


def waiting(name: str, reason: str, message: str = "", last: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}, "lastState": {"terminated": last} if last else {}}


def test_a_complete_rollout_is_ready() -> None:
    state = node_state("a", "model", "a:8001", deployment(), [])
    assert state.complete and state.to_status()["readyReplicas"] == 2


@pytest.mark.parametrize(
    "workload",
    [deployment(updated=1), deployment(ready=1), deployment(observed=2)],
    ids=["old-pods", "unready", "generation-not-seen"],
)
def test_an_unfinished_rollout_is_progressing(workload: dict[str, Any]) -> None:
    assert node_state("a", "model", "a:8001", workload, []).reason == "Progressing"


def test_a_missing_deployment_is_being_created() -> None:
    assert node_state("a", "model", "a:8001", None, []).reason == "Creating"


@pytest.mark.parametrize(
    ("pods", "reason", "text"),
    [
        ([pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])],
         "Unschedulable", "Insufficient nvidia.com/gpu"),
        ([pod(containerStatuses=[waiting("servegraph", "ImagePullBackOff", "Back-off pulling image")])],
         "ImagePullBackOff", "Back-off pulling"),
        ([pod(containerStatuses=[waiting("servegraph", "CrashLoopBackOff", last={"reason": "OOMKilled", "exitCode": 137})])],
         "OOMKilled", "out of memory"),
        ([pod(containerStatuses=[waiting("servegraph", "CrashLoopBackOff",
                                         last={"reason": "Error", "exitCode": 1, "message": "loading...\nmodel 'a' failed to load: boom"})])],
         "ModelLoadFailed", "model 'a' failed to load: boom"),
        ([pod(initContainerStatuses=[waiting("fetch-model", "CrashLoopBackOff",
                                             last={"reason": "Error", "exitCode": 1, "message": "servegraph fetch: 404 for s3://x"})])],
         "ModelFetchFailed", "404 for s3://x"),
        ([pod(containerStatuses=[waiting("servegraph", "CrashLoopBackOff", "back-off 5m", last={"reason": "Error", "exitCode": 2})])],
         "CrashLoopBackOff", "back-off"),
    ],
    ids=["unschedulable", "image", "oom", "load", "fetch", "crash"],
)  # fmt: skip
def test_stuck_pods_name_their_reason(pods: list[dict[str, Any]], reason: str, text: str) -> None:
    state = node_state("a", "model", "a:8001", deployment(ready=0), pods)
    assert state.reason == reason and text in state.message
    conditions = {c.type: c for c in graph_conditions([state], "a")}
    assert conditions["Ready"].status is False and conditions["Ready"].reason == reason
    assert conditions["Degraded"].status is True and "node 'a'" in conditions["Degraded"].message


def test_ready_needs_every_node_and_the_entrypoint() -> None:
    good = node_state("a", "model", "", deployment(), [])
    rolling = node_state("r", "router", "", deployment(updated=1), [])
    conditions = {c.type: c for c in graph_conditions([good, rolling], "r")}
    assert (conditions["Ready"].status, conditions["Progressing"].status, conditions["Degraded"].status) == (False, True, False)
    assert (conditions["Reconciling"].status, conditions["Stalled"].status) == (True, False)  # kstatus: InProgress
    conditions = {c.type: c for c in graph_conditions([good], "a")}
    assert conditions["Ready"] == Wanted("Ready", True, "AllNodesReady", "1/1 nodes ready")


def test_transition_times_move_only_on_a_flip() -> None:
    first = next_conditions([], [Wanted("Ready", False, "NodesNotReady", "x")], 1, "T1")
    same_again = next_conditions(first, [Wanted("Ready", False, "NodesNotReady", "y")], 2, "T2")
    assert same_again[0]["lastTransitionTime"] == "T1" and same_again[0]["observedGeneration"] == 2
    flipped = next_conditions(same_again, [Wanted("Ready", True, "AllNodesReady", "")], 2, "T3")
    assert flipped[0]["lastTransitionTime"] == "T3"
    assert [c["type"] for c in flipped] == ["Ready"]


def test_an_unchanged_status_is_not_written() -> None:
    conditions = next_conditions([], invalid_conditions("bad"), 4, "T")
    status = {"observedGeneration": 4, "conditions": conditions, "url": "u"}
    assert status_patch(status, dict(status)) is None
    assert status_patch(status, {**status, "observedGeneration": 5}) is not None
    assert {c["type"] for c in conditions} == {"Ready", "Progressing", "Degraded", "InvalidSpec", "Reconciling", "Stalled"}
    stalled = next(c for c in conditions if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"


def test_live_objects_with_server_defaults_are_the_same() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 8000}], "resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}}}}
    live = {
        "metadata": {"resourceVersion": "7"},
        "spec": {"ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
                 "resources": {"limits": {"cpu": "500m", "memory": "1073741824"}}, "clusterIP": "10.0.0.1"},
    }  # fmt: skip
    assert same(live, desired)
    assert not same(live, {"spec": {"ports": [{"name": "http", "port": 8001}]}})
    assert not same(live, {"spec": {"ports": []}})
    assert quantity("1Gi") == quantity("1024Mi") and quantity("image:1.0") is None


def test_a_dropped_pod_field_is_removed_by_the_patch() -> None:
    live = {"spec": {"template": {"spec": {"nodeSelector": {"gpu": "a"}, "containers": []}}}}
    desired = {"spec": {"template": {"spec": {"containers": []}}}}
    assert merge_patch(live, desired)["spec"]["template"]["spec"] == {"containers": [], "nodeSelector": None}
