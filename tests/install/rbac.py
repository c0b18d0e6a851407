"""The operator's RBAC rules as data, for S2 (RELIABILITY.md): read from
charts/servegraph/rbac-rules.yaml, the one place they are written (the chart's templates
render the same file).

For the operator's suite, which records ``(verb, group, resource)`` from the mock API
server's request log::

    from tests.install.rbac import not_allowed, never_used
    assert not_allowed(calls) == set()     # every call the operator made is allowed
    assert never_used(calls) == set()      # every verb granted was called (or is delegated)

A subresource is named ``resource/subresource`` (``modeldeployments/status``); the core
group is ``""``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

RULES_FILE = Path(__file__).resolve().parents[2] / "charts" / "servegraph" / "rbac-rules.yaml"

Call = tuple[str, str, str]
"""(verb, apiGroup, resource)"""


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return data


def rules() -> list[dict[str, Any]]:
    """The rules as they appear in the rendered Role/ClusterRole (without `reason`)."""
    return [{k: v for k, v in rule.items() if k != "reason"} for rule in load()["rules"]]


def grants() -> set[Call]:
    """Every (verb, group, resource) the rules allow."""
    return {
        (verb, group, resource)
        for rule in rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def delegated() -> set[Call]:
    """Granted only so the operator may grant it onward; never called by the operator."""
    return {(d["verb"], d["apiGroup"], d["resource"]) for d in load().get("delegated", [])}


def not_allowed(calls: Iterable[Call]) -> set[Call]:
    return set(calls) - grants()


def never_used(calls: Iterable[Call]) -> set[Call]:
    return grants() - set(calls) - delegated()
