"""What the data plane serves under a model name: a loaded model version or a graph node.

The DataPlane talks to a ``ModelSource`` (the model repository, or the host of one graph
node) and the ``Servable`` it hands out, so the REST and gRPC transports serve a node
through the same endpoints as a model and a client cannot tell a graph from a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from servegraph.runtime.protocol.types import InferRequest, InferResponse


class StatsSource(Protocol):
    def to_dict(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        ...


class Servable(Protocol):
    """One servable version: what every per-model endpoint needs from it."""

    name: str
    version: str

    @property
    def platform(self) -> str: ...

    @property
    def stats(self) -> StatsSource: ...

    @property
    def allows_timeout_override(self) -> bool:
        """Whether the per-request ``timeout`` parameter may tighten the deadline."""
        ...

    @property
    def group_rows(self) -> int:
        """The rows a request grouped by a front-end worker (``InferRequest.requests`` > 1)
        may carry: 0 where alike requests must not be run as one."""
        ...

    def is_ready(self) -> bool: ...

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Inputs and outputs as v2 metadata entries: ``{"name", "datatype", "shape"}``."""
        ...

    async def infer(self, request: InferRequest) -> InferResponse: ...


@runtime_checkable
class FeedbackTarget(Protocol):
    """A servable that learns from rewards (routers, and nodes that pass rewards on)."""

    async def feedback(self, request_id: str, reward: float) -> dict[str, Any]: ...


class ModelSource(Protocol):
    """Where the DataPlane finds what it serves."""

    @property
    def models(self) -> Mapping[str, Any]:
        """Every known model name (ready or not)."""
        ...

    def get(self, name: str, version: str = "") -> Servable:
        """The servable for a request: 404 if unknown, 503 if it cannot serve."""
        ...

    def served_versions(self, name: str) -> list[str]: ...

    def all_ready(self) -> bool: ...

    def any_ready(self) -> bool: ...

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]: ...

    def triton_config(self, name: str, version: str = "") -> dict[str, Any]:
        """Triton's ModelConfig as JSON (protobuf field names), for the config endpoints."""
        ...

    async def sync(self) -> None: ...

    async def poll(self, interval: float) -> None: ...

    async def close(self, timeout: float) -> bool: ...
