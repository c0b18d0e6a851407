"""One rendering, two targets: a ModelDeployment into per-node configs and model repositories.

``render_graph`` is what both the operator (into ConfigMaps and Deployments) and
``servegraph run`` (into local files and processes) start from, so what runs on a laptop
is what runs in the cluster. It is pure: spec in, config objects out. Endpoints come from
the caller (Service DNS names in a cluster, 127.0.0.1 ports locally), and model folders
are never read here: the local runner (``servegraph.local.repository``) materialises them.

A Model node's own folder keeps its config (Triton layout); the spec only overrides parts
of it (name, backend, versions, batching, instances). Those overrides are data
(``ConfigOverrides``), applied wherever the folder is: here for a local folder, and after
the fetch for a remote one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servegraph.operator.spec import BANDITS, ModelDeployment, Node, Step
from servegraph.operator.spec import TensorSignature as SpecTensor
from servegraph.operator.validation import SpecError, topological_order, validate
from servegraph.runtime.config import Backend, ModelConfig, VersionPolicy
from servegraph.runtime.graph.config import (
    ChildEndpoint,
    CombinerSettings,
    NodeConfig,
    RouterSettings,
    TensorSignature,
    TransformerSettings,
    TransformStep,
)


class RenderError(ValueError):
    """A valid spec that this target cannot serve as it stands (a missing folder, an unfetchable URI)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a node is reached: ``host:port`` for each protocol."""

    http: str
    grpc: str


# ----------------------------------------------------------------------------- overrides


class _Plain(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DynamicBatchingOverrides(_Plain):
    """Fields of ``dynamic_batching`` the spec sets; None keeps the model config's value."""

    max_queue_delay_microseconds: int | None = None
    preferred_batch_size: list[int] | None = None
    max_queue_size: int | None = None
    default_timeout_microseconds: int | None = None
    scheduler: Literal["cost_aware", "fixed_delay"] | None = None


class ShapeBucketOverrides(_Plain):
    """Bucket sizes the spec sets; per-input axes replace the config's for that axis."""

    batch_sizes: list[int] = Field(default_factory=list, description="Empty keeps the config's.")
    dims: dict[str, dict[int, list[int]]] = Field(default_factory=dict)


class ConfigOverrides(_Plain):
    """What the spec changes in a model folder's own config (snake_case, as in config.yaml).

    Serialisable so that the operator can ship it next to a remote model and apply it in
    the pod once the folder is fetched, exactly as ``servegraph.local.repository`` does locally.
    """

    name: str = Field(description="The v2 model name (the spec's modelName).")
    backend: Backend | None = None
    version_policy: VersionPolicy | None = None
    max_batch_size: int | None = None
    dynamic_batching: DynamicBatchingOverrides | None = Field(
        None, description="Set when the spec has a batching block: dynamic batching is on."
    )
    shape_buckets: ShapeBucketOverrides | None = None
    instance_count: int | None = None

    def apply(self, base: ModelConfig) -> ModelConfig:
        """``base`` with these overrides laid over it, validated again as a whole."""
        data: dict[str, Any] = base.model_dump()
        data["name"] = self.name
        if self.backend is not None:
            data["backend"] = self.backend
        if self.version_policy is not None:
            data["version_policy"] = self.version_policy.model_dump()
        if self.max_batch_size is not None:
            data["max_batch_size"] = self.max_batch_size
        if self.dynamic_batching is not None:
            batching = data.get("dynamic_batching") or {}
            wanted = self.dynamic_batching.model_dump(exclude_none=True)
            timeout = wanted.pop("default_timeout_microseconds", None)
            batching.update(wanted)
            if timeout is not None:
                batching.setdefault("default_queue_policy", {})["default_timeout_microseconds"] = timeout
            data["dynamic_batching"] = batching
        if self.shape_buckets is not None:
            buckets = data.get("shape_buckets") or {}
            if self.shape_buckets.batch_sizes:
                buckets["batch_sizes"] = self.shape_buckets.batch_sizes
            dims = buckets.setdefault("dims", {})
            for tensor, axes in self.shape_buckets.dims.items():
                dims.setdefault(tensor, {}).update(axes)
            data["shape_buckets"] = buckets
        if self.instance_count is not None:
            # Keep the folder's choice of device (kind, gpus); the spec sets how many.
            groups = data.get("instance_group") or [{}]
            data["instance_group"] = [{**groups[0], "count": self.instance_count}]
        return ModelConfig.model_validate(data)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RenderedModel:
    """A one-model repository for a Model node.

    ``repository_files`` maps a path in the repository to where its content comes from: a
    local folder (``Path``) to link, or a URI (``str``) to fetch. Today that is one entry,
    ``{model_name: source}``, the model folder in Triton layout.
    """

    node: str
    model_name: str
    repository_files: dict[str, str | Path]
    overrides: ConfigOverrides
    storage_uri: str
    """The spec's raw value, for messages."""

    @property
    def local(self) -> bool:
        """Whether every file is on this machine (``servegraph run`` can serve it)."""
        return all(isinstance(source, Path) for source in self.repository_files.values())


