"""The v2 gRPC transport: ``inference.GRPCInferenceService`` on grpc.aio.

Served with the messages that ship in ``tritonclient.grpc`` (no hand-written protos). A
caller's gRPC deadline becomes the request's deadline; a full queue answers UNAVAILABLE
with the standard ``grpc-retry-pushback-ms`` trailer so retry policies back off.

Handlers are registered with raw bytes in (``request_deserializer=None``) and parse the
message themselves, so an undecodable message answers INVALID_ARGUMENT naming the problem
rather than grpc's UNKNOWN "Unexpected DecodeError"; one boundary around every handler
answers our errors from the table and logs anything else as INTERNAL with its message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol import grpc_codec
from servegraph.runtime.protocol.errors import (
    MODEL_CONTROL_DISABLED,
    InvalidInput,
    PermissionDenied,
    QueueFull,
    ServegraphError,
    status_of,
)

log = logging.getLogger(__name__)

# Requests of one ModelStreamInfer stream in flight at once (Triton's streams have no limit;
# past this the server stops reading the stream until an answer has gone out).
STREAM_WINDOW = 64


def grpc_status(exc: ServegraphError) -> grpc.StatusCode:
    """The gRPC status for ``exc``: the error table's canonical code, by name."""
    return grpc.StatusCode[status_of(exc)[1]]


async def _abort(context: grpc.aio.ServicerContext, exc: ServegraphError) -> NoReturn:
    if isinstance(exc, QueueFull):
        context.set_trailing_metadata(
            (("grpc-retry-pushback-ms", str(max(1, round(exc.retry_after * 1000)))),)
        )
    await context.abort(grpc_status(exc), exc.message)
    raise AssertionError("unreachable")  # context.abort raises


def _unexpected(exc: Exception, method: str) -> ServegraphError:
    """A bug, not the caller's fault: log it and answer INTERNAL (grpc's default is UNKNOWN)."""
    log.exception("unexpected error in %s", method)
    return ServegraphError(f"internal server error: {type(exc).__name__}: {exc}")


