"""A ModelDeployment's status, computed from what its children report: pure functions.

Conditions follow ``metav1.Condition`` and kstatus, so ``kubectl wait
--for=condition=Ready``, Argo CD and Flux read them: ``Ready``, ``Progressing`` and
``Degraded`` always, ``InvalidSpec`` while the spec cannot be served, and kstatus' own
abnormal-true pair, ``Reconciling`` (as Progressing) and ``Stalled`` (as Degraded), so
tools that know only kstatus (Flux's health checks, cli-utils) need no configuration. ``lastTransitionTime``
moves only when a condition's status flips, so an unchanged world gives an unchanged
status and the operator writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Object = dict[str, Any]

FAILURES = ("Unschedulable", "ImagePullBackOff", "CrashLoopBackOff", "OOMKilled", "ModelLoadFailed", "ModelFetchFailed")
"""Per-node reasons that mean a node will not become ready by waiting: the graph is Degraded."""

_PULL_ERRORS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class NodeState:
    """One node's rollout, as its Deployment and pods tell it."""

    name: str
    role: str
    endpoint: str
    desired: int
    updated: int
    ready: int
    reason: str
    message: str = ""

    @property
    def complete(self) -> bool:
        """Every wanted pod runs the current template and is ready."""
        return self.reason == "Ready"

    def to_status(self) -> Object:
        found: Object = {
            "name": self.name,
            "role": self.role,
            "endpoint": self.endpoint,
            "desiredReplicas": self.desired,
            "updatedReplicas": self.updated,
            "readyReplicas": self.ready,
            "reason": self.reason,
        }
        if self.message:
            found["message"] = self.message
        return found


def node_state(name: str, role: str, endpoint: str, deployment: Object | None, pods: Sequence[Object]) -> NodeState:
    """A node's state from its Deployment (None while missing) and its pods."""
    if deployment is None:
        return NodeState(name, role, endpoint, 0, 0, 0, "Creating", "its Deployment does not exist yet")
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    total = int(status.get("replicas") or 0)
    failure = pod_failure(pods)
    if failure is not None:
        return NodeState(name, role, endpoint, desired, updated, ready, failure[0], failure[1])
    if observed >= generation and updated == desired and ready == desired and total == desired:
        return NodeState(name, role, endpoint, desired, updated, ready, "Ready")
    message = f"{ready}/{desired} pods ready, {updated}/{desired} up to date"
    return NodeState(name, role, endpoint, desired, updated, ready, "Progressing", message)


def pod_failure(pods: Sequence[Object]) -> tuple[str, str] | None:
    """The first reason, among the node's pods, that waiting will not fix."""
    for pod in pods:
        status = pod.get("status") or {}
        pod_name = (pod.get("metadata") or {}).get("name", "?")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                if condition.get("reason") == "Unschedulable":
                    return "Unschedulable", f"pod {pod_name}: {condition.get('message', 'cannot be scheduled')}"
        containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        for container in containers:
            state = container.get("state") or {}
            last = (container.get("lastState") or {}).get("terminated") or {}
            waiting = state.get("waiting") or {}
            reason = waiting.get("reason", "")
            where = f"pod {pod_name}, container {container.get('name', '?')}"
            if reason in _PULL_ERRORS:
                return "ImagePullBackOff", f"{where}: {waiting.get('message', reason)}"
            terminated = state.get("terminated") or last
            if terminated.get("reason") == "OOMKilled":
                return "OOMKilled", f"{where}: out of memory (raise the memory limit)"
            if reason == "CrashLoopBackOff" or (terminated and terminated.get("exitCode", 0) != 0):
                text = (terminated.get("message") or "").strip()
                if container.get("name") == "fetch-model":
                    return "ModelFetchFailed", f"{where}: {_last_line(text) or 'the model could not be fetched'}"
                if text:
                    return "ModelLoadFailed", f"{where}: {_last_line(text)}"
                if reason == "CrashLoopBackOff":
                    return "CrashLoopBackOff", f"{where}: {waiting.get('message', 'restarting')}"
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


