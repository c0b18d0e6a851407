"""Keep-alive HTTP/1.1 connections from a node to one child, for its inference calls.

Why not grpc.aio, tritonclient or aiohttp's client: a graph hop's budget is 0.5 ms of one
core, and a grpc.aio call costs about that on its own (its server side about 370 µs per
request, aiohttp's about 140). This is the least HTTP/1.1 a v2 call needs, on asyncio's
Protocol API so that a whole answer arriving in one packet is handled in one event-loop
turn: POST with a Content-Length body, an answer framed by Content-Length, chunks or the
connection's end, keep-alive. One request per connection at a time; idle connections are
reused last-in first-out, and one closed by the server while idle is replaced.

Answers are read by httptools' ``HttpResponseParser`` (llhttp, Node.js's parser, as in
uvicorn; already a dependency for the REST server): each packet is fed to it once, so a
chunked answer in many packets costs time linear in its size, and llhttp, not this module,
decides what a status line, a header, a Content-Length and a chunk are. A connection is
reused only when its last answer ended exactly where its framing says and allows keep-alive:
a byte past the end would be read as the next request's answer. (llhttp skips empty lines
between answers, so a stray CRLF right after an answer is all it lets through.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import NamedTuple, NoReturn, cast

import httptools

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line and headers accepted from a child."""

MAX_IDLE = 64
"""Idle connections kept per child (more are closed when returned)."""

MAX_CONNECTIONS = 256
"""Connections open to one child at once: a burst of calls waits for one (within its
deadline) rather than opening a socket each."""

_PAST_THE_END = "bytes past the end of the answer"


class Reply(NamedTuple):
    """A child's answer: status, headers (names lower-case) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class ChannelClosed(ConnectionError):
    """The child closed the connection before a whole answer arrived."""


class ProtocolViolation(Exception):
    """The child's bytes are not an HTTP/1.1 answer this client can read."""


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp; the reason is in ``_Connection._violation``."""


class _Connection(asyncio.Protocol):
    """One TCP connection; ``request`` sends a request and waits for its whole answer.

    It is also the callback object of its connection's parser: llhttp calls the ``on_*``
    methods from inside ``feed_data``. One parser serves the connection's whole life, as the
    answers are one keep-alive stream; a connection whose parser failed is never reused.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received = False
        """Whether any byte arrived since the current request was sent."""
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Reply] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_bytes = 0
        """Status line and headers of the answer being read, as the callbacks saw them."""
        self._partial_head = 0
        """Bytes of the packets that ended inside a head: llhttp buffers a header until it
        ends, so this bounds a head arriving in many packets before any callback sees it."""
        self._in_head = False
        self._in_body = False
        self._until_eof = False
        """Whether the answer being read has neither Content-Length nor chunks: it ends with
        the connection, which llhttp (no finish() in httptools) is never told."""
        self._keep_alive = False
        self._reply: Reply | None = None
        self._violation: str | None = None

    @property
    def reusable(self) -> bool:
        """Whether another request may go over this connection: open, and its last answer
        allowed keep-alive (not ``Connection: close``, not HTTP/1.0 without keep-alive)."""
        return not self.closed and self._keep_alive

    # -------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nobody asked for these bytes, or they came after a whole answer: kept, they
            # would be read as the next request's answer. (An answer already handed back stands.)
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._violation is None:
                if self._reply is not None:
                    self._violation = _PAST_THE_END
                elif isinstance(exc, httptools.HttpParserUpgrade):
                    self._violation = f"the answer switches protocols (HTTP {self._parser.get_status_code()})"
                else:
                    self._violation = str(exc) or type(exc).__name__
        if self._violation is None and self._in_head:
            self._partial_head += len(data)
            if self._partial_head > MAX_HEAD_BYTES:
                self._violation = f"answer head over {MAX_HEAD_BYTES} bytes"
        if self._violation is not None:
            waiter.set_exception(ProtocolViolation(self._violation))
            self.close()
        elif self._reply is not None:
            waiter.set_result(self._reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._in_body and self._until_eof:  # an answer framed by the connection's end
            waiter.set_result(Reply(self._parser.get_status_code(), self._headers, b"".join(self._body)))
        else:
            waiter.set_exception(ChannelClosed(f"connection closed before a whole answer arrived ({exc or 'EOF'})"))

    # ---------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        if self._reply is not None:
            self._stop(_PAST_THE_END)
        self._headers = {}
        self._body = []
        self._head_bytes = 0
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        self._head_bytes += len(reason) + 15  # "HTTP/1.1 200 " and CRLF

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer, after a chunked body: ignored
        self._head_bytes += len(name) + len(value) + 4
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._partial_head = 0
        if self._head_bytes > MAX_HEAD_BYTES:
            self._stop(f"answer head over {MAX_HEAD_BYTES} bytes")
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._stop(f"an HTTP/{version} answer")
        headers = self._headers
        self._until_eof = (
            "content-length" not in headers
            and headers.get("transfer-encoding", "").rpartition(",")[2].strip().lower() != "chunked"
        )

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        status = self._parser.get_status_code()
        if status < 200:
            return  # 100 Continue and friends: the real answer follows on this connection
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once this returns
        self._reply = Reply(status, self._headers, b"".join(self._body))

    def _stop(self, violation: str) -> NoReturn:
        self._violation = violation
        raise _Stop(violation)  # llhttp stops where it is; feed_data raises a callback error

    # --------------------------------------------------------------- request
    async def request(self, parts: Sequence[bytes | memoryview]) -> Reply:
        assert self.transport is not None
        self.received = False
        self._keep_alive = False
        self._reply = None
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
            if not connection.reusable or len(self._idle) >= MAX_IDLE:
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
