"""Level-based reconciliation of one ModelDeployment: read, compare, write only what differs.

``Reconciler.reconcile(namespace, name)`` is all there is: whatever woke it (the
ModelDeployment changed, a child was edited or deleted, a pod changed state), it reads
the ModelDeployment afresh, renders the children it should own, creates what is missing,
patches what drifted, deletes what the spec no longer wants, and writes the status only
when it changed. Run twice over an unchanged world, the second run writes nothing.

An invalid spec is reported (``InvalidSpec``) and changes nothing that runs; a child with
our name that someone else owns is reported (``ChildConflict``) and left alone.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from servegraph.operator.children import (
    LABEL_DEPLOYMENT,
    ROLES,
    DesiredChildren,
    desired_children,
    endpoint,
    object_name,
    selector,
)
from servegraph.operator.diff import controller_uid, merge_patch, up_to_date
from servegraph.operator.kube import OWNED_KINDS, Kube
from servegraph.operator.manifest import parse_manifest
from servegraph.operator.settings import OperatorSettings
from servegraph.operator.spec import ModelDeployment
from servegraph.operator.status import (
    GRAPH_KEYS,
    NodeState,
    Wanted,
    graph_conditions,
    invalid_conditions,
    next_conditions,
    node_state,
    status_patch,
)
from servegraph.operator.validation import SpecError

Object = dict[str, Any]
Notify = Callable[[Object, str, str, bool], None]
"""(ModelDeployment body, reason, message, is_warning): an Event on the ModelDeployment."""

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _no_events(body: Object, reason: str, message: str, warning: bool) -> None:
    pass


@dataclass
class Outcome:
    """What one pass did, for logs and tests."""

    created: list[str] = field(default_factory=list)
    patched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    status_written: bool = False
    invalid: str = ""


class Reconciler:
    """Reconciles ModelDeployments, one pass at a time per object."""

    def __init__(self, kube: Kube, settings: OperatorSettings, notify: Notify = _no_events,
                 now: Callable[[], str] = _now) -> None:  # fmt: skip
        self.kube = kube
        self.settings = settings
        self.notify = notify
        self.now = now
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._queued: set[tuple[str, str]] = set()

    async def reconcile(self, namespace: str, name: str) -> Outcome | None:
        """One pass over ``namespace/name``; None when it no longer exists (or is going).

        Passes over one object run one at a time, and a burst of events costs at most two:
        while a pass waits for its turn, more events for the same object join it (it has not
        read anything yet, so it will see their changes too).
        """
        key = (namespace, name)
        if key in self._queued:
            return None
        self._queued.add(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                self._queued.discard(key)
                return await asyncio.to_thread(self._reconcile, namespace, name)
        finally:
            self._queued.discard(key)  # also when cancelled while waiting: never block later passes

    # ------------------------------------------------------------------ one pass (in a thread)

    def _reconcile(self, namespace: str, name: str) -> Outcome | None:
        body = self.kube.get("ModelDeployment", namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # children go with it by garbage collection
        outcome = Outcome()
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        try:
            deployment = parse_manifest(
                {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                 "metadata": {"name": meta["name"], "namespace": namespace}, "spec": body.get("spec")}
            )  # fmt: skip
            desired = desired_children(deployment, str(meta["uid"]), self.settings)
        except SpecError as error:
            outcome.invalid = str(error)
            # What runs stays as it was, and so does what the status says about it.
            kept = {k: v for k, v in (body.get("status") or {}).items() if k in GRAPH_KEYS}
            self._write_status(body, invalid_conditions(str(error)), generation, kept, outcome)
            return outcome
        current = self._apply(body, deployment, desired, outcome)
        self._prune(deployment, str(meta["uid"]), desired, outcome)
        states = self._node_states(deployment, desired, current)
        wanted = graph_conditions(states, deployment.spec.entrypoint)
        if outcome.conflicts:
            message = "; ".join(outcome.conflicts)
            conflict = {
                "Ready": Wanted("Ready", False, "ChildConflict", message),
                "Degraded": Wanted("Degraded", True, "ChildConflict", message),
                "Stalled": Wanted("Stalled", True, "ChildConflict", message),
            }
            wanted = [conflict.get(w.type, w) for w in wanted]
        ready = sum(1 for s in states if s.complete)
        extra = {
            "nodes": [s.to_status() for s in states],
            "nodesReady": f"{ready}/{len(states)}",
            "url": desired.url,
            "entrypoint": deployment.spec.entrypoint,
        }
        self._write_status(body, wanted, generation, extra, outcome)
        return outcome

    def _apply(self, body: Object, deployment: ModelDeployment, desired: DesiredChildren,
               outcome: Outcome) -> dict[tuple[str, str], Object]:  # fmt: skip
        """Create or patch every desired object; the live objects, by (kind, name)."""
        uid = str(body["metadata"]["uid"])
        namespace = deployment.metadata.namespace
        live: dict[tuple[str, str], Object] = {}
        for obj in desired.objects:
            kind, name = obj["kind"], obj["metadata"]["name"]
            where = f"{kind} {name}"
            actual = self.kube.get(kind, namespace, name)
            if actual is None:
                try:
                    live[kind, name] = self.kube.create(obj)
                    outcome.created.append(where)
                    self.notify(body, "Created", f"created {where}", False)
                    continue
                except ApiException as error:
                    if error.status != 409:
                        raise
                    # Created meanwhile (a retried request, another pass): adopt it below.
                    actual = self.kube.get(kind, namespace, name)
                    if actual is None:
                        raise
            owner = controller_uid(actual)
            if owner != uid:
                message = f"{where} exists and is not owned by this ModelDeployment; rename or delete it"
                outcome.conflicts.append(message)
                if message not in outcome.conflicts[:-1]:
                    self.notify(body, "ChildConflict", message, True)
                live[kind, name] = actual
                continue
            if up_to_date(actual, obj):
                live[kind, name] = actual
                continue
            live[kind, name] = self.kube.patch(kind, namespace, name, merge_patch(actual, obj))
            outcome.patched.append(where)
            self.notify(body, "Updated", f"updated {where}", False)
        return live

    def _prune(self, deployment: ModelDeployment, uid: str, desired: DesiredChildren, outcome: Outcome) -> None:
        """Delete what we own under this ModelDeployment's label and no longer want."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in desired.objects}
        labels = {LABEL_DEPLOYMENT: deployment.metadata.name}
        for kind in OWNED_KINDS:
            for obj in self.kube.list(kind, deployment.metadata.namespace, labels):
                name = obj["metadata"]["name"]
                if (kind, name) in wanted or controller_uid(obj) != uid:
                    continue
                if self.kube.delete(kind, deployment.metadata.namespace, name):
                    outcome.deleted.append(f"{kind} {name}")

    def _node_states(self, deployment: ModelDeployment, desired: DesiredChildren,
                     live: dict[tuple[str, str], Object]) -> list[NodeState]:  # fmt: skip
        states = []
        for name in desired.graph.order:
            node = deployment.node(name)
            workload = live.get(("Deployment", object_name(deployment, name)))
            pods = self.kube.list("Pod", deployment.metadata.namespace, selector(deployment, node))
            states.append(node_state(name, ROLES[node.type], endpoint(deployment, name).grpc, workload, pods))
        return states

    def _write_status(self, body: Object, wanted: list[Wanted], generation: int, extra: Object,
                      outcome: Outcome) -> None:  # fmt: skip
        current = body.get("status") or {}
        conditions = next_conditions(current.get("conditions") or [], wanted, generation, self.now())
        desired = {"observedGeneration": generation, "conditions": conditions, **extra}
        patch = status_patch(current, desired)
        if patch is None:
            return
        meta = body["metadata"]
        self.kube.patch("ModelDeployment", meta["namespace"], meta["name"], {"status": patch}, "status")
        outcome.status_written = True
        if outcome.invalid and (current.get("conditions") or []) != conditions:
            self.notify(body, "InvalidSpec", outcome.invalid, True)