@dataclass(frozen=True)
class RenderedGraph:
    """Everything both targets need to start a graph."""

    entrypoint: str
    models: dict[str, RenderedModel]
    nodes: dict[str, NodeConfig]
    order: list[str]
    """Start order: children before parents, the entrypoint last."""

    @property
    def entry_model(self) -> str:
        """The v2 model name a client calls at the entrypoint."""
        if self.entrypoint in self.nodes:
            return self.nodes[self.entrypoint].model_name
        return self.models[self.entrypoint].model_name


# ----------------------------------------------------------------------------- rendering


def render_graph(
    deployment: ModelDeployment,
    endpoint: Callable[[str], Endpoint],
    manifest_dir: Path | None = None,
    state_dir: str = "",
) -> RenderedGraph:
    """Validate ``deployment`` and render every node; ``endpoint(node)`` says where a node listens.

    Relative paths (storageUri, transformer files) are resolved against ``manifest_dir``
    when given. With ``state_dir``, bandit routers keep their state in
    ``{state_dir}/{node}.json``.
    """
    validate(deployment)
    order = topological_order(deployment)
    models: dict[str, RenderedModel] = {}
    nodes: dict[str, NodeConfig] = {}
    for name in order:
        node = deployment.node(name)
        if node.type == "Model":
            models[name] = _render_model(node, manifest_dir)
        else:
            nodes[name] = _render_node(deployment, node, endpoint, manifest_dir, state_dir)
    return RenderedGraph(deployment.spec.entrypoint, models, nodes, order)


def served_name(deployment: ModelDeployment, node: Node) -> str:
    """The v2 model name a node answers to: the deployment's name at a non-model entrypoint."""
    if node.type == "Model":
        return node.v2_model_name
    return deployment.metadata.name if node.name == deployment.spec.entrypoint else node.name


def headers_below(deployment: ModelDeployment, name: str) -> list[str]:
    """The headers Header routers below node ``name`` route on (lower-case, sorted).

    A node passes these on to its children, so a Header router anywhere in the graph sees
    the caller's header, not only at the entrypoint.
    """
    found: set[str] = set()
    seen: set[str] = set()
    stack = list(deployment.node(name).children)
    while stack:
        child = deployment.node(stack.pop())
        if child.name in seen:
            continue
        seen.add(child.name)
        if child.router is not None and child.router.strategy == "Header" and child.router.header:
            found.add(child.router.header.lower())
        stack.extend(child.children)
    return sorted(found)


_ROLES: dict[str, Literal["router", "combiner", "transformer"]] = {
    "Router": "router",
    "Combiner": "combiner",
    "Transformer": "transformer",
}


def _render_node(
    deployment: ModelDeployment,
    node: Node,
    endpoint: Callable[[str], Endpoint],
    manifest_dir: Path | None,
    state_dir: str,
) -> NodeConfig:
    children = []
    for child_name in dict.fromkeys(node.children):
        where = endpoint(child_name)
        children.append(
            ChildEndpoint(
                name=child_name,
                model=served_name(deployment, deployment.node(child_name)),
                grpc=where.grpc,
                http=where.http,
            )
        )
    role = _ROLES[node.type]
    settings: dict[str, Any] = {}
    try:
        if node.router is not None:
            settings["router"] = _router_settings(node, state_dir)
        if node.combiner is not None:
            settings["combiner"] = _combiner_settings(node)
        if node.transformer is not None:
            settings["transformer"] = TransformerSettings(
                input=[_step(s, manifest_dir) for s in node.transformer.input],
                output=[_step(s, manifest_dir) for s in node.transformer.output],
            )
        signature = node.signature
        return NodeConfig(
            node=node.name,
            deployment=deployment.metadata.name,
            role=role,
            model_name=served_name(deployment, node),
            children=children,
            inputs=[_tensor(t) for t in signature.inputs] if signature else [],
            outputs=[_tensor(t) for t in signature.outputs] if signature else [],
            default_timeout_ms=node.timeout_ms or 0,
            forward_headers=headers_below(deployment, node.name),
            **settings,
        )
    except ValidationError as error:
        # The spec's own rules should have caught this; if the two schemas drift, say where.
        raise SpecError(
            [
                f"node '{node.name}': its {role} config is invalid: {e['msg']} at {e['loc']}"
                for e in error.errors()
            ],
            deployment.metadata.name,
        ) from None


