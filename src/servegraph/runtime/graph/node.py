"""GraphNode: what the data plane serves for a router, combiner or transformer.

A node looks like one model to its callers: a name (the deployment's model name), version
"1", metadata, readiness, statistics in Triton's shape (plus a ``servegraph`` entry with
what only a node has) and inference. Each role subclasses it and implements ``_infer``.

Readiness is cached: a background task asks every child whether it is ready every
``poll_interval`` seconds, and every child call updates the cache too (a child that cannot
be reached, or says it cannot serve, is marked down at once). A busy child (its queue full)
is not down: backpressure passes back to the caller as 503 with the child's retry hint and
never changes readiness, or a node would leave its Service exactly when load is highest. A node is ready only when every child is, and when it knows its
signature (declared in its config, else fetched from a child's metadata).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from servegraph.runtime.graph.client import ChildAnswer, ChildClient, forwarded_headers, forwarded_parameters
from servegraph.runtime.graph.config import NodeConfig, TensorSignature
from servegraph.runtime.graph.metrics import GraphMetrics
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol.errors import (
    ChildBusy,
    ChildDeadlineExceeded,
    ChildRejected,
    ChildUnavailable,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ServegraphError,
    UnknownRequestId,
)
from servegraph.runtime.protocol.types import InferRequest, InferResponse
from servegraph.runtime.stats import ModelStats

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
"""Longest wait for one child's readiness answer (a healthy child answers in microseconds)."""

FEEDBACK_TIMEOUT = 5.0
"""Deadline of a reward passed on to a child."""

VERSION = "1"

Signature = list[TensorSignature]


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a failed request."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ChildBusy):
        return "busy"
    if isinstance(exc, ChildUnavailable):
        return "unavailable"
    if isinstance(exc, InvalidInput):
        return "invalid"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, ModelNotReady):
        return "rejected"
    return "error"


def _child_outcome(exc: ServegraphError) -> str:
    if isinstance(exc, ChildBusy):
        return "busy"
    if isinstance(exc, ChildUnavailable):
        return "unavailable"
    if isinstance(exc, ChildDeadlineExceeded):
        return "timeout"
    if isinstance(exc, ChildRejected):
        return "rejected"
    return "failed"


@dataclass(slots=True)
class ChildCounts:
    success: int = 0
    failed: int = 0


class NodeStats:
    """Triton's statistics entry for the node, plus a ``servegraph`` entry of node extras.

    Over gRPC the extras are dropped (Triton's proto has no place for them); HTTP and the
    Prometheus metrics carry them.
    """

    def __init__(self, node: GraphNode) -> None:
        self._node = node
        self.model = ModelStats(node.name, node.version)

    def to_dict(self) -> dict[str, Any]:
        entry = self.model.to_dict()
        entry["servegraph"] = self._node.extras()
        return entry


