"""What a node answers for each status a child can answer, and what that does to readiness.

A scripted gRPC child (``ScriptedChild``: any status, trailers, a hang, a readiness answer)
stands in for a real server, so every status is reachable on demand. Covered: a busy child
(queue full, with and without a retry trailer) passes back 503 with its retry hint and never
changes readiness; every other status maps to the node's matching status naming the child;
failover skips a child that is not ready; the deadline reserve lets the node answer its own
504 naming a hung child before a 1 s caller deadline.

Left out: real children that stop or fail (test_failures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import numpy as np
import pytest
from multidict import CIMultiDict
from tritonclient.grpc import service_pb2 as pb

import grpc
from servegraph.runtime.graph.client import reserve
from servegraph.runtime.server import Server
from tests.conftest import eventually, http_url, serve_node
from tests.runtime.graph.helpers import child, graph_node, grpc_client, grpc_input, node_config, route_of, rows

SERVICE = "inference.GRPCInferenceService"


class ScriptedChild:
    """A v2 gRPC server for one model, 'INPUT' -> 'OUTPUT' (identity), whose answers a test sets."""

    def __init__(self) -> None:
        self.ready = True
        self.status: grpc.StatusCode | None = None
        self.message = ""
        self.trailers: tuple[tuple[str, str], ...] = ()
        self.hang = False
        self.calls = 0
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _handlers(self) -> grpc.GenericRpcHandler:
        async def model_ready(request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=self.ready)

        async def server_ready(request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def metadata(request: Any, context: Any) -> Any:
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=request.name,
                versions=["1"],
                platform="scripted",
                inputs=[tensor(name="INPUT", datatype="FP32", shape=[-1, 4])],
                outputs=[tensor(name="OUTPUT", datatype="FP32", shape=[-1, 4])],
            )

        async def infer(request: Any, context: Any) -> Any:
            self.calls += 1
            if self.hang:
                await asyncio.sleep(3600)
            if self.status is not None:
                context.set_trailing_metadata(self.trailers)
                await context.abort(self.status, self.message)
            response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
            given = request.inputs[0]
            response.outputs.add(name="OUTPUT", datatype="FP32", shape=given.shape)
            response.raw_output_contents.append(request.raw_input_contents[0])
            return response

        def unary(function: Any, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                function, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ModelReady": unary(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerReady": unary(server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelMetadata": unary(metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
                "ModelInfer": unary(infer, pb.ModelInferRequest, pb.ModelInferResponse),
            },
        )


@contextlib.asynccontextmanager
async def running_child() -> AsyncIterator[ScriptedChild]:
    child_server = ScriptedChild()
    await child_server.server.start()
    try:
        yield child_server
    finally:
        await child_server.server.stop(grace=None)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedChild]:
    async with running_child() as child_server:
        yield child_server


@pytest.fixture
async def second() -> AsyncIterator[ScriptedChild]:
    async with running_child() as child_server:
        yield child_server


def one_child_router(scripted: ScriptedChild, **settings: Any) -> dict[str, Any]:
    return node_config("n", "router", [child("kid", address=scripted.address, model="m")], strategy="Weighted", **settings)


async def http_infer(node: Server, headers: dict[str, str] | None = None) -> tuple[int, Mapping[str, str], Any]:
    assert node.ports is not None
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{http_url(node.ports)}/v2/models/n/infer", json=body, headers=headers or {}) as reply,
    ):
        return reply.status, CIMultiDict(reply.headers), await reply.json()  # header names: any case


async def grpc_error(node: Server, timeout: float = 30.0) -> grpc.aio.AioRpcError:
    assert node.ports is not None
    request = pb.ModelInferRequest(model_name="n")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 4)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{node.ports.grpc}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=timeout)
    return info.value


async def health(node: Server) -> int:
    assert node.ports is not None
    async with aiohttp.ClientSession() as session, session.get(f"http://{http_url(node.ports)}/v2/health/ready") as reply:
        return reply.status


# ------------------------------------------------------------------ backpressure


@pytest.mark.parametrize(
    ("message", "trailers", "retry_ms"),
    [
        ("queue for model 'm' version 1 is full (4 requests); retry after 250 ms", (("grpc-retry-pushback-ms", "250"),), 250),
        ("Exceeds maximum queue size", (), 1000),  # Triton's words, no trailer: the default hint
    ],
    ids=["servegraph_pushback", "triton_words"],
)
async def test_a_busy_child_is_503_with_its_retry_hint_and_never_down(
    scripted: ScriptedChild, message: str, trailers: tuple[tuple[str, str], ...], retry_ms: int
) -> None:
    async with serve_node(one_child_router(scripted)) as node:
        n = graph_node(node)
        await eventually(n.is_ready, what="the node to be ready")
        scripted.status, scripted.message, scripted.trailers = grpc.StatusCode.UNAVAILABLE, message, trailers
        for _ in range(3):
            status, headers, body = await http_infer(node)
            assert status == 503, body
            assert body["error"] == f"child 'kid' of node 'n' is busy: {message}"
            assert headers["Retry-After"] == str(-(-retry_ms // 1000))
            assert headers["X-Retry-After-Ms"] == str(retry_ms)
            error = await grpc_error(node)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == f"child 'kid' of node 'n' is busy: {message}"
            assert ("grpc-retry-pushback-ms", str(retry_ms)) in list(error.trailing_metadata() or ())
            assert n.is_ready() and n.child_is_ready("kid")
            assert await health(node) == 200
        scripted.status = None
        status, _, _ = await http_infer(node)
        assert status == 200


async def test_an_unreachable_child_is_marked_down(scripted: ScriptedChild) -> None:
    """UNAVAILABLE without a queue-full word or hint: the child cannot serve, readiness follows."""
    async with serve_node(one_child_router(scripted, _top={"default_timeout_ms": 5000})) as node:
        n = graph_node(node)
        await eventually(n.is_ready, what="the node to be ready")
        await scripted.server.stop(grace=None)
        status, headers, body = await http_infer(node)
        assert status == 503 and "Retry-After" not in headers, body
        assert body["error"].startswith("child 'kid' of node 'n' is unavailable")
        assert not n.child_is_ready("kid")


# ------------------------------------------------------------ every child status

STATUS_CASES = [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 413, "ran out of resources"),
    (grpc.StatusCode.UNIMPLEMENTED, 400, "does not implement the request"),
    (grpc.StatusCode.PERMISSION_DENIED, 403, "refused the request"),
    (grpc.StatusCode.UNAUTHENTICATED, 403, "refused the request"),
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "rejected the request"),
    (grpc.StatusCode.OUT_OF_RANGE, 400, "rejected the request"),
    (grpc.StatusCode.FAILED_PRECONDITION, 400, "rejected the request"),
    (grpc.StatusCode.INTERNAL, 500, "failed (INTERNAL)"),
    (grpc.StatusCode.UNKNOWN, 500, "failed (UNKNOWN)"),
    (grpc.StatusCode.DATA_LOSS, 500, "failed (DATA_LOSS)"),
]
NODE_CODE = {413: "RESOURCE_EXHAUSTED", 403: "PERMISSION_DENIED", 500: "INTERNAL"}


@pytest.mark.parametrize(("code", "http_status", "words"), STATUS_CASES, ids=[c[0].name for c in STATUS_CASES])
async def test_every_child_status_maps_to_the_nodes_matching_status(
    scripted: ScriptedChild, code: grpc.StatusCode, http_status: int, words: str
) -> None:
    async with serve_node(one_child_router(scripted)) as node:
        n = graph_node(node)
        await eventually(n.is_ready, what="the node to be ready")
        scripted.status, scripted.message = code, "the child's own words"
        status, _, body = await http_infer(node)
        assert status == http_status, body
        assert body["error"] == f"child 'kid' of node 'n' {words}: the child's own words"
        error = await grpc_error(node)
        expected = code.name if code.name in ("UNIMPLEMENTED", "INVALID_ARGUMENT") else NODE_CODE.get(http_status, "INVALID_ARGUMENT")
        assert error.code().name == expected
        assert error.details() == body["error"]
        assert n.is_ready() and n.child_is_ready("kid")  # the child answered: it is up


# -------------------------------------------------------------------- failover


async def test_failover_skips_a_child_that_is_not_ready(scripted: ScriptedChild, second: ScriptedChild) -> None:
    scripted.ready, scripted.hang = False, True  # hung: says not ready, and never answers
    children = [child("ok", address=second.address, model="m"), child("hung", address=scripted.address, model="m")]
    config = node_config("n", "router", children, strategy="Weighted", weights={"hung": 100, "ok": 0}, failover=True)
    async with serve_node(config) as node, grpc_client(node) as client:
        n = graph_node(node)
        await eventually(lambda: n.signature_known and not n.child_is_ready("hung"), what="the node to see 'hung'")
        started = time.monotonic()
        for _ in range(4):
            result = await client.infer("n", [grpc_input(rows(1))], client_timeout=5)
            assert route_of(result) == "ok"
        assert time.monotonic() - started < 2.0  # no call waited on the hung child
        assert scripted.calls == 0 and n.failovers == 4


# ------------------------------------------------------------------- deadlines


def test_the_reserve_covers_grpcs_late_deadlines() -> None:
    """gRPC deadlines reach the server about 9 ms late at 1-3 s and 99 ms late at 10 s."""
    assert reserve(1.0) >= 0.02 and reserve(3.0) >= 0.05 and reserve(10.0) >= 0.15
    assert reserve(0.02) == 0.01  # never more than half of what is left


async def test_a_hung_child_is_named_in_the_nodes_own_504_at_a_1s_deadline(scripted: ScriptedChild) -> None:
    async with serve_node(one_child_router(scripted)) as node:
        await eventually(graph_node(node).is_ready, what="the node to be ready")
        scripted.hang = True
        named = 0
        for _ in range(5):
            error = await grpc_error(node, timeout=1.0)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            named += "child 'kid' of node 'n' did not answer within the deadline" in (error.details() or "")
        assert named == 5


async def test_a_scripted_child_serves(scripted: ScriptedChild) -> None:
    async with serve_node(one_child_router(scripted)) as node, grpc_client(node) as client:
        await eventually(graph_node(node).is_ready, what="the node to be ready")
        x = rows(2)
        np.testing.assert_array_equal((await client.infer("n", [grpc_input(x)])).as_numpy("OUTPUT"), x)
