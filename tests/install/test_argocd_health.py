"""The Argo CD health check (docs/argocd-health.lua) run by a real Lua interpreter (Debian's
lua5.4; Argo CD runs gopher-lua, a Lua 5.1, and the script uses nothing newer) against
sample ModelDeployment statuses, and docs/gitops.md carrying that same script."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from tests.install.chart import ROOT

SCRIPT = ROOT / "docs" / "argocd-health.lua"
LUA = shutil.which("lua5.4")

if LUA is None:
    if os.environ.get("CI"):
        raise RuntimeError("lua5.4 is missing: .ci/run and `make test` install it (apt-get install lua5.4)")
    pytestmark = pytest.mark.skip(reason="lua5.4 is not installed: `make lua` (apt-get install lua5.4)")


def lua_literal(value: Any) -> str:
    """A Python value (JSON-like) as a Lua expression, the way Argo CD hands `obj` over."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # ASCII JSON escapes are valid Lua escapes
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def health(obj: dict[str, Any]) -> tuple[str, str]:
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = dofile({json.dumps(str(SCRIPT))})\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    result = subprocess.run([LUA or "lua5.4", "-"], input=program, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message.rstrip("\n")


def deployment(generation: int | None = 3, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "servegraph.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "ab-test", "namespace": "default"},
        "spec": {"entrypoint": "split", "nodes": []},
    }
    if generation is not None:
        obj["metadata"]["generation"] = generation
    if status:
        obj["status"] = status
    return obj


def cond(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}


READY = cond("Ready", "True", "AllNodesReady", "3/3 nodes ready")
PROGRESSING = cond("Progressing", "True", "RollingOut", "scorer-b: 0/1 replicas updated")
NOT_READY = cond("Ready", "False", "Progressing", "2/3 nodes ready")

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status yet", deployment(), "Progressing", "Waiting for the servegraph operator"),
    ("ready and observed", deployment(observedGeneration=3, conditions=[READY, cond("Progressing", "False", "Complete"), cond("Degraded", "False", "AsExpected")]),
     "Healthy", "3/3 nodes ready"),
    ("ready, float generations as Argo CD's JSON decoder gives them", deployment(generation=3.0, observedGeneration=3.0, conditions=[READY]),
     "Healthy", "3/3 nodes ready"),
    ("ready for an older generation", deployment(generation=4, observedGeneration=3, conditions=[READY]),
     "Progressing", "Waiting for the operator to observe generation 4 (observed 3)"),
    ("degraded for an older generation", deployment(generation=4, observedGeneration=3, conditions=[cond("Degraded", "True", "ImagePullBackOff", "x")]),
     "Progressing", "generation 4"),
    ("status without observedGeneration", deployment(conditions=[READY]), "Progressing", "(observed none)"),
    ("rolling out", deployment(observedGeneration=3, conditions=[NOT_READY, PROGRESSING]), "Progressing", "scorer-b: 0/1 replicas updated"),
    ("degraded", deployment(observedGeneration=3, conditions=[NOT_READY, PROGRESSING, cond("Degraded", "True", "ImagePullBackOff", "scorer-a: ImagePullBackOff")]),
     "Degraded", "scorer-a: ImagePullBackOff"),
    ("degraded with a reason only", deployment(observedGeneration=3, conditions=[cond("Degraded", "True", "Unschedulable")]),
     "Degraded", "Unschedulable"),
    ("invalid spec condition", deployment(observedGeneration=3, conditions=[cond("Ready", "False", "InvalidSpec", "node 'split': cycle split -> a -> split"), cond("InvalidSpec", "True", "Cycle", "node 'split': cycle split -> a -> split")]),
     "Degraded", "InvalidSpec: node 'split': cycle split -> a -> split"),
    ("invalid spec as Ready's reason", deployment(observedGeneration=3, conditions=[cond("Ready", "False", "InvalidSpec", "edge a -> b: INPUT is FP32, b wants INT64")]),
     "Degraded", "InvalidSpec: edge a -> b: INPUT is FP32, b wants INT64"),
    ("not ready, nothing else said", deployment(observedGeneration=3, conditions=[NOT_READY]), "Progressing", "2/3 nodes ready"),
    ("no conditions", deployment(observedGeneration=3), "Progressing", "Waiting for the Ready condition"),
    ("no generation (a dry run)", deployment(generation=None, observedGeneration=1, conditions=[READY]), "Healthy", "3/3 nodes ready"),
]


@pytest.mark.parametrize(("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_health(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health(obj)
    assert got_status == status
    assert message in got_message


def test_gitops_doc_carries_the_same_script() -> None:
    doc = (ROOT / "docs" / "gitops.md").read_text()
    block = re.search(
        r"resource\.customizations\.health\.servegraph\.io_ModelDeployment: \|\n((?:    .*\n|\n)+)", doc
    )
    assert block, "docs/gitops.md has no argocd-cm snippet"
    embedded = "\n".join(line[4:] for line in block.group(1).rstrip("\n").split("\n")) + "\n"
    assert embedded == SCRIPT.read_text(), "docs/gitops.md's snippet differs from docs/argocd-health.lua"
