"""The v2 REST transport on uvicorn's httptools protocol: a raw ASGI app over ``rest_api``.

Measured on one core with the same client, uvicorn + httptools answers a bare request for
about half the CPU aiohttp takes (bench/transport_ceiling.py), and no framework sits between
its protocol and the endpoints. It runs inside the server's own event loop: no
``uvicorn.run``, no signal handlers, no lifespan; ``UvicornListener`` opens the socket and
drains as the aiohttp listener does.

Where uvicorn differs from aiohttp, this module makes it answer alike: what the parser
refuses (and lines past aiohttp's 8190-byte limits) is ``{"error": str}`` instead of a text
page; gzip, deflate and br bodies are decoded, under the same limit; a reply sent before the
body was read closes the connection rather than wait out a body that may never come.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol.errors import ServegraphError, ShuttingDown
from servegraph.runtime.servers import rest_api
from servegraph.runtime.servers.rest_api import Reply

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_LINE = 8190
"""Longest URL or header line, as aiohttp's parser allows (llhttp alone has no limit)."""

MAX_HEAD_BYTES = 1 << 20
"""Longest request head (request line and headers) buffered before it ends: httptools keeps
a header that never ends in memory without a bound. Counted per read, so a legitimate head
is refused only past this minus one read (uvloop reads up to 256 KiB at a time)."""

KEEP_ALIVE_SECS = 75
"""Idle keep-alive connections close after this long (aiohttp's default; uvicorn's is 5 s,
which races clients that pool connections)."""