@dataclass(frozen=True)
class Wanted:
    """A condition as this reconcile sees it, before times are filled in."""

    type: str
    status: bool
    reason: str
    message: str


def with_kstatus(conditions: list[Wanted]) -> list[Wanted]:
    """Add kstatus' Reconciling and Stalled, mirroring Progressing and Degraded."""
    by_type = {c.type: c for c in conditions}
    progressing, degraded = by_type["Progressing"], by_type["Degraded"]
    return [
        *conditions,
        Wanted("Reconciling", progressing.status, progressing.reason, progressing.message),
        Wanted("Stalled", degraded.status, degraded.reason, degraded.message),
    ]


def graph_conditions(nodes: Sequence[NodeState], entrypoint: str) -> list[Wanted]:
    """Ready, Progressing and Degraded for a valid spec, from its nodes' states."""
    failed = [n for n in nodes if n.reason in FAILURES]
    pending = [n for n in nodes if not n.complete and n.reason not in FAILURES]
    entry = next((n for n in nodes if n.name == entrypoint), None)
    ready = not failed and not pending and entry is not None and entry.complete
    conditions = [
        Wanted(
            "Ready",
            ready,
            "AllNodesReady" if ready else (failed[0].reason if failed else "NodesNotReady"),
            f"{len(nodes)}/{len(nodes)} nodes ready"
            if ready
            else "; ".join(f"node '{n.name}': {n.reason}" + (f" ({n.message})" if n.message else "") for n in failed + pending),
        ),
        Wanted(
            "Progressing",
            bool(pending),
            "RollingOut" if pending else "Complete",
            ", ".join(f"node '{n.name}'" for n in pending) + " rolling out" if pending else "every node is up to date",
        ),
        Wanted(
            "Degraded",
            bool(failed),
            failed[0].reason if failed else "NoFailures",
            "; ".join(f"node '{n.name}': {n.reason}: {n.message}" for n in failed) if failed else "no node is failing",
        ),
    ]
    return with_kstatus(conditions)


def invalid_conditions(message: str) -> list[Wanted]:
    """A spec the operator cannot accept: nothing running was changed, nothing will be retried."""
    return with_kstatus([
        Wanted("Ready", False, "InvalidSpec", message),
        Wanted("Progressing", False, "InvalidSpec", "the spec is invalid; fix it and apply again"),
        Wanted("Degraded", True, "InvalidSpec", message),
        Wanted("InvalidSpec", True, "InvalidSpec", message),
    ])


def next_conditions(previous: Sequence[Object], wanted: Sequence[Wanted], generation: int, now: str) -> list[Object]:
    """``wanted`` as metav1.Conditions; a condition keeps its ``lastTransitionTime`` unless it flips.

    Conditions not in ``wanted`` (an ``InvalidSpec`` that no longer applies) are dropped.
    """
    before = {c.get("type"): c for c in previous}
    found: list[Object] = []
    for want in wanted:
        status = "True" if want.status else "False"
        old = before.get(want.type)
        moved = old is None or old.get("status") != status
        found.append(
            {
                "type": want.type,
                "status": status,
                "reason": want.reason,
                "message": want.message[:32768],
                "observedGeneration": generation,
                "lastTransitionTime": now if moved or old is None else old.get("lastTransitionTime", now),
            }
        )
    return found


GRAPH_KEYS = ("nodes", "nodesReady", "url", "entrypoint")
"""What status says about the running graph (kept as it is while a spec is invalid)."""
STATUS_KEYS = ("observedGeneration", "conditions", *GRAPH_KEYS)
"""Every status field the operator writes (``status.kopf`` is kopf's, never ours)."""


def status_patch(current: Object, desired: Object) -> Object | None:
    """The status to write, or None when ``current`` already says it (no write at all)."""
    if all(current.get(k) == desired.get(k) for k in STATUS_KEYS):
        return None
    return {k: desired.get(k) for k in STATUS_KEYS}
