"""One error taxonomy for the data plane, and the one table mapping it to HTTP and gRPC.

Every transport raises or catches these; nothing else decides a status code.
"""

from __future__ import annotations

import grpc


class ServegraphError(Exception):
    """Base of every error a caller may see. ``message`` is sent as-is."""

    http_status: int = 500
    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServegraphError):
    """The request is malformed or does not fit the model's signature (the caller's fault)."""

    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServegraphError):
    """No such model, or no such version of it."""

    http_status = 404
    grpc_status = grpc.StatusCode.NOT_FOUND


class ModelNotReady(ServegraphError):
    """The model exists but cannot serve now (loading, failed, draining)."""

    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServegraphError):
    """The batcher's bounded queue is full; ``retry_after`` is a hint in seconds."""

    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(ServegraphError):
    """The server is draining after SIGTERM and takes no new work."""

    http_status = 503
    grpc_status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServegraphError):
    """The caller's deadline (or the queue policy's timeout) passed before the model ran."""

    http_status = 504
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED


class PayloadTooLarge(ServegraphError):
    """The request body is over the configured limit."""

    http_status = 413
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelError(ServegraphError):
    """The model itself failed (raised, or returned something unusable)."""

    http_status = 500
    grpc_status = grpc.StatusCode.INTERNAL


class Unsupported(ServegraphError):
    """A protocol feature this server does not implement."""

    http_status = 400
    grpc_status = grpc.StatusCode.UNIMPLEMENTED


class ChildCallError(Exception):
    """Mixin of the errors a graph node raises for one child's call; ``child`` names it.

    Not a ServegraphError itself: each concrete class below also subclasses the error whose
    HTTP/gRPC pair it answers with, so the table holds without new codes.
    """

    def __init__(self, message: str, child: str = "") -> None:
        super().__init__(message)
        self.child = child


class ChildUnavailable(ChildCallError, ModelNotReady):
    """A graph node's child is down, not ready, unknown to its server, or refusing work."""


class ChildDeadlineExceeded(ChildCallError, DeadlineExceeded):
    """The caller's deadline passed while (or before) a graph node waited on a child."""


class ChildRejected(ChildCallError, InvalidInput):
    """A child refused the request as malformed: the caller's fault, passed on as such."""


class ChildFailed(ChildCallError, ModelError):
    """A child failed (its model raised, or it answered something unusable)."""


class UnknownRequestId(ModelNotFound):
    """Feedback names a request id the router does not remember (never seen, or forgotten)."""


ERROR_TABLE: dict[type[ServegraphError], tuple[int, grpc.StatusCode]] = {
    cls: (cls.http_status, cls.grpc_status)
    for cls in (
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        QueueFull,
        ShuttingDown,
        DeadlineExceeded,
        PayloadTooLarge,
        ModelError,
        Unsupported,
        ChildUnavailable,
        ChildDeadlineExceeded,
        ChildRejected,
        ChildFailed,
        UnknownRequestId,
    )
}
"""(HTTP status, gRPC code) for every error class; tests walk this table."""