class GraphNode(ABC):
    """The shared half of every node role: children, readiness, signature, stats, deadlines."""

    role: ClassVar[str]

    def __init__(
        self,
        config: NodeConfig,
        metrics: ServerMetrics,
        *,
        base_dir: Path | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.config = config
        self.node = config.node
        self.name = config.model_name
        self.version = VERSION
        self.base_dir = base_dir or Path.cwd()
        self.poll_interval = poll_interval
        self.children = [c.name for c in config.children]
        if len(set(self.children)) != len(self.children):
            raise ValueError(f"node '{self.node}' lists a child twice: {self.children}")
        self.clients = {c.name: ChildClient(c, self.node) for c in config.children}
        self._child_ready = dict.fromkeys(self.children, False)
        self._counts = {c: ChildCounts() for c in self.children}
        self.graph_metrics = GraphMetrics.for_registry(metrics.registry)
        # Bound once: a labels() lookup per call costs more than the count itself.
        self._child_successes = {c: self.graph_metrics.child_requests.labels(self.node, c, "success") for c in self.children}
        self._inputs: Signature | None = list(config.inputs) or None
        self._outputs: Signature | None = list(config.outputs) or None
        self._metrics = metrics.for_model(self.name, self.version)
        self.stats = NodeStats(self)
        self._inflight = 0
        self._drained: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ role hooks
    @abstractmethod
    async def _infer(self, request: InferRequest) -> InferResponse:
        """Serve one request (its deadline already set); outputs not yet filtered."""

    def role_extras(self) -> dict[str, Any]:
        """What this role adds to the node's statistics."""
        return {}

    def signature_child(self) -> str:
        """The child whose metadata gives the node's signature when its config declares none."""
        return self.children[0]

    def derive_outputs(self, outputs: Signature) -> Signature:
        """The node's outputs given its signature child's (roles that reshape them override)."""
        return outputs

    async def close_role(self) -> None:
        """Release what the role holds (background copies, state) at shutdown."""

    # --------------------------------------------------------------- serving
    @property
    def platform(self) -> str:
        return f"servegraph_{self.role}"

    @property
    def allows_timeout_override(self) -> bool:
        return True

    @property
    def group_rows(self) -> int:
        return 0  # a node routes, combines or transforms each request on its own

    def resolve(self, path: str) -> Path:
        """A path from the config: absolute, or relative to the config file's folder."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    def response(
        self,
        request: InferRequest,
        outputs: dict[str, Any],
        datatypes: dict[str, str],
        *,
        request_id: str = "",
        parameters: dict[str, Any] | None = None,
    ) -> InferResponse:
        return InferResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=outputs,
            datatypes=datatypes,
            id=request_id or request.id,
            parameters=parameters or {},
        )

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check, serve, select outputs; count the outcome in stats and metrics."""
        start = time.perf_counter_ns()
        if request.deadline is None and self.config.default_timeout_ms:
            request.deadline = time.monotonic() + self.config.default_timeout_ms / 1000
        self._inflight += 1
        try:
            self._check_inputs(request)
            response = await self._infer(request)
            self._select_outputs(request, response)
        except BaseException as exc:
            self.stats.model.fail.add(time.perf_counter_ns() - start)
            self._metrics.outcome(outcome_of(exc))
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0 and self._drained is not None:
                self._drained.set()
        elapsed = time.perf_counter_ns() - start
        stats = self.stats.model
        stats.success.add(elapsed)
        stats.compute_infer.add(elapsed)
        stats.execution_count += 1
        first = next(iter(request.inputs.values()), None)
        stats.inference_count += int(first.shape[0]) if first is not None and first.ndim else 1
        stats.last_inference_ms = int(time.time() * 1000)
        self._metrics.success.inc()
        self._metrics.latency.observe(elapsed / 1e9)
        return response

    async def call(
        self,
        child: str,
        request: InferRequest,
        *,
        inputs: dict[str, Any] | None = None,
        datatypes: dict[str, str] | None = None,
        request_id: str | None = None,
        deadline: float | None = None,
    ) -> ChildAnswer:
        """Call one child with the request (or other inputs), its id, parameters and deadline."""
        try:
            answer = await self.clients[child].infer(
                request.inputs if inputs is None else inputs,
                request.datatypes if datatypes is None else datatypes,
                request_id=request.id if request_id is None else request_id,
                parameters=forwarded_parameters(request.parameters),
                headers=forwarded_headers(request.headers, self.config.forward_headers),
                deadline=request.deadline if deadline is None else deadline,
            )
        except ServegraphError as exc:
            self._counts[child].failed += 1
            self.graph_metrics.child_requests.labels(self.node, child, _child_outcome(exc)).inc()
            if isinstance(exc, ChildUnavailable):
                self._mark(child, False)
            raise
        self._counts[child].success += 1
        self._child_successes[child].inc()
        self._mark(child, True)
        return answer

    def _check_inputs(self, request: InferRequest) -> None:
        """400 for inputs that do not fit a signature the config declares (else the children judge)."""
        declared = self.config.inputs
        if not declared:
            return
        expected = {t.name: t for t in declared}
        model = self.name
        for name in request.inputs:
            if name not in expected:
                raise InvalidInput(
                    f"unexpected inference input '{name}' for model '{model}'; expected inputs {sorted(expected)}"
                )
        for name, spec in expected.items():
            array = request.inputs.get(name)
            if array is None:
                raise InvalidInput(f"expected input '{name}' for model '{model}' is missing")
            datatype = request.datatypes.get(name, "")
            if datatype != spec.datatype:
                raise InvalidInput(
                    f"inference input '{name}' for model '{model}' has datatype {datatype}, expected {spec.datatype}"
                )
            shape = array.shape
            if len(shape) != len(spec.shape) or any(e != -1 and e != s for e, s in zip(spec.shape, shape)):
                raise InvalidInput(
                    f"unexpected shape for input '{name}' for model '{model}': expected {spec.shape}, got {list(shape)}"
                )

    def _select_outputs(self, request: InferRequest, response: InferResponse) -> None:
        if request.outputs is None:
            return
        selected: dict[str, Any] = {}
        datatypes: dict[str, str] = {}
        for wanted in request.outputs:
            if wanted.name not in response.outputs:
                raise InvalidInput(
                    f"unexpected inference output '{wanted.name}' for model '{self.name}'; "
                    f"outputs are {sorted(response.outputs)}"
                )
            selected[wanted.name] = response.outputs[wanted.name]
            datatypes[wanted.name] = response.datatypes[wanted.name]
        response.outputs, response.datatypes = selected, datatypes

    # ------------------------------------------------------------- feedback
    async def feedback(self, request_id: str, reward: float) -> dict[str, Any]:
        """Pass a reward on to every child; accepted when one of them takes it.

        A node that is not a router keeps no routing records, but a router below it does.
        """
        deadline = time.monotonic() + FEEDBACK_TIMEOUT
        results = await asyncio.gather(
            *(self.clients[c].feedback(request_id, reward, deadline) for c in self.children),
            return_exceptions=True,
        )
        accepted = [
            (child, result) for child, result in zip(self.children, results) if isinstance(result, ChildAnswer)
        ]
        if not accepted:
            errors = [r for r in results if isinstance(r, ServegraphError)]
            unknown = [e for e in errors if isinstance(e, UnknownRequestId)]
            if unknown:
                raise UnknownRequestId(
                    f"no child of node '{self.node}' remembers request id '{request_id}': "
                    + "; ".join(e.message for e in unknown)
                )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        routes = [params.join_route(child, answer.parameters.get(params.ROUTE)) for child, answer in accepted]
        return {"node": self.node, "id": request_id, "reward": reward, "route": ",".join(routes)}

    # ------------------------------------------------------------- metadata
    @property
    def signature_known(self) -> bool:
        return self._inputs is not None and self._outputs is not None

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if self._inputs is None or self._outputs is None:
            raise ModelNotReady(
                f"node '{self.node}' has not yet read its signature from child "
                f"'{self.signature_child()}' (declare inputs and outputs in its config to serve "
                "metadata without it)"
            )
        return (
            [t.model_dump() for t in self._inputs],
            [t.model_dump() for t in self._outputs],
        )

    def triton_config(self) -> dict[str, Any]:
        """A minimal Triton ModelConfig (JSON): name, platform, inputs and outputs.

        A node does not batch: ``max_batch_size`` is 0 and dims are the full shapes.
        """

        def tensors(signature: Signature | None) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "data_type": "TYPE_" + ("STRING" if t.datatype == "BYTES" else t.datatype),
                    "dims": [str(d) for d in t.shape],
                }
                for t in signature or []
            ]

        return {
            "name": self.name,
            "platform": self.platform,
            "backend": "servegraph",
            "max_batch_size": 0,
            "input": tensors(self._inputs),
            "output": tensors(self._outputs),
            "parameters": {
                "servegraph.node": {"string_value": self.node},
                "servegraph.role": {"string_value": self.role},
                "servegraph.children": {"string_value": ",".join(self.children)},
            },
        }

    # ------------------------------------------------------------ readiness
    def is_ready(self) -> bool:
        return self.signature_known and all(self._child_ready.values())

    def child_is_ready(self, child: str) -> bool:
        return self._child_ready[child]

    def _mark(self, child: str, ready: bool) -> None:
        if self._child_ready[child] != ready:
            self._child_ready[child] = ready
            if ready:
                log.info("node '%s': child '%s' is ready", self.node, child)
            else:
                log.warning("node '%s': child '%s' is not ready", self.node, child)

    async def check_children(self) -> None:
        """Ask every child whether it is ready; learn the signature once one can tell it."""
        timeout = min(CHECK_TIMEOUT, max(self.poll_interval, 0.5))
        answers = await asyncio.gather(*(self.clients[c].is_ready(timeout) for c in self.children))
        for child, ready in zip(self.children, answers):
            self._mark(child, ready)
        source = self.signature_child()
        if not self.signature_known and self._child_ready[source]:
            try:
                inputs, outputs = await self.clients[source].signature(timeout)
            except ServegraphError as exc:
                log.warning("node '%s': cannot read the signature of child '%s': %s", self.node, source, exc.message)
                return
            if self._inputs is None:
                self._inputs = inputs
            if self._outputs is None:
                self._outputs = self.derive_outputs(outputs)

    async def _watch_children(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.check_children()
            except Exception:  # the watcher must outlive any one bad round
                log.exception("node '%s': checking children failed", self.node)

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """One readiness round now (bounded by CHECK_TIMEOUT), then one every poll_interval."""
        try:
            await self.check_children()
        except Exception:
            log.exception("node '%s': checking children failed", self.node)
        self._poller = asyncio.get_running_loop().create_task(self._watch_children())
        log.info(
            "node '%s' (%s) serves model '%s' over children %s",
            self.node, self.role, self.name, ", ".join(f"{c.name}={c.grpc}" for c in self.config.children),
        )  # fmt: skip

    async def close(self, timeout: float) -> bool:
        """Let requests in flight finish (up to ``timeout``), then release children and state."""
        drained = True
        if self._inflight:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                drained = False
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
        await self.close_role()
        for client in self.clients.values():
            await client.close()
        return drained

    # ------------------------------------------------------------ statistics
    def extras(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "role": self.role,
            "children": {
                c: {"ready": self._child_ready[c], "success": n.success, "failed": n.failed}
                for c, n in self._counts.items()
            },
            **self.role_extras(),
        }