def _router_settings(node: Node, state_dir: str) -> RouterSettings:
    router = node.router
    assert router is not None
    data = router.model_dump(exclude_none=True, exclude={"weights", "routes"})
    if router.weights is not None:
        data["weights"] = {w.child: w.weight for w in router.weights}
    if router.routes is not None:
        data["routes"] = {r.value: r.child for r in router.routes}
    if state_dir and router.strategy in BANDITS:
        data["state_file"] = f"{state_dir}/{node.name}.json"
    return RouterSettings.model_validate(data)


def _combiner_settings(node: Node) -> CombinerSettings:
    combiner = node.combiner
    assert combiner is not None
    data = combiner.model_dump(exclude_none=True, exclude={"weights"})
    if combiner.weights is not None:
        data["weights"] = {w.child: w.weight for w in combiner.weights}
    return CombinerSettings.model_validate(data)


def _step(step: Step, manifest_dir: Path | None) -> TransformStep:
    data = step.model_dump(exclude_none=True)
    for key in ("params_file", "reference_file", "file"):
        if data.get(key):
            data[key] = str(_relative_to(data[key], manifest_dir))
    return TransformStep.model_validate(data)


def _tensor(tensor: SpecTensor) -> TensorSignature:
    return TensorSignature(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))


def _relative_to(path: str, manifest_dir: Path | None) -> Path:
    """``path`` as written, or joined to the manifest's folder when it is relative."""
    resolved = Path(path)
    if manifest_dir is not None and not resolved.is_absolute():
        resolved = manifest_dir / resolved
    return Path(os.path.normpath(resolved))


def local_source(storage_uri: str, manifest_dir: Path | None = None) -> Path | None:
    """The folder a file:// or relative storageUri names; None for remote schemes."""
    uri = storage_uri.strip()
    if "://" not in uri:
        return _relative_to(uri, manifest_dir)
    if urlparse(uri).scheme == "file":
        return _relative_to(uri[len("file://"):], manifest_dir)
    return None


def _render_model(node: Node, manifest_dir: Path | None) -> RenderedModel:
    model = node.model
    assert model is not None
    name = node.v2_model_name
    source = local_source(model.storage_uri, manifest_dir)
    return RenderedModel(
        node=node.name,
        model_name=name,
        repository_files={name: source if source is not None else model.storage_uri.strip()},
        overrides=_overrides(node),
        storage_uri=model.storage_uri,
    )


def _overrides(node: Node) -> ConfigOverrides:
    model = node.model
    assert model is not None
    policy = model.version_policy
    chosen = policy is not None and any(
        getattr(policy, k) is not None for k in ("latest", "specific", "all")
    )
    batching = model.batching
    dynamic = None
    buckets = None
    if batching is not None:
        dynamic = DynamicBatchingOverrides(
            max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
            preferred_batch_size=batching.preferred_batch_sizes,
            max_queue_size=batching.max_queue_size,
            default_timeout_microseconds=batching.timeout_microseconds,
            scheduler=batching.scheduler,
        )
        if batching.shape_buckets is not None:
            dims: dict[str, dict[int, list[int]]] = {}
            for dim in batching.shape_buckets.dims:
                dims.setdefault(dim.input, {})[dim.axis] = sorted(set(dim.sizes))
            buckets = ShapeBucketOverrides(batch_sizes=batching.shape_buckets.batch_sizes, dims=dims)
    return ConfigOverrides(
        name=node.v2_model_name,
        backend=model.format,
        version_policy=(
            VersionPolicy.model_validate(policy.model_dump(exclude_none=True))
            if policy is not None and chosen
            else None
        ),
        max_batch_size=batching.max_batch_size if batching else None,
        dynamic_batching=dynamic,
        shape_buckets=buckets,
        instance_count=model.instances,
    )
