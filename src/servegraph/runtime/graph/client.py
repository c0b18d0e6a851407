"""One child of a graph node, called over the v2 protocol.

Any v2 server can be a child (servegraph, Triton, MLServer), so the node speaks to it only
through the public protocol. Inference goes over HTTP/1.1 with Triton's binary tensor
extension when the child's ``http`` endpoint is known (the control plane always fills it
in; servegraph and Triton serve it): tensors the node did not change are written straight
from the caller's message, and a call costs a fraction of a grpc.aio one (``http_channel``).
Otherwise, and for readiness, metadata and feedback, it goes over gRPC with tritonclient's
aio client. Connections are kept for the node's lifetime, so calls reuse them. The caller's
deadline travels with every child call (the gRPC deadline, or ``X-Request-Timeout-Ms``),
less the time already spent: a child never works on an answer nobody waits for, and a node
never waits past its caller. Failures come back as the child-naming errors of
``protocol.errors``, each child status (an HTTP status read as the gRPC one it stands for)
as the node's matching status (``CHILD_STATUS``): 503 down, 503 busy with the child's retry hint, 504 out of time, 400
rejected, 413, 403, UNIMPLEMENTED, 500 failed.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import orjson
import tritonclient.grpc as grpcclient
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import (
    TRITON_RESERVED_REQUEST_PARAMS,
    TRITON_RESERVED_REQUEST_PARAMS_PREFIX,
    InferenceServerException,
)

from servegraph.runtime.graph.config import ChildEndpoint, TensorSignature
from servegraph.runtime.graph.http_channel import HttpChannel, ProtocolViolation, Reply
from servegraph.runtime.protocol import parameters as params
from servegraph.runtime.protocol import rest_codec
from servegraph.runtime.protocol.errors import (
    ChildBusy,
    ChildDeadlineExceeded,
    ChildFailed,
    ChildPermissionDenied,
    ChildRejected,
    ChildResourceExhausted,
    ChildUnavailable,
    ChildUnsupported,
    InvalidInput,
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
"""Share of the remaining time kept back from a child call (at least
``DEADLINE_RESERVE_MIN`` s, at most half of what is left), so that the node's own 504 naming
the child reaches the caller before the caller's deadline fires and hides which child was
slow. Measured: a grpc.aio server sees a caller's deadline late by about 9 ms at 1-3 s and
about 99 ms at 10 s (about 1 %), so the reserve must grow with the budget, not be capped at a
few milliseconds."""
DEADLINE_RESERVE_MIN = 0.050

RETRY_PUSHBACK = "grpc-retry-pushback-ms"
"""The trailer a busy server's UNAVAILABLE carries (gRPC's retry design, A6)."""

DEFAULT_RETRY_AFTER = 1.0
"""The retry hint passed back when a child says its queue is full without one (Triton)."""

_QUEUE_FULL = re.compile(r"queue\b.*\bis full|queue full|exceeds maximum queue size", re.IGNORECASE)
"""Queue-full answers without a retry trailer: servegraph's message, Triton's."""

_NOT_FORWARDED = frozenset(TRITON_RESERVED_REQUEST_PARAMS)

HTTP_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""A child's HTTP error status as the gRPC status it stands for (``protocol.errors``' table
read backwards), so both transports fail the same way through ``CHILD_STATUS``."""


ChildErrorClass = Callable[..., ServegraphError]

CHILD_STATUS: dict[str, tuple[str, ChildErrorClass]] = {
    "UNAVAILABLE": ("is unavailable", ChildUnavailable),
    "NOT_FOUND": ("is unavailable", ChildUnavailable),
    "CANCELLED": ("is unavailable", ChildUnavailable),
    "ABORTED": ("is unavailable", ChildUnavailable),
    "INVALID_ARGUMENT": ("rejected the request", ChildRejected),
    "OUT_OF_RANGE": ("rejected the request", ChildRejected),
    "FAILED_PRECONDITION": ("rejected the request", ChildRejected),
    "ALREADY_EXISTS": ("rejected the request", ChildRejected),
    "RESOURCE_EXHAUSTED": ("ran out of resources", ChildResourceExhausted),
    "UNIMPLEMENTED": ("does not implement the request", ChildUnsupported),
    "PERMISSION_DENIED": ("refused the request", ChildPermissionDenied),
    "UNAUTHENTICATED": ("refused the request", ChildPermissionDenied),
}
"""A child's gRPC status -> (what the message says, the node's error). UNAVAILABLE with a retry
hint or a queue-full message is ``ChildBusy`` instead; any other status (INTERNAL, UNKNOWN,
DATA_LOSS) is ``ChildFailed``, 500. DEADLINE_EXCEEDED is ``ChildDeadlineExceeded``."""


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


def reserve(remaining: float) -> float:
    """Seconds of ``remaining`` a node keeps back from a child call (``DEADLINE_RESERVE``)."""
    return min(max(remaining * DEADLINE_RESERVE, DEADLINE_RESERVE_MIN), remaining / 2)


MAX_RETRY_HINT = 3600.0
"""The longest retry hint passed on (seconds): a child's hint is data, not a reason to overflow."""


def retry_hint(exc: BaseException) -> float | None:
    """Seconds a busy child asked callers to wait (its ``grpc-retry-pushback-ms`` trailer).

    tritonclient keeps only the status and message, but raises from inside its handler of
    the grpc error, so that error (with its trailers) is the exception's context.
    """
    cause = exc.__context__
    if not isinstance(cause, grpc.aio.AioRpcError):
        return None
    for key, value in cause.trailing_metadata() or ():
        if key == RETRY_PUSHBACK and isinstance(value, str):
            try:
                millis = float(value)
            except ValueError:
                return None
            return min(millis / 1000, MAX_RETRY_HINT) if math.isfinite(millis) and millis >= 0 else None
    return None


