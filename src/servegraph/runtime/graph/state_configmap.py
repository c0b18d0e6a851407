"""Bandit state shared by a router's replicas through one ConfigMap (in a cluster).

Loaded only when a router's config names ``state_config_map``. It speaks to the API server
with the standard library and the pod's ServiceAccount token (the runtime never imports
kubernetes); the operator gives router pods a Role that may get and patch that one
ConfigMap and nothing else.

How rewards merge without loss: each replica writes only its *own* contributions, under
its own key (``<pod>.json``), with a merge patch of that key alone, so replicas never
overwrite each other. Everyone's view is the sum of every key, so what one replica learns
reaches the others at their next save, and a restarted router starts from all of it.
Keys of pods that are gone are folded into ``base.json`` by a write that carries the
ConfigMap's resourceVersion: on a 409 (someone wrote meanwhile) it reads again and
retries, so a fold never loses a concurrent write.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servegraph.runtime.graph.bandits import ArmStats

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
BASE_KEY = "base.json"
STALE_SECS = 3600.0
"""A replica's key untouched this long belongs to a pod that is gone: it may be folded."""
FOLD_ATTEMPTS = 5


def add(left: Mapping[str, ArmStats], right: Mapping[str, ArmStats]) -> dict[str, ArmStats]:
    """Arm statistics summed arm by arm."""
    total = {arm: ArmStats(s.pulls, s.reward_sum) for arm, s in left.items()}
    for arm, stats in right.items():
        into = total.setdefault(arm, ArmStats())
        into.pulls += stats.pulls
        into.reward_sum += stats.reward_sum
    return total


def subtract(left: Mapping[str, ArmStats], right: Mapping[str, ArmStats]) -> dict[str, ArmStats]:
    """``left`` minus ``right``, arm by arm (what one replica added to a shared view)."""
    return {
        arm: ArmStats(s.pulls - right.get(arm, ArmStats()).pulls, s.reward_sum - right.get(arm, ArmStats()).reward_sum)
        for arm, s in left.items()
    }


def _decode(text: str) -> tuple[dict[str, ArmStats], float]:
    data = json.loads(text)
    arms = {str(a): ArmStats(int(v["pulls"]), float(v["reward_sum"])) for a, v in data["arms"].items()}
    return arms, float(data.get("updated", 0.0))


def _encode(arms: Mapping[str, ArmStats], now: float) -> str:
    return json.dumps(
        {"updated": now, "arms": {a: {"pulls": s.pulls, "reward_sum": s.reward_sum} for a, s in arms.items()}},
        sort_keys=True,
    )


class ConfigMapState:
    """One router replica's share of a ConfigMap holding every replica's rewards."""

    def __init__(self, name: str, node: str, *, api: str = "", namespace: str = "", replica: str = "",
                 token_file: Path | None = None, ca_file: Path | None = None) -> None:  # fmt: skip
        self.name = name
        self.node = node
        self.api = (api or os.environ.get("SERVEGRAPH_KUBE_API") or self._in_cluster_api()).rstrip("/")
        self.namespace = namespace or os.environ.get("POD_NAMESPACE") or self._read(SERVICE_ACCOUNT / "namespace") or "default"
        self.replica = replica or os.environ.get("POD_NAME") or os.uname().nodename
        self.token_file = token_file if token_file is not None else SERVICE_ACCOUNT / "token"
        ca = ca_file if ca_file is not None else SERVICE_ACCOUNT / "ca.crt"
        self.context = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else None
        self.others: dict[str, ArmStats] = {}
        """Every other key's sum, as of the last load or save."""
        self.path = f"configmap/{self.namespace}/{self.name}#{self.key}"

    @property
    def key(self) -> str:
        return f"{self.replica}.json"

    @staticmethod
    def _in_cluster_api() -> str:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return f"https://{host}:{port}" if host else ""

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, body: Any = None, content_type: str = "application/merge-patch+json") -> Any:
        url = f"{self.api}/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"
        request = urllib.request.Request(url, method=method)
        token = self._read(self.token_file)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        request.add_header("Accept", "application/json")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, data=data, timeout=10, context=self.context) as answer:
            return json.loads(answer.read() or b"{}")

    def _get(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._request("GET")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return {"metadata": {}, "data": {}}
            raise
        return found

    def _sums(self, data: Mapping[str, str]) -> tuple[dict[str, ArmStats], dict[str, ArmStats], dict[str, float]]:
        """(mine, everyone else's sum, each other key's last update)."""
        mine: dict[str, ArmStats] = {}
        others: dict[str, ArmStats] = {}
        updated: dict[str, float] = {}
        for key, text in data.items():
            try:
                arms, when = _decode(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("node '%s': ignoring unreadable state key %s in %s: %s", self.node, key, self.name, exc)
                continue
            if key == self.key:
                mine = arms
            else:
                others = add(others, arms)
                updated[key] = when
        return mine, others, updated

    # ------------------------------------------------------------------ the StateFile interface

    def load(self) -> dict[str, ArmStats]:
        """Everyone's rewards so far (this replica's own key included, if it restarted)."""
        try:
            mine, others, _ = self._sums((self._get().get("data") or {}))
        except (OSError, ValueError) as exc:
            log.warning("node '%s': cannot read bandit state from ConfigMap %s: %s", self.node, self.name, exc)
            return {}
        self.others = others  # a restarted replica carries on with its own key's counts
        return add(others, mine)

    def save(self, arms: dict[str, ArmStats]) -> None:
        """Write this replica's own share of ``arms``; then refresh ``others`` from the rest.

        Blocking; the router calls it from a worker thread. Raises OSError on failure.
        """
        own = subtract(arms, self.others)
        self._request("PATCH", {"data": {self.key: _encode(own, time.time())}})
        data = self._get().get("data") or {}
        _, others, updated = self._sums(data)
        self.others = others  # a new dict: the saver compares identities to merge the view
        stale = [k for k, when in updated.items() if k != BASE_KEY and time.time() - when > STALE_SECS]
        if stale:
            self._fold(stale)

    def _fold(self, keys: list[str]) -> None:
        """Move gone replicas' keys into base.json, guarded by resourceVersion (409: try again)."""
        for _ in range(FOLD_ATTEMPTS):
            current = self._get()
            data = current.get("data") or {}
            present = [k for k in keys if k in data]
            if not present:
                return
            base, _ = _decode(data[BASE_KEY]) if BASE_KEY in data else ({}, 0.0)
            for key in present:
                base = add(base, _decode(data[key])[0])
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": current["metadata"].get("resourceVersion")},
                "data": {BASE_KEY: _encode(base, 0.0), **dict.fromkeys(present)},
            }
            try:
                self._request("PATCH", patch)
                return
            except urllib.error.HTTPError as error:
                if error.code != 409:
                    raise
        log.info("node '%s': folding old state keys lost %d races; will try again later", self.node, FOLD_ATTEMPTS)
