"""Rendering the chart with helm-python-sdk, cached: each render crosses into Go."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "servegraph"
RELEASE = "servegraph"
NAMESPACE = "servegraph-system"
KUBE_VERSION = "1.33.0"


@cache
def _render(values_json: str) -> tuple[dict[str, Any], ...]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    found: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if path.endswith(".txt"):
            continue
        found.extend(d for d in yaml.safe_load_all(rendered[path]) if d)
    return tuple(found)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The objects a `helm install` with these values would create (CRDs aside)."""
    return [json.loads(json.dumps(o)) for o in _render(json.dumps(values or {}, sort_keys=True))]


def render_error(values: dict[str, Any]) -> str:
    """The message with which rendering these values fails."""
    with helm.Chart.load(CHART) as chart:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as error:
            return str(error)
    raise AssertionError(f"values were accepted: {values}")


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def rbac_rules_file() -> dict[str, Any]:
    return yaml.safe_load((CHART / "rbac-rules.yaml").read_text())
