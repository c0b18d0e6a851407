"""Hosting one graph node in a ``servegraph serve`` process (``--node-config FILE``).

``NodeHost`` is the DataPlane's model source in node mode, as the model repository is in
model mode: it answers for exactly one model name (the node's) and version "1", so every
v2 endpoint serves the node unchanged and a client cannot tell a graph from a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from servegraph.runtime.graph.combiner import CombinerNode
from servegraph.runtime.graph.config import NodeConfig
from servegraph.runtime.graph.node import VERSION, GraphNode
from servegraph.runtime.graph.router import RouterNode
from servegraph.runtime.graph.transformer import TransformerNode
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol.errors import ModelNotFound
from servegraph.runtime.protocol.versions import requested_version

ROLES: dict[str, type[GraphNode]] = {
    "router": RouterNode,
    "combiner": CombinerNode,
    "transformer": TransformerNode,
}


def load_node_config(path: Path) -> NodeConfig:
    """A NodeConfig from a YAML or JSON file (JSON is YAML), with the file named in errors."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read node config {path}: {exc}") from exc
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid node config {path}: {exc}") from exc


def build_node(
    config: NodeConfig, metrics: ServerMetrics, *, base_dir: Path | None = None, poll_interval: float = 1.0
) -> GraphNode:
    """The node for ``config.role``; relative paths in its settings resolve against ``base_dir``."""
    return ROLES[config.role](config, metrics, base_dir=base_dir, poll_interval=poll_interval)


class NodeHost:
    """One graph node as a ModelSource for the DataPlane."""

    def __init__(self, node: GraphNode) -> None:
        self.node = node

    @property
    def models(self) -> Mapping[str, GraphNode]:
        return {self.node.name: self.node}

    def get(self, name: str, version: str = "") -> GraphNode:
        if name != self.node.name:
            raise ModelNotFound(f"unknown model: '{name}'")
        if version and requested_version(version, name) != int(VERSION):
            raise ModelNotFound(f"unknown version '{version}' of model '{name}'; available: [{VERSION}]")
        return self.node

    def served_versions(self, name: str) -> list[str]:
        return [VERSION] if name == self.node.name else []

    def all_ready(self) -> bool:
        return self.node.is_ready()

    def any_ready(self) -> bool:
        return self.node.is_ready()

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        ready = self.node.is_ready()
        if ready_only and not ready:
            return []
        waiting = [c for c in self.node.children if not self.node.child_is_ready(c)]
        reason = "" if ready else (f"children not ready: {waiting}" if waiting else "signature not known yet")
        return [
            {"name": self.node.name, "version": VERSION, "state": "READY" if ready else "UNAVAILABLE", "reason": reason}
        ]

    def triton_config(self, name: str, version: str = "") -> dict[str, Any]:
        return self.get(name, version).triton_config()

    async def sync(self) -> None:
        await self.node.start()

    async def poll(self, interval: float) -> None:
        """Nothing to rescan: the node watches its children itself."""

    async def close(self, timeout: float) -> bool:
        return await self.node.close(timeout)
