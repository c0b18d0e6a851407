"""The one module that talks to the Kubernetes API (besides kopf's own watching).

A thin layer over ``kubernetes.client.ApiClient``: objects are plain dicts (what the
rendering produces), every resource the operator touches is in ``RESOURCES``, and each
call is retried with bounded backoff on what a busy API server answers (409 on a racing
write, 429 with Retry-After, 5xx, a dropped connection). Calls are synchronous; the
reconciler runs them in a thread so the event loop stays free.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from servegraph.operator.settings import FIELD_MANAGER

Object = dict[str, Any]
T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str = "", subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


RESOURCES: dict[str, Resource] = {
    "ModelDeployment": Resource("servegraph.io", "v1alpha1", "modeldeployments"),
    "ConfigMap": Resource("", "v1", "configmaps"),
    "Service": Resource("", "v1", "services"),
    "Pod": Resource("", "v1", "pods"),
    "Deployment": Resource("apps", "v1", "deployments"),
    "HorizontalPodAutoscaler": Resource("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets"),
    "ServiceAccount": Resource("", "v1", "serviceaccounts"),
    "Role": Resource("rbac.authorization.k8s.io", "v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
}

OWNED_KINDS = (
    "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    "ServiceAccount", "Role", "RoleBinding",
)  # fmt: skip
"""What a ModelDeployment owns; these are pruned when the spec no longer wants them."""

RETRIED = {409, 429, 500, 502, 503, 504}
BACKOFFS = (0.2, 0.5, 1.0, 2.0, 4.0)
"""Waits between attempts; a 429's Retry-After wins when it is longer."""


class KubeError(RuntimeError):
    """An API call failed for good: ``status`` is the HTTP status (0 without an answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def retry_delay(error: ApiException, attempt: int, backoffs: tuple[float, ...] = BACKOFFS) -> float:
    """How long to wait before attempt ``attempt + 1``: the backoff, or Retry-After if longer."""
    delay = backoffs[min(attempt, len(backoffs) - 1)]
    headers = error.headers or {}
    retry_after = headers.get("Retry-After") if isinstance(headers, Mapping) else None
    if retry_after:
        try:
            delay = max(delay, float(retry_after))
        except ValueError:
            pass
    return delay


class Kube:
    """The calls the operator makes, on one ApiClient."""

    def __init__(self, api: client.ApiClient, sleep: Callable[[float], None] = time.sleep,
                 backoffs: tuple[float, ...] = BACKOFFS) -> None:  # fmt: skip
        self.api = api
        self.sleep = sleep
        self.backoffs = backoffs

    def _call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Any:  # fmt: skip
        backoffs = self.backoffs
        for attempt in range(len(backoffs) + 1):
            try:
                return self.api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=True,
                    _request_timeout=30,
                )
            except ApiException as error:
                if error.status not in RETRIED or attempt == len(backoffs):
                    raise
                if error.status == 409 and method == "POST":
                    raise  # AlreadyExists: the caller adopts, retrying cannot help
                delay = retry_delay(error, attempt, backoffs)
                log.info("%s %s answered %s; retrying in %.1f s", method, path, error.status, delay)
                self.sleep(delay)
            except HTTPError as error:
                if attempt == len(backoffs):
                    raise KubeError(f"{method} {path}: {error}") from error
                self.sleep(backoffs[attempt])
        raise AssertionError("unreachable")

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        """The object, or None if it does not exist."""
        try:
            found: Object = self._call("GET", RESOURCES[kind].path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def list(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Object]:
        """Objects of ``kind`` in ``namespace`` carrying every one of ``labels``."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        answer = self._call("GET", RESOURCES[kind].path(namespace), query=[("labelSelector", selector)])
        items: list[Object] = list(answer.get("items") or [])
        # Filter again: a selector is a request, and an object we would prune must really match.
        return [i for i in items if all(((i.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    def create(self, body: Object) -> Object:
        meta = body["metadata"]
        path = RESOURCES[body["kind"]].path(meta["namespace"])
        created: Object = self._call("POST", path, body, query=[("fieldManager", FIELD_MANAGER)])
        return created

    def patch(self, kind: str, namespace: str, name: str, body: Object, subresource: str = "") -> Object:
        """A JSON merge patch (RFC 7386): what ``body`` says, the rest of the object untouched."""
        path = RESOURCES[kind].path(namespace, name, subresource)
        patched: Object = self._call(
            "PATCH", path, body, query=[("fieldManager", FIELD_MANAGER)], content_type="application/merge-patch+json"
        )
        return patched

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete (children of the object go by garbage collection); False if it was gone."""
        try:
            self._call("DELETE", RESOURCES[kind].path(namespace, name), {"propagationPolicy": "Background"})
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True
