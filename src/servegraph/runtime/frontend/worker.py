"""A front-end worker process: the server's HTTP and gRPC ports, shared with its siblings.

It runs the same transports as a single-process server (REST on uvicorn or aiohttp as
``--http-server`` says, gRPC on ``servers.grpc_h2`` or grpc.aio as ``--grpc-server`` says)
over a ``ForwardingDataPlane``: an inference request is decoded here, its tensors written
into shared memory and its descriptor sent to the model process; the answer comes back the
same way and is encoded here. Every other route and RPC (health, metadata, config,
statistics, repository, feedback) is proxied unchanged to the model process's private
listeners, so what a caller reads is the model process's truth, status codes included.

The worker dies with the model process (``PR_SET_PDEATHSIG``, and when its link closes);
the model process restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import grpc
import yarl
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.frontend import groups, link
from servegraph.runtime.frontend.arena import SlotArena
from servegraph.runtime.frontend.config import WorkerConfig
from servegraph.runtime.process import exit_now
from servegraph.runtime.protocol.errors import ModelError, QueueFull, ShuttingDown
from servegraph.runtime.protocol.types import InferRequest, InferResponse
from servegraph.runtime.servers import grpc as grpc_server
from servegraph.runtime.servers import grpc_h2, rest, rest_uvicorn
from servegraph.runtime.servers.rest_api import Reply
from servegraph.runtime.servers.rest_listeners import RestListener
from servegraph.runtime.servers.rest_uvicorn import UvicornListener

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
INFER_RPCS = frozenset(f"/{_SERVICE.full_name}/{name}" for name in ("ModelInfer", "ModelStreamInfer"))
_HOP_BY_HOP = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive"))
_NOT_FORWARDED = _HOP_BY_HOP | {"content-encoding"}  # the body is sent decoded
_NOT_RELAYED = _HOP_BY_HOP | {"date", "server", "content-encoding"}


GROUP_ROWS_UNKNOWN = 4
"""Rows a group may carry while the model process has not yet said what the model takes."""
GROUP_SHARE = 2
"""A group carries at most half the rows the model takes, so that the batcher can still pack
groups from several workers into full batches. Measured with one worker at c=64 (bench MLP,
max batch 32): a half took the model process's loop from 45 to 37.5 µs per request against a
quarter, with batches as full (28.8 rows against 28.2); the whole batch gained nothing more."""
GROUP_ROWS_TTL_S = 10.0
"""How long the model process's word on a model's group rows holds without being renewed
(each group's answer renews it; a hot swap may change it)."""
GROUP_ROWS_KEPT = 1024
"""Models whose group rows a worker remembers at most (names come from callers)."""

_Member = tuple[InferRequest, "asyncio.Future[InferResponse]", int]


class ModelLink:
    """The worker's end of the link: sends requests, matches answers, bounds what is in flight.

    Alike requests of one event-loop turn travel as one (``groups``): while others are in
    flight, the first of a kind leads a group, waits one loop turn for others to join, then
    sends them all at once.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        arena: SlotArena,
        max_inflight: int,
        forward_headers: bool,
    ) -> None:
        self.receiver = link.Receiver(reader)
        self.sender = link.Sender(writer)
        self.arena = arena
        self.max_inflight = max_inflight
        self.forward_headers = forward_headers
        self.closed = False
        self._pending: dict[int, tuple[asyncio.Future[tuple[Any, ...]], int | None]] = {}
        self._requests = 0
        self.idle = asyncio.Event()
        """Set while no request is in flight to the model process (a drain waits on it)."""
        self.idle.set()
        self._next_id = 0
        self._open: dict[groups.GroupKey, _Group] = {}
        self._group_rows: dict[tuple[str, str], tuple[int, float]] = {}
        """(model, version) -> (rows the model takes in a group, until when that holds)."""
        self._answer_row_bytes: dict[tuple[str, str], int] = {}
        """(model, version) -> bytes per row of its latest answer."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.closed:
            raise ShuttingDown("server is shutting down and accepts no new requests")
        if self._requests >= self.max_inflight:
            raise QueueFull(f"front-end worker queue full: {self.max_inflight} requests in flight", 0.1)
        self._requests += 1
        self.idle.clear()
        try:
            # A request with none other in flight here goes at once: a lone caller's would
            # wait a loop turn for company that does not come.
            keyed = None if self.forward_headers or self._requests == 1 else groups.group_key(request)
            if keyed is None:
                return await self._alone(request)
            return await self._grouped(request, *keyed)
        finally:
            self._requests -= 1
            if not self._requests:
                self.idle.set()

    async def _grouped(self, request: InferRequest, key: groups.GroupKey, rows: int) -> InferResponse:
        loop = asyncio.get_running_loop()
        size = sum(array.nbytes for array in request.inputs.values())
        group = self._open.get(key)
        if group is not None and group.rows + rows <= group.limit and group.bytes + size <= self.arena.slot_bytes:
            future: asyncio.Future[InferResponse] = loop.create_future()
            group.members.append((request, future, rows))
            group.rows += rows
            group.bytes += size
            return await future
        limit = self._group_limit(request)
        if rows >= limit or 2 * size > self.arena.slot_bytes:
            # No room for a second member: in rows, or in a shared-memory slot (a group over
            # a slot would cross the socket pickled, which costs more than it saves).
            return await self._alone(request)
        group = self._open[key] = _Group(limit, rows, size)
        try:
            await asyncio.sleep(0)  # the requests this loop turn started join now
        except asyncio.CancelledError:
            self._close(key, group)
            self._launch(group.members)  # the others still go
            raise
        self._close(key, group)
        if not group.members:
            return await self._alone(request)
        future = loop.create_future()
        self._launch([(request, future, rows), *group.members])
        return await future

    def _close(self, key: groups.GroupKey, group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]

    def _launch(self, members: list[_Member]) -> None:
        if not members:
            return
        run = self._send_group(members) if len(members) > 1 else self._relay(members[0])
        task = asyncio.get_running_loop().create_task(run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _group_limit(self, request: InferRequest) -> int:
        """Rows a group may carry: a share of what the model takes, and no more than an
        answer's slot holds (a group's answer over one would cross the socket pickled)."""
        key = (request.model_name, request.model_version)
        known = self._group_rows.get(key)
        limit = GROUP_ROWS_UNKNOWN if known is None or known[1] < time.monotonic() else known[0] // GROUP_SHARE
        answer_row_bytes = self._answer_row_bytes.get(key)
        return min(limit, self.arena.slot_bytes // answer_row_bytes) if answer_row_bytes else limit

    def _learn(self, request: InferRequest, rows: int) -> None:
        if len(self._group_rows) >= GROUP_ROWS_KEPT:
            self._group_rows.clear()
        self._group_rows[(request.model_name, request.model_version)] = (rows, time.monotonic() + GROUP_ROWS_TTL_S)

    def _measure(self, request: InferRequest, outputs: dict[str, Any], rows: int) -> None:
        """Remember how large the model's answers are per row (only worth it while grouping)."""
        if len(self._answer_row_bytes) >= GROUP_ROWS_KEPT:
            self._answer_row_bytes.clear()
        size = sum(getattr(array, "nbytes", 0) for array in outputs.values())
        self._answer_row_bytes[(request.model_name, request.model_version)] = -(-size // max(rows, 1))

    async def _send_group(self, members: list[_Member]) -> None:
        """Send the members as one request and give each its rows of the answer; when the
        model process does not run the group, send them one by one."""
        requests = [request for request, _, _ in members]
        counts = tuple(rows for _, _, rows in members)
        first = requests[0]
        try:
            message, outputs = await self._exchange(link.request_fields(first, {}), groups.merge(requests), counts, False)
            if message[0] == link.ANSWER:
                self._learn(first, message[4])
                self._measure(first, outputs, sum(counts))
                try:
                    shares = groups.split(outputs, counts)
                except ValueError as exc:
                    raise ModelError(f"model '{first.model_name}': {exc}") from None
                for (request, future, _), share in zip(members, shares):
                    if not future.done():
                        future.set_result(link.rebuild_response(message[2], share, request.id))
                return
            if message[0] != link.REGROUP:
                raise link.rebuild_error(message[2])
            self._learn(first, message[2])
            await asyncio.gather(*(self._relay(member, again=True) for member in members))
        except Exception as exc:  # the link's own verdict (shutting down, full): every member's
            for _, future, _ in members:
                if not future.done():
                    future.set_exception(exc)
        except asyncio.CancelledError:  # nobody is left to answer them
            for _, future, _ in members:
                future.cancel()
            raise

    async def _relay(self, member: _Member, again: bool = False) -> None:
        """One member sent on its own (``again``: after its group came back); its caller gets
        the answer or the error."""
        request, future, _ = member
        if future.done():  # its caller has gone
            return
        try:
            response = await self._alone(request, again)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(response)

    async def _alone(self, request: InferRequest, again: bool = False) -> InferResponse:
        headers = {k.lower(): v for k, v in request.headers.items()} if self.forward_headers else {}
        message, outputs = await self._exchange(link.request_fields(request, headers), request.inputs, None, again)
        if message[0] == link.ANSWER:
            if self._requests > 1 and not self.forward_headers:  # others in flight: groups may form
                first = next(iter(request.inputs.values()), None)
                self._measure(request, outputs, first.shape[0] if first is not None and first.ndim else 1)
            return link.rebuild_response(message[2], outputs)
        raise link.rebuild_error(message[2])

    async def _exchange(
        self, fields: tuple[Any, ...], arrays: dict[str, Any], counts: tuple[int, ...] | None, again: bool
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Send one request, wait for its answer: the message, and the answer's arrays."""
        if self.closed:
            raise ShuttingDown("server is shutting down and accepts no new requests")
        rid = self._next_id
        self._next_id += 1
        slot = self.arena.acquire()
        try:
            inputs = self.arena.put(slot, False, arrays)
        except BaseException:
            if slot is not None:
                self.arena.release(slot)
            raise
        answer: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (answer, slot)
        self.sender.send((link.INFER, rid, slot, fields, inputs, counts, again))
        try:
            await self.sender.drain()
            message = await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled():  # answered, but nobody will read it
                if slot is not None:
                    self.arena.release(slot)
            elif not self.closed:
                answer.cancel()  # the slot is released when the model process confirms
                self.sender.send((link.CANCEL, rid))
            raise
        if message[0] == link.ANSWER:
            return message, self.arena.take(slot, message[3])
        if slot is not None:
            self.arena.release(slot)
        return message, {}

    async def run(self) -> None:
        """Deliver answers until the model process goes; then fail what still waits."""
        while (messages := await self.receiver.receive()) is not None:
            for message in messages:
                entry = self._pending.pop(message[1], None)
                if entry is None:
                    continue
                answer, slot = entry
                if answer.done():  # cancelled by its caller: the slot is free again now
                    if slot is not None:
                        self.arena.release(slot)
                else:
                    answer.set_result(message)
        self.closed = True
        gone = (link.FAILED, -1, link.describe_error(ShuttingDown("the model process has gone")))
        for answer, _ in self._pending.values():
            if not answer.done():
                answer.set_result(gone)
        self._pending.clear()


class _Group:
    """Alike requests gathering in one loop turn; the leader is not among ``members``."""

    __slots__ = ("limit", "rows", "bytes", "members")

    def __init__(self, limit: int, rows: int, size: int) -> None:
        self.limit = limit
        self.rows = rows
        self.bytes = size
        self.members: list[_Member] = []


class ForwardingDataPlane(DataPlane):
    """The worker's data plane: ``infer`` goes to the model process. The transports call
    nothing else on it: every other route is proxied before it gets here, so it holds no
    repository (``DataPlane.__init__`` is not called on purpose)."""

    def __init__(self, model: ModelLink, settings: ServerSettings) -> None:
        self.model = model
        self.settings = settings
        self.inflight = None
        self.started = True
        self.draining = False

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.model.infer(request)


def http_proxy(forward: rest_uvicorn.Forward, limit: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware (``--http-server aiohttp``): every route but inference is ``forward``'s."""

    @web.middleware
    async def proxy(request: web.Request, handler: rest.Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if request.method == "POST" and resource is not None and resource.canonical.endswith("/infer"):
            return await handler(request)
        # Read (and decode) as the model process's own app would: the same 400 and 413 answers.
        body = await rest.read_body(request, limit)
        reply = await forward(request.method, request.raw_path, request.headers, body)
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    return proxy


def rest_forward(session: aiohttp.ClientSession) -> rest_uvicorn.Forward:
    """Every REST request but inference, answered by the model process's own app (either
    REST server: uvicorn's ``RestApp(forward=...)``, aiohttp's ``http_proxy``)."""

    async def forward(method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        sent = {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}
        url = yarl.URL(f"http://model{target}", encoded=True)  # as the caller sent it
        try:
            async with session.request(method, url, headers=sent, data=body) as answer:
                payload = await answer.read()
                relayed = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_RELAYED}
                return Reply(answer.status, payload, "", relayed)
        except aiohttp.ClientError as exc:
            raise ShuttingDown(f"the model process does not answer: {exc}") from None

    return forward


def _forward(channel: grpc.aio.Channel, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    """An RPC answered by the model process's own gRPC server: raw bytes in, raw bytes out,
    its status, message and trailing metadata relayed as they are."""
    call = channel.unary_unary(method)  # no (de)serializers: raw bytes both ways

    async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            answer: bytes = await call(raw, timeout=context.time_remaining())
            return answer
        except grpc.aio.AioRpcError as exc:
            trailing = exc.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            await context.abort(exc.code(), exc.details() or "")
            raise AssertionError("unreachable") from None  # context.abort raises

    return forward


def _proxied() -> list[str]:
    """Every unary RPC of the service but inference, as ``/package.Service/Method``."""
    return [
        f"/{_SERVICE.full_name}/{method.name}"
        for method in _SERVICE.methods
        if not method.client_streaming and not method.server_streaming and f"/{_SERVICE.full_name}/{method.name}" not in INFER_RPCS
    ]


def forwarded_methods(channel: grpc.aio.Channel) -> dict[str, grpc_server.Method]:
    """The proxied RPCs as methods of our own HTTP/2 gRPC server (``--grpc-server http2``)."""
    return {
        path.rpartition("/")[2]: grpc_server.Method(False, _forward(channel, path), bytes)
        for path in _proxied()
    }


class RpcProxy(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc's aio stubs are partial
    """Every RPC but inference is answered by the model process (``--grpc-server grpcio``)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._handlers = {path: grpc.unary_unary_rpc_method_handler(_forward(channel, path)) for path in _proxied()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(handler_call_details.method)
        if handler is None:
            return await continuation(handler_call_details)
        return handler


async def _serve_rest(dataplane: DataPlane, config: WorkerConfig, session: aiohttp.ClientSession) -> RestListener:
    """The worker's REST port on ``http_server``'s server, every route but inference proxied."""
    s = config.settings
    if s.http_server == "uvicorn":
        return await UvicornListener.serve(dataplane, s.host, config.http_port, reuse_port=True, forward=rest_forward(session))
    app = rest.create_app(dataplane)
    app.middlewares.append(http_proxy(rest_forward(session), s.max_request_bytes))
    return await rest.AiohttpListener.open(app, s.host, config.http_port, reuse_port=True)


async def serve(config: WorkerConfig) -> int:
    """Listen, forward until SIGTERM (drain) or until the model process goes (exit 1)."""
    s = config.settings
    arena = SlotArena(config.arena_fd, config.slots, config.slot_bytes)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=config.link_fd))
    model = ModelLink(reader, writer, arena, config.max_inflight, config.forward_headers)
    linked = asyncio.get_running_loop().create_task(model.run())
    dataplane = ForwardingDataPlane(model, s)

    session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=config.private_http), timeout=aiohttp.ClientTimeout(total=None)
    )
    rest_listener = await _serve_rest(dataplane, config, session)
    channel = grpc.aio.insecure_channel(
        config.private_grpc,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    address = f"{s.host}:{config.grpc_port}"
    server: grpc_h2.GrpcH2Server | grpc.aio.Server
    if s.grpc_server == "http2":
        server, _ = grpc_h2.create_server(dataplane, address, reuse_port=True, overrides=forwarded_methods(channel))
    else:
        server, _ = grpc_server.create_server(dataplane, address, reuse_port=True, interceptors=[RpcProxy(channel)])
    await server.start()
    model.sender.send((link.HELLO, os.getpid()))
    await model.sender.drain()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait({linked, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if linked.done():
        log.error("front-end worker %d: the model process has gone; exiting", config.index)
        return 1
    # Drain: no new connections or RPCs on either port (gRPC's stop refuses new calls at once
    # and lets those running finish within the grace); what is in flight is answered as the
    # model process drains.
    grpc_stopped = asyncio.get_running_loop().create_task(server.stop(grace=s.exit_timeout_secs))
    await rest_listener.stop_accepting()
    idle = asyncio.get_running_loop().create_task(model.idle.wait())
    await asyncio.wait({idle, linked}, timeout=s.exit_timeout_secs, return_when=asyncio.FIRST_COMPLETED)
    idle.cancel()
    await grpc_stopped
    await rest_listener.close()
    await session.close()
    await channel.close()
    return 0


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the model process goes (Linux); exit if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    config = WorkerConfig.model_validate_json(argv[0])
    _die_with_parent(config.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the model process decides
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s %(levelname)s worker-{config.index} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    runner: Callable[[Coroutine[Any, Any, int]], int]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is optional (not on Windows)
        runner = asyncio.run
    exit_now(runner(serve(config)))


if __name__ == "__main__":
    main(sys.argv[1:])
