"""The kopf registrations: thin, each one only says which ModelDeployment to reconcile.

Event handlers, not create/update handlers: reconciliation is level-based, so the
operator needs no progress storage, no diff-base annotation and no finalizer on the
ModelDeployment, and it never writes to a ModelDeployment except its ``status``. Events
on the owned kinds (found by the ``servegraph.io/deployment`` label) wake the owner, which
is how a child edited or deleted by hand is put back and how pod trouble reaches status.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from servegraph.operator.children import LABEL_DEPLOYMENT, LABEL_STATE
from servegraph.operator.kube import OWNED_KINDS, RESOURCES
from servegraph.operator.reconcile import Reconciler

GROUP, VERSION, PLURAL = "servegraph.io", "v1alpha1", "modeldeployments"

WATCHED_KINDS = (*OWNED_KINDS, "Pod")
"""Owned kinds whose changes wake their ModelDeployment (so drift is put back at once), and
pods, whose state becomes the per-node reasons in status."""

MANAGED = {"app.kubernetes.io/managed-by": "servegraph"}


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator. Event handlers store no progress, so kopf's
    persistence settings do not matter here."""
    settings.posting.level = logging.INFO
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # One active operator is kept by the chart (one replica, Recreate), not by peering.
    settings.peering.standalone = True
    settings.scanning.disabled = True


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register the handlers that drive ``reconciler`` on ``registry``."""

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)  # type: ignore[arg-type]
    async def modeldeployment_changed(type: str | None, name: str, namespace: str, **_: Any) -> None:
        if type == "DELETED":
            return
        await reconciler.reconcile(namespace, name)

    for kind in WATCHED_KINDS:
        resource = RESOURCES[kind]

        @kopf.on.event(resource.group, resource.version, resource.plural, labels=MANAGED, registry=registry)  # type: ignore[arg-type]
        async def child_changed(type: str | None, labels: dict[str, str], namespace: str, **_: Any) -> None:
            if labels.get(LABEL_STATE) and type != "DELETED":
                return  # a router saving its bandit state: nothing of ours changed
            owner = labels.get(LABEL_DEPLOYMENT)
            if owner:
                await reconciler.reconcile(namespace, owner)


def post_event(body: dict[str, Any], reason: str, message: str, warning: bool) -> None:
    """An Event on the ModelDeployment, through kopf's poster (safe from a worker thread)."""
    kopf.event(cast(kopf.Body, body), type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