def _parse(message_type: Any, raw: bytes) -> Any:
    """``raw`` as a ``message_type``; a message protobuf cannot decode is the caller's fault."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.name} message: {exc}") from None


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """The call's metadata (lower-case keys), for header routing in graph nodes."""
    return dict(context.invocation_metadata() or ())


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # protoc stubs are untyped
    """Every RPC is a thin translation onto the DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return pb.ModelReadyResponse(ready=self.dataplane.model_ready(request.name, request.version))
        except ServegraphError as exc:
            await _abort(context, exc)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self.dataplane.model_metadata(request.name, request.version)
        except ServegraphError as exc:
            await _abort(context, exc)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            config = self.dataplane.model_config(request.name, request.version)
        except ServegraphError as exc:
            await _abort(context, exc)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            stats = self.dataplane.model_statistics(request.name, request.version)
        except ServegraphError as exc:
            await _abort(context, exc)
        # ignore_unknown_fields: a graph node's extras (its "servegraph" entry) have no place
        # in Triton's proto; HTTP and the metrics carry them.
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = self.dataplane.repository_index(request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, PermissionDenied(MODEL_CONTROL_DISABLED))

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, PermissionDenied(MODEL_CONTROL_DISABLED))

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Abort outside the try: context.abort raises an Exception that must not be caught here.
        try:
            decoded = grpc_codec.decode_request(request, _deadline(context))
            decoded.headers = _metadata(context)
            response = await self.dataplane.infer(decoded)
            return grpc_codec.encode_response(response)
        except ServegraphError as exc:
            error = exc
        except Exception as exc:
            error = _unexpected(exc, "ModelInfer")
        await _abort(context, error)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently; each answer (or error) is sent when ready.

        At most ``STREAM_WINDOW`` requests of a stream are in flight: past that the reader
        waits until an answer has gone out, and HTTP/2 flow control holds the client back, so
        a fast sender cannot queue unbounded work, tasks or answers on the server.
        """
        window = asyncio.Semaphore(STREAM_WINDOW)
        # Answers, then None or the error ending the stream: at most one per slot, plus the end.
        answers: asyncio.Queue[Any] = asyncio.Queue(maxsize=STREAM_WINDOW + 1)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                decoded = grpc_codec.decode_request(request, _deadline(context))
                response = await self.dataplane.infer(decoded)
                await answers.put(pb.ModelStreamInferResponse(infer_response=grpc_codec.encode_response(response)))
            except Exception as exc:
                error = exc if isinstance(exc, ServegraphError) else _unexpected(exc, "ModelStreamInfer")
                await answers.put(
                    pb.ModelStreamInferResponse(
                        error_message=error.message,
                        infer_response=pb.ModelInferResponse(id=request.id, model_name=request.model_name),
                    )
                )

        async def read() -> None:
            """Start one task per message; always end the answer stream, with an error if the
            requests cannot be read (an undecodable message ends the stream INVALID_ARGUMENT)."""
            failure: ServegraphError | None = None
            try:
                async for raw in request_iterator:
                    request = _parse(pb.ModelInferRequest, raw)
                    await window.acquire()
                    task = asyncio.get_running_loop().create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except ServegraphError as exc:
                failure = exc
            except Exception as exc:
                failure = _unexpected(exc, "ModelStreamInfer")
            finally:
                # Earlier messages are still answered, then the stream ends (with its status).
                await asyncio.gather(*list(tasks), return_exceptions=True)
                await answers.put(failure if failure is not None else None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                if isinstance(answer, ServegraphError):
                    await _abort(context, answer)
                yield answer
                window.release()
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(method: Unary, request_type: Any, name: str) -> Unary:
    """Parse the raw request, call ``method``, and be the one exception boundary of the RPC."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        # Abort outside the try: context.abort raises an exception that must not be caught here.
        try:
            return await method(_parse(request_type, raw), context)
        except grpc.aio.AbortError:
            raise
        except ServegraphError as exc:
            error = exc
        except Exception as exc:
            error = _unexpected(exc, name)
        await _abort(context, error)

    return handler


class Method(NamedTuple):
    """One RPC as any transport calls it: raw request bytes in (an async iterator of them
    when ``streaming``), a response message out (an async iterator of them when streaming)."""

    streaming: bool
    call: Callable[[Any, Any], Any]
    serialize: Callable[[Any], bytes]


def methods(servicer: InferenceServicer) -> dict[str, Method]:
    """Every RPC the servicer implements, by name; the others are UNIMPLEMENTED."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    table: dict[str, Method] = {}
    for method in service.methods:
        if method.name not in vars(InferenceServicer):
            continue  # shared memory, trace and log settings
        serialize = getattr(pb, method.output_type.name).SerializeToString
        implementation = getattr(servicer, method.name)
        if method.client_streaming:
            table[method.name] = Method(True, implementation, serialize)
        else:
            request_type = getattr(pb, method.input_type.name)
            table[method.name] = Method(False, _unary(implementation, request_type, method.name), serialize)
    return table


SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Every RPC the servicer implements, taking raw bytes; grpc answers the rest UNIMPLEMENTED."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, method in methods(servicer).items():
        make = grpc.stream_stream_rpc_method_handler if method.streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(method.call, request_deserializer=None, response_serializer=method.serialize)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def create_server(
    dataplane: DataPlane,
    address: str,
    *,
    reuse_port: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to ``address``; returns it with the port actually bound.

    ``reuse_port`` lets front-end workers share one port; off, a second server on a taken
    port fails instead of silently splitting its traffic.
    """
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", dataplane.settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
    )
    server.add_generic_rpc_handlers((_handlers(InferenceServicer(dataplane)),))
    port = server.add_insecure_port(address)
    return server, port


__all__ = ["InferenceServicer", "Method", "create_server", "methods"]