def http_retry_hint(headers: Mapping[str, str]) -> float | None:
    """Seconds a busy child asked callers to wait: ``X-Retry-After-Ms`` (servegraph), else
    ``Retry-After`` in seconds."""
    for key, scale in (("x-retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is None:
            continue
        try:
            hint = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(hint) and hint >= 0:
            return min(hint, MAX_RETRY_HINT)
    return None


def is_queue_full(message: str) -> bool:
    """Whether an UNAVAILABLE answer says the child's queue is full (servegraph, Triton)."""
    return _QUEUE_FULL.search(message) is not None


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
        self._http = HttpChannel(endpoint.http) if endpoint.http else None
        # Percent-encoded: a name with a space, "?", "#" or non-latin-1 letters is one path segment.
        version = f"/versions/{quote(endpoint.version, safe='')}" if endpoint.version else ""
        self._infer_path = f"/v2/models/{quote(endpoint.model, safe='')}{version}/infer"

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
        return remaining - reserve(remaining)

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
        if self._http is not None:
            return await self._infer_http(self._http, inputs, datatypes, request_id, parameters, headers, timeout)
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
            raise self._error(exc, timeout) from None

    async def _infer_http(
        self,
        channel: HttpChannel,
        inputs: dict[str, np.ndarray],
        datatypes: dict[str, str],
        request_id: str,
        parameters: dict[str, Any] | None,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> ChildAnswer:
        """One infer over HTTP/1.1 with binary tensors; the deadline travels as
        ``X-Request-Timeout-Ms`` and bounds the wait here too."""
        parts, header_length = rest_codec.encode_request(inputs, datatypes, request_id, parameters)
        sent = {rest_codec.HEADER_LENGTH: str(header_length), "Content-Type": "application/octet-stream"}
        if headers:
            sent.update(headers)
        try:
            if timeout is None:
                reply = await channel.post(self._infer_path, sent, parts)
            else:
                sent[rest_codec.TIMEOUT_HEADER] = f"{timeout * 1000:.3f}"
                async with asyncio.timeout(timeout):
                    reply = await channel.post(self._infer_path, sent, parts)
        except TimeoutError:
            raise self._status_error("DEADLINE_EXCEEDED", "no answer", None, timeout) from None
        except OSError as exc:  # refused, reset, closed mid-answer: the child is not there
            raise ChildUnavailable(f"{self.where} is unavailable: {exc or type(exc).__name__}", child=self.name) from None
        except ProtocolViolation as exc:
            raise ChildFailed(f"{self.where} sent an answer that is not HTTP/1.1: {exc}", child=self.name) from None
        if reply.status != 200:
            raise self._http_error(reply, timeout)
        length = reply.headers.get(rest_codec.HEADER_LENGTH.lower())
        try:
            outputs, types, answer_parameters, answer_id = rest_codec.decode_response(
                reply.body, int(length) if length is not None and length.isdigit() else None, self.where
            )
        except InvalidInput as exc:
            raise ChildFailed(exc.message, child=self.name) from None
        return ChildAnswer(outputs, types, answer_parameters, answer_id)

    def _http_error(self, reply: Reply, timeout: float | None) -> ServegraphError:
        """A child's HTTP error answer (``{"error": message}``) as this node's matching error."""
        try:
            message = str(orjson.loads(reply.body)["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = reply.body[:200].decode("utf-8", errors="replace") or f"HTTP {reply.status}"
        hint = http_retry_hint(reply.headers)
        if reply.status == 429:  # too many requests: busy, never down
            return self._status_error("UNAVAILABLE", message, DEFAULT_RETRY_AFTER if hint is None else hint, timeout)
        return self._status_error(HTTP_STATUS.get(reply.status, f"HTTP {reply.status}"), message, hint, timeout)

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
            raise self._error(exc, timeout) from None

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

    def _error(self, exc: InferenceServerException, timeout: float | None) -> ServegraphError:
        """The child's gRPC status as this node's matching error."""
        status = (exc.status() or "").removeprefix("StatusCode.")
        return self._status_error(status, exc.message() or str(exc), retry_hint(exc), timeout)

    def _status_error(self, status: str, message: str, hint: float | None, timeout: float | None) -> ServegraphError:
        """A child's status (a gRPC status name) as this node's matching error, naming the
        child (R11: a hard dependency's status passes on)."""
        if status == "DEADLINE_EXCEEDED":
            budget = "" if timeout is None else f" ({timeout * 1000:.0f} ms were left)"
            return ChildDeadlineExceeded(
                f"{self.where} did not answer within the deadline{budget}: {message}", child=self.name
            )
        if status == "UNAVAILABLE":
            if hint is not None or is_queue_full(message):
                # Backpressure, not death: the child answered, so it is up.
                return ChildBusy(
                    f"{self.where} is busy: {message}",
                    retry_after=DEFAULT_RETRY_AFTER if hint is None else hint,
                    child=self.name,
                )
        make = CHILD_STATUS.get(status)
        if make is None:
            return ChildFailed(f"{self.where} failed ({status or 'no status'}): {message}", child=self.name)
        what, cls = make
        return cls(f"{self.where} {what}: {message}", child=self.name)

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
            raise self._error(exc, timeout) from None

        def tensors(key: str) -> list[TensorSignature]:
            return [
                TensorSignature(
                    name=t["name"], datatype=t["datatype"], shape=[int(d) for d in t.get("shape", [])]
                )
                for t in meta.get(key, [])
            ]

        return tensors("inputs"), tensors("outputs")

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
