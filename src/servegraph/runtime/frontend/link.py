"""The descriptors between a worker and the model process, over one unix socket pair.

Each message is a length-prefixed pickle of a small tuple; tensors lie in the worker's
``SlotArena`` and the message says where. Both ends are our own processes from one
executable, so pickle is safe here (nothing else can reach the socket pair).

Worker -> model process: ``(HELLO, pid)``, ``(INFER, rid, slot, request, inputs)``,
``(CANCEL, rid)``. Model process -> worker: ``(ANSWER, rid, response, outputs)``,
``(FAILED, rid, error)``, ``(CANCELLED, rid)``.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

from servegraph.runtime.protocol import errors

HELLO, INFER, CANCEL, ANSWER, FAILED, CANCELLED = range(6)
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


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None when the other end has gone."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message


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
