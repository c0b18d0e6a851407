"""Children that are down, hung, failing or rejecting: what the node answers, and readiness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.server import Server
from tests.conftest import DOUBLES, Gate, add_model, eventually, fp32_model_config, serve, serve_node
from tests.runtime.graph.helpers import (
    affine,
    affine_config,
    child,
    graph_node,
    grpc_client,
    grpc_input,
    http_client,
    http_input,
    node_config,
    route_of,
    rows,
)

pytestmark = pytest.mark.usefixtures("transport")


async def start_child(repo: Path, grpc_port: int = 0, http_port: int = 0) -> Server:
    server = Server(
        ServerSettings(
            model_repository=str(repo), http_port=http_port, grpc_port=grpc_port, metrics_port=0,
            repository_poll_secs=0, exit_timeout_secs=5,
        )  # fmt: skip
    )
    await server.start()
    return server


async def test_a_stopped_child_gives_503_naming_it_and_readiness_follows_it(tmp_path: Path) -> None:
    repo = tmp_path / "child"
    add_model(repo, "model-a", affine_config(), DOUBLES / "affine.py")
    server = await start_child(repo)
    assert server.ports is not None
    ports = server.ports
    config = node_config("ab", "router", [child("model-a", server)], strategy="Weighted")
    try:
        async with serve_node(config) as node, grpc_client(node) as grpc, http_client(node) as http:
            x = rows(1)
            assert route_of(await grpc.infer("ab", [grpc_input(x)])) == "model-a"
            assert await http.is_server_ready()
            await server.stop()
            with pytest.raises(InferenceServerException) as info:
                await http.infer("ab", [http_input(x)])
            assert info.value.status() == "503"
            assert info.value.message().startswith("child 'model-a' of node 'ab' is unavailable: ")
            with pytest.raises(InferenceServerException) as info:
                await grpc.infer("ab", [grpc_input(x)])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "child 'model-a' of node 'ab' is unavailable" in info.value.message()
            ab = graph_node(node)
            await eventually(lambda: not ab.is_ready(), what="the node to notice")
            assert not await http.is_server_ready() and not await grpc.is_model_ready("ab")
            assert (await http.get_model_repository_index())[0]["reason"] == "children not ready: ['model-a']"

            server = await start_child(repo, grpc_port=ports.grpc, http_port=ports.http)  # back, same addresses
            await eventually(ab.is_ready, what="the node to see its child back")
            assert await http.is_server_ready()
            result = await grpc.infer("ab", [grpc_input(x)])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-a", x))
    finally:
        await server.stop()


async def test_failover_serves_from_another_ready_child(models: Server) -> None:
    children = [child("down", address="127.0.0.1:1", model="model-a"), child("model-a", models)]
    weights = {"down": 100, "model-a": 0}
    config = node_config("ab", "router", children, strategy="Weighted", weights=weights, failover=True)
    async with serve_node(config) as node, grpc_client(node) as client:
        x = rows(2)
        result = await client.infer("ab", [grpc_input(x)])
        assert route_of(result) == "model-a"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-a", x))
        assert graph_node(node).failovers == 1
    config = node_config("ab", "router", children, strategy="Weighted", weights=weights)
    async with serve_node(config) as node, grpc_client(node) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("ab", [grpc_input(rows(1))])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert info.value.message().startswith("child 'down' of node 'ab' is unavailable")


@pytest.fixture
async def gated(repo: Path, tmp_path: Path) -> object:
    """A server whose model 'gated' blocks until the gate opens (opened at teardown)."""
    gate = Gate(tmp_path)
    add_model(repo, "gated", fp32_model_config(warmup=False, parameters=gate.parameters()), DOUBLES / "gated.py")
    add_model(repo, "model-a", affine_config(), DOUBLES / "affine.py")
    async with serve(repo) as server:
        try:
            yield server, gate
        finally:
            gate.open()


async def test_a_hung_child_gives_504_naming_it_within_the_deadline(gated: tuple[Server, Gate]) -> None:
    server, gate = gated
    config = node_config("g", "transformer", [child("gated", server)])
    async with serve_node(config) as node, grpc_client(node) as grpc, http_client(node) as http:
        x = rows(1)
        with pytest.raises(InferenceServerException) as info:
            await grpc.infer("g", [grpc_input(x)], timeout=200_000, client_timeout=30)  # Triton's timeout (us)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert info.value.message().startswith("child 'gated' of node 'g' did not answer within the deadline")
        with pytest.raises(InferenceServerException) as info:
            await http.infer("g", [http_input(x)], headers={"X-Request-Timeout-Ms": "200"})
        assert info.value.status() == "504"
        assert "child 'gated' of node 'g' did not answer within the deadline" in info.value.message()
        gate.open()
        result = await grpc.infer("g", [grpc_input(x)])  # and with the child moving again, it answers
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x + 1)


async def test_the_default_timeout_applies_when_the_caller_sets_none(gated: tuple[Server, Gate]) -> None:
    server, _ = gated
    config = node_config("g", "router", [child("gated", server)], strategy="Weighted", _top={"default_timeout_ms": 200})
    async with serve_node(config) as node, grpc_client(node) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("g", [grpc_input(rows(1))])  # no deadline of its own (pytest-timeout guards)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert "child 'gated' of node 'g'" in info.value.message()


async def test_a_failing_child_is_500_and_a_rejecting_one_400_both_named(repo: Path) -> None:
    add_model(repo, "faulty", fp32_model_config(warmup=False), DOUBLES / "faulty.py")
    add_model(repo, "model-a", affine_config(), DOUBLES / "affine.py")
    async with serve(repo) as server:
        config = node_config("f", "router", [child("faulty", server)], strategy="Weighted")
        async with serve_node(config) as node, http_client(node) as client:
            with pytest.raises(InferenceServerException) as info:
                await client.infer("f", [http_input(-np.ones((1, 4), np.float32))])
            assert info.value.status() == "500"
            assert info.value.message().startswith("child 'faulty' of node 'f' failed (INTERNAL): ")
            assert "negative inputs are poison" in info.value.message()
            with pytest.raises(InferenceServerException) as info:
                await client.infer("f", [http_input(np.ones((1, 3), np.float32))])
            assert info.value.status() == "400"
            assert info.value.message().startswith("child 'faulty' of node 'f' rejected the request: ")
            result = await client.infer("f", [http_input(np.ones((1, 4), np.float32))])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), 2, np.float32))
        # A node that declares its signature judges inputs itself, before any child call.
        signature = [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 4]}]
        outputs = [{"name": "OUTPUT", "datatype": "FP32", "shape": [-1, 4]}]
        config = node_config("f", "router", [child("model-a", server)], strategy="Weighted", _top={"inputs": signature, "outputs": outputs})
        async with serve_node(config) as node, grpc_client(node) as client:
            with pytest.raises(InferenceServerException) as info:
                await client.infer("f", [grpc_input(np.ones((1, 3), np.float32))])
            assert info.value.message() == "unexpected shape for input 'INPUT' for model 'f': expected [-1, 4], got [1, 3]"
            assert graph_node(node).extras()["children"]["model-a"] == {"ready": True, "success": 0, "failed": 0}
