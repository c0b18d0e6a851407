"""One child of a graph node, called over v2 gRPC with tritonclient's aio client.

Any v2 server can be a child (servegraph, Triton, MLServer), so the node speaks to it only
through the public protocol. One client (one HTTP/2 channel) per child for the node's
lifetime, so calls reuse the connection. The caller's deadline travels as the gRPC deadline
of every child call, less the time already spent: a child never works on an answer nobody
waits for, and a node never waits past its caller. Failures come back as the child-naming
errors of ``protocol.errors`` (503 down, 504 out of time, 400 rejected, 500 failed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import (
    TRITON_RESERVED_REQUEST_PARAMS,
    TRITON_RESERVED_REQUEST_PARAMS_PREFIX,
    InferenceServerException,
)

from servegraph.runtime.graph.config import ChildEndpoint, TensorSignature
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol.errors import (
    ChildDeadlineExceeded,
    ChildFailed,
    ChildRejected,
    ChildUnavailable,
    ServegraphError,
    UnknownRequestId,
    Unsupported,
)
from servegraph.runtime.protocol.grpc_codec import parameters_to_dict

MAX_MESSAGE_BYTES = 2**31 - 1

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # gRPC's default reconnect backoff grows to 120 s: a child restarted after a crash would
    # stay unreachable for minutes. Children are on the local network; retry within a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
"""Channel arguments (tritonclient's own defaults are replaced wholesale when any are given)."""

DEADLINE_RESERVE = 0.02
"""Share of the remaining time (at most ``DEADLINE_RESERVE_MAX`` s) kept back from a child
call, so that the node's own 504 naming the child reaches the caller before the caller's
deadline fires and hides which child was slow."""
DEADLINE_RESERVE_MAX = 0.010

_NOT_FORWARDED = frozenset(TRITON_RESERVED_REQUEST_PARAMS)


@dataclass(slots=True)
class ChildAnswer:
    """What a child returned: outputs (numpy), their v2 datatypes, response parameters, id."""

    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str = ""


def forwarded_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The caller's request parameters a node passes on to its children.

    Triton's reserved ones (``timeout``, ``priority``...) are not: the deadline travels as the
    gRPC deadline, and tritonclient refuses them. Nor are servegraph's own (each hop sets
    them) or values the protocol cannot carry (lists, objects from REST JSON).
    """
    return {
        key: value
        for key, value in parameters.items()
        if key not in _NOT_FORWARDED
        and not key.startswith(TRITON_RESERVED_REQUEST_PARAMS_PREFIX)
        and not key.startswith(params.PREFIX)
        and isinstance(value, str | bool | int | float)
    }


def forwarded_headers(headers: Mapping[str, str], names: list[str]) -> dict[str, str]:
    """The caller's headers named in ``names`` that a node passes on, as gRPC metadata.

    HTTP headers are case-insensitive and gRPC metadata keys lower-case, so keys go lower-case;
    a value gRPC metadata cannot carry (not printable ASCII) stays behind.
    """
    forwarded: dict[str, str] = {}
    for name in names:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower())
        if isinstance(value, str) and value.isascii() and value.isprintable():  # not -bin bytes
            forwarded[name.lower()] = value
    return forwarded


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (a ``time.monotonic()`` instant), or None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()


class ChildClient:
    """The v2 gRPC client of one child, owned by one node."""

    def __init__(self, endpoint: ChildEndpoint, node: str) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.node = node
        self._client: InferenceServerClient | None = None

    @property
    def where(self) -> str:
        return f"child '{self.name}' of node '{self.node}'"

    def _connected(self) -> InferenceServerClient:
        # Created on first use, inside the running loop: grpc.aio channels bind to it.
        if self._client is None:
            self._client = InferenceServerClient(self.endpoint.grpc, channel_args=CHANNEL_OPTIONS)
        return self._client

    def _timeout(self, deadline: float | None) -> float | None:
        remaining = time_left(deadline)
        if remaining is None:
            return None
        if remaining <= 0:
            raise ChildDeadlineExceeded(
                f"deadline passed before {self.where} could be called", child=self.name
            )
        return remaining - min(remaining * DEADLINE_RESERVE, DEADLINE_RESERVE_MAX)

    async def infer(
        self,
        inputs: dict[str, np.ndarray],
        datatypes: dict[str, str],
        *,
        request_id: str = "",
        parameters: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> ChildAnswer:
        """Run the child's model on ``inputs``; every output comes back."""
        timeout = self._timeout(deadline)
        try:
            tensors = []
            for name, array in inputs.items():
                tensor = grpcclient.InferInput(name, list(array.shape), datatypes[name])
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
        except InferenceServerException as exc:
            raise ChildFailed(
                f"node '{self.node}' cannot send its inputs to child '{self.name}': {exc.message()}",
                child=self.name,
            ) from None
        try:
            return await self._call(tensors, request_id, parameters or {}, timeout, headers)
        except InferenceServerException as exc:
            raise self._error(exc.status() or "", exc.message() or str(exc), timeout) from None

    async def feedback(self, request_id: str, reward: float, deadline: float | None = None) -> ChildAnswer:
        """Pass a reward on to a child that is itself a node (a nested router).

        A child that does not remember the id answers NOT_FOUND and one that takes no
        feedback (a model) UNIMPLEMENTED: those keep their meaning here.
        """
        timeout = self._timeout(deadline)
        try:
            return await self._call([], "", {params.FEEDBACK_ID: request_id, params.REWARD: reward}, timeout)
        except InferenceServerException as exc:
            status = (exc.status() or "").removeprefix("StatusCode.")
            message = exc.message() or str(exc)
            if status == "NOT_FOUND":
                raise UnknownRequestId(f"{self.where}: {message}") from None
            if status == "UNIMPLEMENTED":
                raise Unsupported(f"{self.where}: {message}") from None
            raise self._error(status, message, timeout) from None

    async def _call(
        self,
        tensors: list[grpcclient.InferInput],
        request_id: str,
        parameters: dict[str, Any],
        timeout: float | None,
        headers: dict[str, str] | None = None,
    ) -> ChildAnswer:
        """One ModelInfer; tritonclient's errors pass through, anything else is this child's failure."""
        client = self._connected()
        try:
            result = await client.infer(
                self.endpoint.model,
                tensors,
                model_version=self.endpoint.version,
                request_id=request_id,
                client_timeout=timeout,
                headers=headers or None,
                parameters=parameters or None,
            )
        except InferenceServerException:
            raise
        except Exception as exc:  # a closed channel, a client-side check: never a bare 500
            raise ChildFailed(f"{self.where} could not be called: {type(exc).__name__}: {exc}", child=self.name) from exc
        response = result.get_response()
        outputs: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for tensor in response.outputs:
            array = result.as_numpy(tensor.name)
            if array is None:
                raise ChildFailed(f"{self.where} sent output '{tensor.name}' without data", child=self.name)
            outputs[tensor.name] = array
            datatypes[tensor.name] = tensor.datatype
        return ChildAnswer(outputs, datatypes, parameters_to_dict(response.parameters), response.id)

    def _error(self, status: str, message: str, timeout: float | None) -> ServegraphError:
        """The child's gRPC status as this node's error (R11: a hard dependency's status passes on)."""
        status = status.removeprefix("StatusCode.")
        if status == "DEADLINE_EXCEEDED":
            budget = "" if timeout is None else f" ({timeout * 1000:.0f} ms were left)"
            return ChildDeadlineExceeded(
                f"{self.where} did not answer within the deadline{budget}: {message}", child=self.name
            )
        if status in ("UNAVAILABLE", "NOT_FOUND", "CANCELLED"):
            return ChildUnavailable(f"{self.where} is unavailable: {message}", child=self.name)
        if status == "INVALID_ARGUMENT":
            return ChildRejected(f"{self.where} rejected the request: {message}", child=self.name)
        return ChildFailed(f"{self.where} failed ({status or 'no status'}): {message}", child=self.name)

    async def is_ready(self, timeout: float) -> bool:
        """The child's model readiness; any failure to ask counts as not ready."""
        try:
            return bool(
                await self._connected().is_model_ready(
                    self.endpoint.model, self.endpoint.version, client_timeout=timeout
                )
            )
        except InferenceServerException:
            return False

    async def signature(self, timeout: float) -> tuple[list[TensorSignature], list[TensorSignature]]:
        """The child model's inputs and outputs from its metadata."""
        try:
            meta = await self._connected().get_model_metadata(
                self.endpoint.model, self.endpoint.version, as_json=True, client_timeout=timeout
            )
        except InferenceServerException as exc:
            raise self._error(exc.status() or "", exc.message() or str(exc), timeout) from None

        def tensors(key: str) -> list[TensorSignature]:
            return [
                TensorSignature(
                    name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t.get("shape", [])]
                )
                for t in meta.get(key, [])
            ]

        return tensors("inputs"), tensors("outputs")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
