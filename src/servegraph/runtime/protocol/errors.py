"""One error taxonomy for the data plane, and the one table of its status codes.

``ERROR_TABLE`` says which HTTP status and which canonical code (the status names gRPC and
Google's API design share) each class answers with; a subclass not in it answers as its
nearest listed base (``status_of``). The transports read that table and turn the name into
their own type (``grpc.StatusCode`` lives in servers/grpc.py, never here), so this module
imports no transport.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """The canonical status an error answers with; the gRPC server maps it by name."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class ServegraphError(Exception):
    """Base of every error a caller may see. ``message`` is sent as-is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServegraphError):
    """The request is malformed or does not fit the model's signature (the caller's fault)."""


class ModelNotFound(ServegraphError):
    """No such model, or no such version of it."""


class ModelNotReady(ServegraphError):
    """The model exists but cannot serve now (loading, failed, draining)."""


class QueueFull(ServegraphError):
    """The batcher's bounded queue is full; ``retry_after`` is a hint in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(ServegraphError):
    """The server is draining after SIGTERM and takes no new work."""


class DeadlineExceeded(ServegraphError):
    """The caller's deadline (or the queue policy's timeout) passed before the model ran."""


class PayloadTooLarge(ServegraphError):
    """The request body is over the configured limit."""


class ModelError(ServegraphError):
    """The model itself failed (raised, or returned something unusable)."""


class Unsupported(ServegraphError):
    """A protocol feature this server does not implement."""


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


class ChildBusy(ChildCallError, QueueFull):
    """A child's queue is full: backpressure, passed back with the child's retry hint. The
    child is up (it answered), so this never marks it down nor changes the node's readiness."""

    def __init__(self, message: str, retry_after: float, child: str = "") -> None:
        ServegraphError.__init__(self, message)
        self.retry_after = retry_after
        self.child = child


class ChildDeadlineExceeded(ChildCallError, DeadlineExceeded):
    """The caller's deadline passed while (or before) a graph node waited on a child."""


class ChildRejected(ChildCallError, InvalidInput):
    """A child refused the request as malformed: the caller's fault, passed on as such."""


class ChildFailed(ChildCallError, ModelError):
    """A child failed (its model raised, or it answered something unusable)."""


class ChildResourceExhausted(ChildCallError, PayloadTooLarge):
    """A child answered RESOURCE_EXHAUSTED (a message over its size limit, say)."""


class ChildUnsupported(ChildCallError, Unsupported):
    """A child does not implement what the request asks (UNIMPLEMENTED)."""


class UnknownRequestId(ModelNotFound):
    """Feedback names a request id the router does not remember (never seen, or forgotten)."""


class PermissionDenied(ServegraphError):
    """An endpoint this server's settings switch off (model control, as Triton's mode none)."""


class ChildPermissionDenied(ChildCallError, PermissionDenied):
    """A child refused the call as not permitted (PERMISSION_DENIED, UNAUTHENTICATED)."""


MODEL_CONTROL_DISABLED = (
    "model control is disabled: servegraph loads what the model repository holds"
    " (see --repository-poll-secs)"
)



ERROR_TABLE: dict[type[ServegraphError], tuple[int, Code]] = {
    ServegraphError: (500, Code.INTERNAL),
    InvalidInput: (400, Code.INVALID_ARGUMENT),
    ModelNotFound: (404, Code.NOT_FOUND),
    ModelNotReady: (503, Code.UNAVAILABLE),
    QueueFull: (503, Code.UNAVAILABLE),
    ShuttingDown: (503, Code.UNAVAILABLE),
    DeadlineExceeded: (504, Code.DEADLINE_EXCEEDED),
    PayloadTooLarge: (413, Code.RESOURCE_EXHAUSTED),
    ModelError: (500, Code.INTERNAL),
    Unsupported: (400, Code.UNIMPLEMENTED),
    PermissionDenied: (403, Code.PERMISSION_DENIED),
    ChildUnavailable: (503, Code.UNAVAILABLE),
    ChildBusy: (503, Code.UNAVAILABLE),
    ChildDeadlineExceeded: (504, Code.DEADLINE_EXCEEDED),
    ChildRejected: (400, Code.INVALID_ARGUMENT),
    ChildFailed: (500, Code.INTERNAL),
    ChildResourceExhausted: (413, Code.RESOURCE_EXHAUSTED),
    ChildUnsupported: (400, Code.UNIMPLEMENTED),
    ChildPermissionDenied: (403, Code.PERMISSION_DENIED),
    UnknownRequestId: (404, Code.NOT_FOUND),
}
"""(HTTP status, canonical code) per error class: the one table both transports answer from."""


def status_of(exc: ServegraphError) -> tuple[int, Code]:
    """The table's row for ``exc``: its own class's, else the nearest listed base class's."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[ServegraphError]
