"""Manifests for the control-plane tests: files under manifests/ and a dict to mutate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parent / "manifests"
ROOT = Path(__file__).resolve().parents[2]
ADD_SUB = ROOT / "examples" / "models" / "add_sub"

GRAPH: dict[str, Any] = yaml.safe_load(
    """
apiVersion: servegraph.io/v1alpha1
kind: ModelDeployment
metadata: {name: graph}
spec:
  entrypoint: pre
  nodes:
    - name: pre
      type: Transformer
      children: [split]
      transformer:
        input: [{kind: StandardScaler, mean: [0.5, 1.0], scale: [2.0, 4.0]}]
    - name: split
      type: Router
      children: [a, ens]
      router:
        strategy: Weighted
        weights: [{child: a, weight: 50}, {child: ens, weight: 50}]
    - name: ens
      type: Combiner
      children: [b, c]
      combiner: {method: Mean}
    - {name: a, type: Model, model: {storageUri: models/a}}
    - {name: b, type: Model, model: {storageUri: models/b}}
    - {name: c, type: Model, model: {storageUri: models/c}}
"""
)
"""Every node type in one valid graph: pre -> split -> (a | ens -> (b, c))."""


def node(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """The node called ``name`` in a manifest dict, to mutate."""
    return next(n for n in manifest["spec"]["nodes"] if n["name"] == name)


@pytest.fixture
def graph() -> dict[str, Any]:
    """A fresh copy of GRAPH."""
    return copy.deepcopy(GRAPH)
