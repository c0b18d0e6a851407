"""deploy/servegraph.yaml is what the chart renders with its defaults (no drift), and it is a
complete install: Namespace, CRDs, operator, RBAC, each object valid for Kubernetes 1.33."""

from __future__ import annotations

import importlib.util
from typing import Any

import kubernetes_validate
import yaml

from tests.install.chart import KUBE_VERSION, ROOT

MANIFEST = ROOT / "deploy" / "servegraph.yaml"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("render_install", ROOT / "scripts" / "render_install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_manifest_has_not_drifted() -> None:
    assert MANIFEST.read_text() == _script().render(), "deploy/servegraph.yaml is stale: run `make install-manifest`"


def test_manifest_is_a_whole_install_in_order() -> None:
    objects = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace" and objects[0]["metadata"]["name"] == "servegraph-system"
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"):
        assert kinds.count(kind) == 1, kind
    assert kinds.index("ClusterRoleBinding") < kinds.index("Deployment")
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    expected = sorted(p.name for p in (ROOT / "charts" / "servegraph" / "crds").glob("*.yaml"))
    assert len(crds) == len(expected)  # every chart CRD (none until `servegraph crd` has run)
    if crds:
        assert kinds.index("CustomResourceDefinition") < kinds.index("Deployment")
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert obj["metadata"]["namespace"] == "servegraph-system"


def test_check_mode_reports_drift(tmp_path: Any) -> None:
    script = _script()
    stale = tmp_path / "servegraph.yaml"
    stale.write_text("# old\n")
    assert script.main(["--check", "--output", str(stale)]) == 1
    assert script.main(["--output", str(stale)]) == 0
    assert script.main(["--check", "--output", str(stale)]) == 0
