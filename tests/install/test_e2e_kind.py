"""The kind end-to-end script and its cluster config, checked statically: the script cannot
run here (no Docker engine)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.install.chart import ROOT

SCRIPT = ROOT / "scripts" / "e2e-kind.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean() -> None:
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_script_is_strict_and_checks_its_tools_first() -> None:
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text
    first_cluster_command = text.index("kind create cluster")
    for tool in ("docker", "kind", "kubectl", "helm"):
        assert re.search(rf"for tool in [^\n]*\b{tool}\b", text[:first_cluster_command]), tool
    assert "command -v" in text[:first_cluster_command]


def test_script_does_every_step_and_says_so() -> None:
    text = SCRIPT.read_text()
    steps = re.findall(r'^step "([^"]+)"', text, re.MULTILINE)
    in_order = [
        "kind create cluster",
        "docker build -f images/operator.Dockerfile",
        "docker build -f images/runtime.Dockerfile",
        "kind load docker-image",
        "helm install servegraph charts/servegraph",
        "examples/graphs/ab-test.yaml",
        "kubectl -n \"$GRAPH_NS\" wait --for=condition=Ready",
        "port-forward",
        "tritonclient.http",
        "delete \"modeldeployment/$GRAPH\"",
        "helm uninstall",
    ]
    position = text.index('step "Checking the tools')
    for needle in in_order:  # each after the one before
        found = text.find(needle, position)
        assert found > position, f"{needle!r} missing or out of order"
        position = found
    assert len(steps) >= 10
    assert "kind delete cluster" in text  # the teardown, in the EXIT trap
    for path in ("kind-config.yaml", "images/operator.Dockerfile", "images/runtime.Dockerfile",
                 "examples/graphs/ab-test.yaml", "examples/graphs/models/scorer/1/model.py", "charts/servegraph"):
        assert path in text and (ROOT / path).exists(), path


def test_script_rewrites_the_example_it_applies() -> None:
    assert "storageUri: models/scorer" in (ROOT / "examples" / "graphs" / "ab-test.yaml").read_text()


def test_makefile_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^e2e-kind:.*\n\t.*bash scripts/e2e-kind\.sh", makefile, re.MULTILINE)
    assert re.search(r"^\.PHONY:.*\be2e-kind\b", makefile, re.MULTILINE)


def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+", node["image"])
    mappings = config["nodes"][0]["extraPortMappings"]
    assert {(m["containerPort"], m["hostPort"]) for m in mappings} == {(30800, 30800), (30801, 30801)}
    mount = config["nodes"][1]["extraMounts"][0]
    assert (ROOT / mount["hostPath"]).is_dir() and mount["readOnly"] is True
    assert mount["containerPath"] in SCRIPT.read_text()