SHUTDOWN_SECS = 2.0
"""How long ``close()`` lets requests in flight finish (aiohttp's runner: shutdown_timeout)."""


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded as aiohttp decodes a Content-Encoding: gzip, deflate (zlib-wrapped or
    raw), br; other encodings pass as they are. Decoded bytes count against ``limit`` too."""
    if encoding == "br":
        try:
            import brotli
        except ImportError:  # optional, as it is for aiohttp
            raise rest_api.unreadable(encoding, "no brotli decoder is installed (pip install Brotli)") from None
        decoder = brotli.Decompressor()
        try:
            # Never more than limit + 1 bytes out: a few KB of brotli can expand to gigabytes.
            data: bytes = decoder.process(body, output_buffer_limit=limit + 1)
        except brotli.error as exc:
            raise rest_api.unreadable(encoding, exc) from None
        if len(data) > limit:
            raise rest_api.too_large(limit)
        if not decoder.is_finished():
            raise rest_api.unreadable(encoding, "the compressed stream is incomplete")
        return data
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS if body[:1] and body[0] & 0xF == 8 else -zlib.MAX_WBITS
    else:
        return body
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise rest_api.unreadable(encoding, exc) from None
    if len(data) > limit:
        raise rest_api.too_large(limit)
    if not decompressor.eof:
        raise rest_api.unreadable(encoding, "the compressed stream is incomplete")
    return data


class _Call:
    """One ASGI HTTP request as ``rest_api.RestCall``."""

    __slots__ = ("_receive", "_limit", "params", "headers", "unread")

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self.params: Mapping[str, str] = {}
        # Lower-case keys (as uvicorn gives them, and as gRPC metadata has them); of a repeated
        # header the first counts, as aiohttp's ``headers.get`` reads it.
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        self.headers: Mapping[str, str] = headers
        self.unread = self.headers.get("content-length", "0") != "0" or "transfer-encoding" in self.headers
        """Whether a body may still be on its way: then the reply closes the connection
        (uvicorn would read and drop it, however long it claims to be)."""

    async def body(self) -> bytes:
        limit = self._limit
        length = self.headers.get("content-length")
        if length is not None and int(length) > limit:  # llhttp accepted it: ASCII digits
            raise rest_api.too_large(limit, int(length))
        message = await self._receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise rest_api.unreadable(None, "the client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise rest_api.too_large(limit)
                chunks.append(chunk)
            body = b"".join(chunks)
        elif len(body) > limit:
            raise rest_api.too_large(limit)
        self.unread = False
        encoding = self.headers.get("content-encoding")
        if encoding is not None:
            body = _decompress(body, encoding.strip().lower(), limit)
        return body


Forward = Callable[[str, str, Mapping[str, str], bytes], Awaitable[Reply]]
"""Answers a request elsewhere: (method, raw path with query, headers, decoded body) -> reply."""


class RestApp:
    """The ASGI application: route, call the endpoint, write its reply; every error as
    ``{"error": str}``, a bug logged and answered 500.

    With ``forward`` (a front-end worker's) only inference is served here: every other
    request, unknown routes included, is answered by ``forward`` (the model process), its body
    read and decoded here first as the model process's own app would read it.
    """

    def __init__(self, dataplane: DataPlane, forward: Forward | None = None) -> None:
        self.api = rest_api.RestApi(dataplane)
        self.router = rest_api.Router(self.api.routes())
        self.forward = forward
        self._infer = self.api.infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        method: str = scope["method"]
        call = _Call(scope, receive, self.api.limit)
        try:
            reply = await self._answer(method, scope, call)
        except ServegraphError as exc:
            reply = rest_api.error_reply(exc)
        except rest_api.RouteMiss as miss:
            reply = miss.reply(method, scope["path"])
        except asyncio.CancelledError:
            # Only close() cancels (past its grace): a JSON 503, not uvicorn's logged text 500.
            reply = rest_api.error_reply(ShuttingDown("the server shut down before the request finished"))
        except Exception as exc:
            log.exception("unexpected error in %s %s", method, scope["path"])
            reply = rest_api.error_reply(ServegraphError(f"internal server error: {type(exc).__name__}: {exc}"))
        headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.content_type:
            headers.append((b"content-type", reply.content_type.encode()))
        if reply.headers:
            headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        if call.unread:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _answer(self, method: str, scope: Scope, call: _Call) -> Reply:
        raw_path: str = scope["raw_path"].decode("latin-1")
        if self.forward is not None and not self._is_infer(method, raw_path):
            query = scope["query_string"].decode("latin-1")
            target = f"{raw_path}?{query}" if query else raw_path
            return await self.forward(method, target, call.headers, await call.body())
        endpoint, call.params = self.router.resolve(method, raw_path)
        return await endpoint(call)

    def _is_infer(self, method: str, raw_path: str) -> bool:
        try:
            endpoint, _ = self.router.resolve(method, raw_path)
        except rest_api.RouteMiss:
            return False
        return endpoint == self._infer


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools connection, answering what its parser refuses as ``{"error": str}``
    (uvicorn writes a text page), refusing URL and header lines past ``MAX_LINE`` and a head
    still open past ``MAX_HEAD_BYTES``."""

    _head_open = False
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_open and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(f"the request's head is longer than {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_LINE:
            raise ValueError(f"the URL is longer than {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            raise ValueError(f"a header line is longer than {MAX_LINE} bytes")
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        # Called while the parser's error is being handled: it says what was wrong.
        error = sys.exc_info()[1]
        cause = getattr(error, "__context__", None) if error is not None else None
        self._refuse(str(cause if isinstance(cause, ValueError) else error or msg) or msg)

    def _refuse(self, detail: str) -> None:
        """Answer 400 ``{"error": detail}`` and close the connection."""
        reply = rest_api.http_error_reply(400, detail)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (reply.content_type.encode(), len(reply.body), reply.body)
        )
        self.transport.close()


class UvicornListener:
    """``RestApp`` on one TCP port, for ``rest_listeners.RestListener``."""

    def __init__(self, server: asyncio.AbstractServer, state: ServerState) -> None:
        self._server = server
        self._state = state
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])

    @classmethod
    async def serve(
        cls, dataplane: DataPlane, host: str, port: int, reuse_port: bool = False, forward: Forward | None = None
    ) -> UvicornListener:
        """Listen on ``host:port``; ``reuse_port`` and ``forward`` for a front-end worker."""
        config = uvicorn.Config(
            RestApp(dataplane, forward),
            host=host,
            port=port,
            http=_Protocol,
            ws="none",
            lifespan="off",
            log_config=None,  # leave the process's logging alone
            access_log=False,
            proxy_headers=False,  # no X-Forwarded-* rewriting on the hot path
            server_header=False,
            date_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECS,
        )
        config.load()
        state = ServerState()
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            return _Protocol(config=config, server_state=state, app_state={}, _loop=loop)

        server = await loop.create_server(connection, host, port, backlog=1024, reuse_port=reuse_port or None)
        return cls(server, state)

    async def stop_accepting(self) -> None:
        """No new connections; open ones are still served (the data plane answers 503 while draining)."""
        self._server.close()

    async def close(self) -> None:
        """Let requests in flight finish (up to ``SHUTDOWN_SECS``), then close every connection."""
        self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their answer
        tasks = set(self._state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_SECS)
            for task in pending:
                task.cancel()
            if pending:  # let the cancelled ones write their JSON 503 before the sockets close
                await asyncio.wait(pending, timeout=0.5)
        for connection in list(self._state.connections):
            connection.transport.close()
        await self._server.wait_closed()
