"""The protocol-neutral data plane: what every endpoint means, for REST and gRPC alike.

Transports decode their wire format into ``InferRequest``, call one method here, and encode
what comes back; errors are raised as ``ServegraphError`` and mapped by the transport
through ``protocol.errors.ERROR_TABLE``.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Gauge

from servegraph import __version__
from servegraph.runtime.config import ServerSettings
from servegraph.runtime.protocol import parameters as graph_params
from servegraph.runtime.protocol.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
    Unsupported,
)
from servegraph.runtime.protocol.types import InferRequest, InferResponse
from servegraph.runtime.servable import FeedbackTarget, ModelSource, Servable

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "parameters",
    "schedule_policy",
]
"""Protocol extensions reported by ``GET /v2`` (only what is implemented)."""


class DataPlane:
    def __init__(self, repository: ModelSource, settings: ServerSettings, inflight: Gauge | None = None) -> None:
        self.repository = repository
        self.settings = settings
        self.inflight = inflight
        """Requests being handled, for autoscaling on concurrency (None: not counted)."""
        self.started = False
        """Set once the first repository load (and warm-up) has finished."""
        self.draining = False
        """Set on SIGTERM: not ready, no new inference."""

    # ------------------------------------------------------------------ health
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        if self.settings.strict_readiness:
            return self.repository.all_ready()
        return self.repository.any_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        if name not in self.repository.models:
            raise ModelNotFound(f"unknown model: '{name}'")
        try:
            model = self.repository.get(name, version)
        except ModelNotReady:
            return False  # anything else (a bug included) is an error, never a health answer
        return model.is_ready() and not self.draining

    # ---------------------------------------------------------------- metadata
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "servegraph", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.repository.get(name, version)
        inputs, outputs = model.tensor_metadata()
        return {
            "name": model.name,
            "versions": self.repository.served_versions(name),
            "platform": model.platform,
            "inputs": inputs,
            "outputs": outputs,
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """Triton's ModelConfig as JSON (protobuf field names), as the config endpoints send it."""
        return self.repository.triton_config(name, version)

    def model_statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Statistics of one version, every ready version of a model, or every model."""
        if name and version:
            return [self.repository.get(name, version).stats.to_dict()]
        names = [name] if name else sorted(self.repository.models)
        if name and name not in self.repository.models:
            raise ModelNotFound(f"unknown model: '{name}'")
        stats = []
        for model_name in names:
            for v in self.repository.served_versions(model_name):
                stats.append(self.repository.get(model_name, v).stats.to_dict())
        return stats

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.repository.index(ready_only)

    # --------------------------------------------------------------- inference
    def model_for(self, request: InferRequest) -> Servable:
        return self.repository.get(request.model_name, request.model_version)

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.draining:
            raise ShuttingDown("server is shutting down and accepts no new requests")
        if graph_params.FEEDBACK_ID in request.parameters:
            return await self._feedback_request(request)
        model = self.model_for(request)
        self._apply_timeout_parameter(request, model)
        if self.inflight is None:
            return await model.infer(request)
        self.inflight.inc()
        try:
            return await model.infer(request)
        finally:
            self.inflight.dec()

    @staticmethod
    def _apply_timeout_parameter(request: InferRequest, model: Servable) -> None:
        """Triton's per-request ``timeout`` parameter (microseconds) tightens the deadline."""
        timeout = request.parameters.get("timeout")
        if timeout is None:
            return
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise InvalidInput(f"parameter 'timeout' must be a non-negative integer of microseconds, got {timeout!r}")
        if not model.allows_timeout_override:
            return
        if timeout > 0:
            deadline = time.monotonic() + timeout / 1e6
            if request.deadline is None or deadline < request.deadline:
                request.deadline = deadline

    # ---------------------------------------------------------------- feedback
    async def feedback(self, name: str, version: str, request_id: Any, reward: Any) -> dict[str, Any]:
        """A reward for an earlier request, for a graph node that learns from it (a router)."""
        if self.draining:
            raise ShuttingDown("server is shutting down and accepts no new requests")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput(f"feedback needs the 'id' of the rewarded request as a non-empty string, got {request_id!r}")
        value = graph_params.parse_reward(reward)
        model = self.repository.get(name, version)
        if not isinstance(model, FeedbackTarget):
            raise Unsupported(f"model '{name}' takes no feedback: only graph nodes (routers, and nodes above one) do")
        return await model.feedback(request_id, value)

    async def _feedback_request(self, request: InferRequest) -> InferResponse:
        """Feedback sent as an inference request (gRPC): parameters ``servegraph.feedback_id``
        and ``servegraph.reward``, no inputs; answered with no outputs and the route rewarded."""
        if request.inputs:
            raise InvalidInput(
                f"a feedback request ({graph_params.FEEDBACK_ID}) for model '{request.model_name}' carries no inputs"
            )
        if graph_params.REWARD not in request.parameters:
            raise InvalidInput(f"a feedback request needs the parameter '{graph_params.REWARD}'")
        result = await self.feedback(
            request.model_name,
            request.model_version,
            request.parameters[graph_params.FEEDBACK_ID],
            request.parameters[graph_params.REWARD],
        )
        return InferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            outputs={},
            datatypes={},
            id=str(result.get("id", "")),
            parameters={graph_params.FEEDBACK: "accepted", graph_params.ROUTE: str(result.get("route", ""))},
        )
