"""Keep-alive HTTP/1.1 connections from a node to one child, for its inference calls.

Why not grpc.aio, tritonclient or aiohttp's client: a graph hop's budget is 0.5 ms of one
core, and a grpc.aio call costs about that on its own (its server side about 370 µs per
request, aiohttp's about 140). This is the least HTTP/1.1 a v2 call needs, on asyncio's
Protocol API so that a whole answer arriving in one packet is handled in one event-loop
turn: POST with a Content-Length body, an answer framed by Content-Length, chunks or the
connection's end, keep-alive. One request per connection at a time; idle connections are
reused last-in first-out, and one closed by the server while idle is replaced.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, cast

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line and headers accepted from a child."""

MAX_IDLE = 64
"""Idle connections kept per child (more are closed when returned)."""

MAX_CONNECTIONS = 256
"""Connections open to one child at once: a burst of calls waits for one (within its
deadline) rather than opening a socket each."""


class Reply(NamedTuple):
    """A child's answer: status, headers (names lower-case) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class ChannelClosed(ConnectionError):
    """The child closed the connection before a whole answer arrived."""


class ProtocolViolation(Exception):
    """The child's bytes are not an HTTP/1.1 answer this client can read."""


class _Connection(asyncio.Protocol):
    """One TCP connection; ``request`` sends a request and waits for its whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False
        """Whether any byte arrived since the current request was sent."""
        self._buffer = bytearray()
        self._head: tuple[int, dict[str, str], int] | None = None
        self._waiter: asyncio.Future[Reply] | None = None

    # -------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            reply = self._parse(eof=False)
        except Exception as exc:  # whatever the bytes were, the caller gets an answer
            waiter.set_exception(exc if isinstance(exc, ProtocolViolation) else ProtocolViolation(str(exc)))
            self.close()
            return
        if reply is not None:
            waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            reply = self._parse(eof=True)  # an answer framed by the connection's end
        except Exception as exc:
            waiter.set_exception(exc if isinstance(exc, ProtocolViolation) else ProtocolViolation(str(exc)))
            return
        if reply is not None:
            waiter.set_result(reply)
        else:
            waiter.set_exception(ChannelClosed(f"connection closed before a whole answer arrived ({exc or 'EOF'})"))

    # --------------------------------------------------------------- request
    async def request(self, parts: Sequence[bytes | memoryview]) -> Reply:
        assert self.transport is not None
        self.received = False
        self._buffer.clear()
        self._head = None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.writelines(parts)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # no lingering half-read answer on a connection we drop

    # ---------------------------------------------------------------- parsing
    def _parse(self, eof: bool) -> Reply | None:
        """The whole answer once it has arrived, else None."""
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ProtocolViolation(f"answer head over {MAX_HEAD_BYTES} bytes")
                return None
            self._head = _head(bytes(buffer[:end]))
            if self._head[0] < 200:  # 100 Continue and friends: the real answer follows
                del buffer[: end + 4]
                self._head = None
                return self._parse(eof)
        status, headers, start = self._head
        length = headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):  # str.isdigit() takes "²"
                raise ProtocolViolation(f"bad Content-Length {length!r}")
            stop = start + int(length)
            return Reply(status, headers, bytes(buffer[start:stop])) if len(buffer) >= stop else None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = _dechunk(buffer, start)
            return None if body is None else Reply(status, headers, body)
        return Reply(status, headers, bytes(buffer[start:])) if eof else None


def _head(raw: bytes) -> tuple[int, dict[str, str], int]:
    """(status, headers, where the body starts) from an answer's head."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not re.fullmatch(r"[0-9]{3}", parts[1]):
        raise ProtocolViolation(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolViolation(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, len(raw) + 4


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    """A chunked body starting at ``start``, or None while incomplete (trailers ignored)."""
    chunks: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = bytes(buffer[at:line_end]).split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size_text):  # int(x, 16) also takes -1, 0x1, 1_0
            raise ProtocolViolation(f"bad chunk size {size_text!r}")
        size = int(size_text, 16)
        at = line_end + 2
        if size == 0:
            return b"".join(chunks) if buffer.find(b"\r\n\r\n", line_end) >= 0 else None
        if len(buffer) < at + size + 2:
            return None
        if buffer[at + size : at + size + 2] != b"\r\n":
            raise ProtocolViolation("a chunk does not end where its size says")
        chunks.append(bytes(buffer[at : at + size]))
        at += size + 2


class HttpChannel:
    """Keep-alive connections to one child's HTTP endpoint (``host:port``)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"child HTTP address must be host:port, got {address!r}")
        self.host = host.strip("[]")
        self.port = int(port)
        self._host_header = f"Host: {address}\r\n"
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def post(self, path: str, headers: Mapping[str, str], parts: Sequence[bytes | memoryview]) -> Reply:
        """POST ``parts`` (the body, in pieces) to ``path``; the whole answer comes back.

        Raises OSError when the child cannot be reached, ChannelClosed when it hangs up
        mid-answer, ProtocolViolation for an answer that is not HTTP/1.1. A reused idle
        connection that closes before answering anything is retried once, on a fresh
        connection: most often the child had closed it while idle, though a child that died
        mid-request looks the same, so a request may reach a child twice (as with any HTTP
        client's retry of an idempotent call).
        Cancelling (a deadline) closes the connection.
        """
        async with self._slots:
            return await self._post(path, headers, parts)

    async def _post(self, path: str, headers: Mapping[str, str], parts: Sequence[bytes | memoryview]) -> Reply:
        length = sum(len(p) for p in parts)
        head = "".join([
            f"POST {path} HTTP/1.1\r\n{self._host_header}",
            *(f"{name}: {value}\r\n" for name, value in headers.items()),
            f"Content-Length: {length}\r\n\r\n",
        ]).encode("latin-1")
        message = [head, *parts]
        retried = False
        while True:
            connection, reused = await self._connection()
            try:
                reply = await connection.request(message)
            except ChannelClosed:
                connection.close()
                if reused and not connection.received and not retried:
                    # Most likely the child restarted: its other idle connections are stale too,
                    # so the one retry goes over a fresh connection.
                    retried = True
                    self.close()
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if reply.headers.get("connection", "").lower() == "close" or len(self._idle) >= MAX_IDLE:
                connection.close()
            else:
                self._idle.append(connection)
            return reply

    async def _connection(self) -> tuple[_Connection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        return connection, False

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
