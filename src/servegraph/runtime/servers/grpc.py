"""The v2 gRPC transport: ``inference.GRPCInferenceService`` on grpc.aio.

Served with the stubs that ship in ``tritonclient.grpc`` (no hand-written protos). A
caller's gRPC deadline becomes the request's deadline; a full queue answers UNAVAILABLE
with the standard ``grpc-retry-pushback-ms`` trailer so retry policies back off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol import grpc_codec
from servegraph.runtime.protocol.errors import (
    MODEL_CONTROL_DISABLED,
    PermissionDenied,
    QueueFull,
    ServegraphError,
    status_of,
)

log = logging.getLogger(__name__)


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
        """Requests on one stream run concurrently; each answer (or error) is sent when ready."""
        answers: asyncio.Queue[Any] = asyncio.Queue()
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
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*list(tasks))
            await answers.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()


def create_server(dataplane: DataPlane, address: str) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to ``address``; returns it with the port actually bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", dataplane.settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane), server)
    port = server.add_insecure_port(address)
    return server, port


__all__ = ["InferenceServicer", "create_server"]
