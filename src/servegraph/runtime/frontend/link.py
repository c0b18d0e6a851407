"""The descriptors between a worker and the model process, over one unix socket pair.

Each message is a length-prefixed pickle of a small tuple; tensors lie in the worker's
``SlotArena`` and the message says where. Both ends are our own processes from one
executable, so pickle is safe here (nothing else can reach the socket pair). Requests and
answers travel as tuples of their fields (``request_fields`` / ``rebuild_request``): a
slotted dataclass pickles through ``copyreg`` at about 10 µs each way, a tuple in about 1.

Worker -> model process: ``(HELLO, pid)``, ``(INFER, rid, slot, request fields, inputs,
counts, again)``, ``(CANCEL, rid)``. ``counts`` is None for one caller's request, or each
member's rows for alike requests sent as one (``groups``); ``again`` marks a member of a group
that came back, sent on its own (counted already). Model process -> worker: ``(ANSWER, rid,
response fields, outputs, group rows)``, ``(FAILED, rid, error)``, ``(CANCELLED, rid)``,
``(REGROUP, rid, group rows)``: a group the model process did not run (send its members one
by one). ``group rows`` tells a group's sender what the model takes (``Servable.group_rows``);
None in the answer to a single request.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

from servegraph.runtime.protocol import errors
from servegraph.runtime.protocol.types import InferRequest, InferResponse, RequestedOutput

HELLO, INFER, CANCEL, ANSWER, FAILED, CANCELLED, REGROUP = range(7)
_LENGTH = struct.Struct("!I")


class Sender:
    """Writes what one event-loop turn sends in one go: one system call, and one wake-up of
    the other side, for all the answers of a batch or all the requests of a busy turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._queued: list[bytes] = []

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue one message (callers await ``drain()`` to bound the socket's buffer)."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if not self._queued:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queued.append(_LENGTH.pack(len(payload)) + payload)

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(queued))

    async def drain(self) -> None:
        await self.writer.drain()


class Receiver:
    """Reads messages in bulk: every message a read brought, for one wake-up (a busy sender
    writes a loop turn's messages at once), instead of two awaits per message."""

    def __init__(self, reader: asyncio.StreamReader, chunk: int = 1 << 18) -> None:
        self.reader = reader
        self.chunk = chunk
        self._buffer = bytearray()
        self._unread: list[tuple[Any, ...]] = []

    def unread(self, messages: list[tuple[Any, ...]]) -> None:
        """Give messages back: the next ``receive`` returns them first."""
        self._unread = messages + self._unread

    async def receive(self) -> list[tuple[Any, ...]] | None:
        """The messages that have arrived (at least one), or None when the other end has gone."""
        if self._unread:
            unread, self._unread = self._unread, []
            return unread
        buffer = self._buffer
        messages: list[tuple[Any, ...]] = []
        while not messages:
            try:
                data = await self.reader.read(self.chunk)
            except ConnectionError:
                return None
            if not data:
                return None
            buffer += data
            start, size = 0, len(buffer)
            with memoryview(buffer) as view:  # released before the buffer shrinks
                while size - start >= _LENGTH.size:
                    (length,) = _LENGTH.unpack_from(view, start)
                    end = start + _LENGTH.size + length
                    if end > size:
                        break
                    messages.append(pickle.loads(view[start + _LENGTH.size : end]))
                    start = end
            del buffer[:start]
        return messages


def request_fields(request: InferRequest, headers: dict[str, str]) -> tuple[Any, ...]:
    """A request without its tensors (and with ``headers`` for its own), as a tuple of plain
    values: cheap to pickle."""
    outputs = None if request.outputs is None else [(o.name, o.binary, o.parameters) for o in request.outputs]
    return (
        request.model_name, request.model_version, request.datatypes, request.id, outputs, request.parameters,
        request.input_parameters, request.deadline, request.binary_output_default, headers,
    )  # fmt: skip


def rebuild_request(fields: tuple[Any, ...], inputs: dict[str, Any], requests: int = 1) -> InferRequest:
    name, version, datatypes, rid, outputs, parameters, input_parameters, deadline, binary, headers = fields
    return InferRequest(
        name, version, inputs, datatypes, rid,
        None if outputs is None else [RequestedOutput(*o) for o in outputs],
        parameters, input_parameters, deadline, binary, headers, requests,
    )  # fmt: skip


def response_fields(response: InferResponse) -> tuple[Any, ...]:
    """An answer without its tensors, as a tuple of plain values."""
    return response.model_name, response.model_version, response.datatypes, response.id, response.parameters


def rebuild_response(fields: tuple[Any, ...], outputs: dict[str, Any], rid: str | None = None) -> InferResponse:
    """The answer; ``rid``: a group member's own request id instead of the group's."""
    name, version, datatypes, group_rid, parameters = fields
    if rid is None:
        return InferResponse(name, version, outputs, datatypes, group_rid, parameters)
    return InferResponse(name, version, outputs, datatypes, rid, dict(parameters))


ErrorDescriptor = tuple[list[str], str, float]


def describe_error(exc: errors.ServegraphError) -> ErrorDescriptor:
    """An error as class names (most specific first), message and retry hint."""
    return [cls.__name__ for cls in type(exc).__mro__], exc.message, getattr(exc, "retry_after", 0.0)


def rebuild_error(descriptor: ErrorDescriptor) -> errors.ServegraphError:
    """The nearest class of ``protocol.errors`` to the original, so the transports answer the
    same status and message as the model process would have in one process."""
    names, message, retry_after = descriptor
    for name in names:
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, errors.ServegraphError):
            if issubclass(cls, errors.QueueFull):
                return errors.QueueFull(message, retry_after)
            return cls(message)
    return errors.ServegraphError(message)
