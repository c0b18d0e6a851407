"""Does a live object already say what we want? Pure comparisons, no API calls.

The API server adds fields (defaults, status, managedFields) and rewrites quantities
(``0.5`` CPU comes back as ``500m``), so "equal" would never hold and every pass would
write. An object is up to date when every field we set is there with the same meaning;
fields only others set (an HPA's replicas, a defaulted terminationMessagePath) are left
alone. Lists we set are ours as a whole.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

Object = dict[str, Any]

_SUFFIXES: dict[str, Decimal] = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip

POD_SPEC_KEYS = ("nodeSelector", "tolerations", "initContainers")
"""Pod-spec fields we set only sometimes: when we stop setting one, the patch removes it."""

STATE_LABEL = "servegraph.io/state"
"""A ConfigMap whose data its router replicas write: never compared or overwritten."""


def owns_data(desired: Object) -> bool:
    """Whether a ConfigMap's ``data`` is ours as a whole (the rendered configs: a key we no
    longer render must go), rather than written by the pods (bandit state)."""
    labels = (desired.get("metadata") or {}).get("labels") or {}
    return desired.get("kind") == "ConfigMap" and STATE_LABEL not in labels


def up_to_date(actual: Object, desired: Object) -> bool:
    """``same``, plus: a ConfigMap we own holds exactly our keys."""
    if not same(actual, desired):
        return False
    if owns_data(desired):
        return set(actual.get("data") or {}) == set(desired.get("data") or {})
    return True


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity's value (``500m`` -> 0.5, ``1Gi`` -> 1073741824), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            try:
                return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
            except InvalidOperation:
                return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def same(actual: Any, desired: Any) -> bool:
    """Whether ``actual`` holds every field of ``desired`` with the same meaning."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            k in actual and same(actual[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(actual, list) and len(actual) == len(desired) and all(
            same(a, d) for a, d in zip(actual, desired, strict=True)
        )
    if actual == desired:
        return True
    if isinstance(desired, str) and isinstance(actual, str | int | float) and not isinstance(actual, bool):
        left, right = quantity(actual), quantity(desired)
        return left is not None and left == right
    return False


def merge_patch(actual: Object, desired: Object) -> Object:
    """The merge patch that makes ``actual`` say ``desired``.

    ``desired`` itself, plus a null for each optional pod-spec field we set before and set
    no longer (a merge patch leaves a key it does not name).
    """
    patch: Object = dict(desired)
    if owns_data(desired):
        gone = {k: None for k in actual.get("data") or {} if k not in (desired.get("data") or {})}
        patch["data"] = {**(desired.get("data") or {}), **gone}
    template = ((desired.get("spec") or {}).get("template") or {}).get("spec")
    live = ((actual.get("spec") or {}).get("template") or {}).get("spec") or {}
    if isinstance(template, dict):
        removed = {k: None for k in POD_SPEC_KEYS if k in live and k not in template}
        if removed:
            spec = dict(desired["spec"])
            spec["template"] = {**desired["spec"]["template"], "spec": {**template, **removed}}
            patch["spec"] = spec
    return patch


def controller_uid(obj: Object) -> str | None:
    """The uid of the object's controlling owner, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None
