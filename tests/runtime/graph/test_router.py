"""Router nodes: Weighted, Header, the bandits, feedback, state, Shadow and nested routes."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from servegraph.runtime.server import Server
from tests.conftest import eventually, serve_node
from tests.runtime.graph.helpers import (
    affine,
    child,
    grpc_client,
    grpc_feedback,
    graph_node,
    grpc_input,
    http_client,
    http_input,
    metric,
    metrics_text,
    node_config,
    node_extras,
    post_feedback,
    route_of,
    rows,
)

pytestmark = pytest.mark.usefixtures("transport")

AB = ["model-a", "model-b"]


def router(node: str, models: Server, strategy: str, **settings: Any) -> dict[str, Any]:
    return node_config(node, "router", [child(c, models) for c in AB], strategy=strategy, **settings)


async def test_weighted_split_is_within_binomial_tolerance(models: Server) -> None:
    """400 requests over a 70/30 split with a fixed seed: counts within 4 sigma of 280/120,
    every answer from the model its route names, ids echoed, stats and metrics agreeing."""
    total, share = 400, 0.7
    config = router("ab", models, "Weighted", weights={"model-a": 70, "model-b": 30}, seed=7)
    async with serve_node(config) as node, grpc_client(node) as client:
        x = rows(2)

        async def one(i: int) -> str:
            result = await client.infer("ab", [grpc_input(x)], request_id=f"w-{i}")
            route = route_of(result)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine(route, x))
            assert result.get_response().id == f"w-{i}"
            return route

        routes: list[str] = []
        for start in range(0, total, 20):
            routes += await asyncio.gather(*(one(i) for i in range(start, start + 20)))
        count_a = routes.count("model-a")
        sigma = math.sqrt(total * share * (1 - share))
        assert abs(count_a - total * share) <= 4 * sigma, count_a
        assert set(routes) == set(AB)
        extras = await node_extras(node, "ab")
        assert {arm: s["routed"] for arm, s in extras["arms"].items()} == {"model-a": count_a, "model-b": total - count_a}
        text = await metrics_text(node)
        assert metric(text, "servegraph_router_requests_total", node="ab", route="model-a") == count_a
        assert metric(text, "servegraph_inference_requests_total", model="ab", outcome="success") == total


async def test_header_routing_on_headers_metadata_and_parameters(models: Server) -> None:
    config = router("hdr", models, "Header", header="X-Variant", routes={"b": "model-b"}, default="model-a")
    async with serve_node(config) as node, grpc_client(node) as grpc, http_client(node) as http:
        x = rows(1)
        result = await http.infer("hdr", [http_input(x)], headers={"X-Variant": "b"})
        assert route_of(result) == "model-b"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-b", x))
        result = await grpc.infer("hdr", [grpc_input(x)], headers={"x-variant": "b"})
        assert route_of(result) == "model-b"
        result = await grpc.infer("hdr", [grpc_input(x)], parameters={"X-Variant": "b"})
        assert route_of(result) == "model-b"
        assert route_of(await grpc.infer("hdr", [grpc_input(x)])) == "model-a"  # the default
        assert route_of(await http.infer("hdr", [http_input(x)], headers={"X-Variant": "zzz"})) == "model-a"


async def test_a_node_above_a_header_router_passes_the_header_on(models: Server) -> None:
    """transformer -> Header router: the caller's HTTP header or gRPC metadata reaches the
    router below when the transformer's config names it (the control plane does so)."""
    async with serve_node(router("hdr", models, "Header", header="X-Variant", routes={"b": "model-b"}, default="model-a")) as hdr:
        steps = [{"kind": "StandardScaler", "mean": [0.0], "scale": [1.0]}]
        config = node_config("tr", "transformer", [child("hdr", hdr)], input=steps, _top={"forward_headers": ["X-Variant"]})
        async with serve_node(config) as tr, grpc_client(tr) as grpc, http_client(tr) as http:
            x = rows(2)
            result = await http.infer("tr", [http_input(x)], headers={"X-Variant": "b"})
            assert route_of(result) == "hdr/model-b"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-b", x))
            assert route_of(await grpc.infer("tr", [grpc_input(x)], headers={"x-variant": "b"})) == "hdr/model-b"
            assert route_of(await grpc.infer("tr", [grpc_input(x)], headers={"x-other": "b"})) == "hdr/model-a"
        unforwarded = node_config("tr", "transformer", [child("hdr", hdr)], input=steps)
        async with serve_node(unforwarded) as tr, http_client(tr) as http:
            result = await http.infer("tr", [http_input(rows(1))], headers={"X-Variant": "b"})
            assert route_of(result) == "hdr/model-a", "only the named headers travel"


async def test_header_without_a_match_or_default_is_400_naming_the_node(models: Server) -> None:
    config = router("hdr", models, "Header", header="x-variant", routes={"b": "model-b"})
    async with serve_node(config) as node, grpc_client(node) as grpc, http_client(node) as http:
        x = rows(1)
        with pytest.raises(InferenceServerException) as info:
            await http.infer("hdr", [http_input(x)], headers={"x-variant": "c"})
        assert info.value.status() == "400"
        assert "router 'hdr' has no route for x-variant = 'c'" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            await grpc.infer("hdr", [grpc_input(x)])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "router 'hdr' routes on header or parameter 'x-variant'" in info.value.message()
        assert route_of(await grpc.infer("hdr", [grpc_input(x)], headers={"x-variant": "b"})) == "model-b"


REWARD_RATE = {"model-a": 0.9, "model-b": 0.1}


async def play(node: Server, model: str, rounds: int, seed: int) -> list[str]:
    """Request, then reward the route with REWARD_RATE's chance (gRPC and HTTP feedback in turn)."""
    rng = np.random.default_rng(seed)
    routes = []
    async with grpc_client(node) as client:
        for i in range(rounds):
            result = await client.infer(model, [grpc_input(rows(1, i))])
            route, request_id = route_of(result), result.get_response().id
            assert request_id, "the router makes up an id when the caller sends none"
            reward = 1.0 if rng.random() < REWARD_RATE[route] else 0.0
            if i % 2:
                status, body = await post_feedback(node, model, request_id, reward)
                assert status == 200, body
                assert body["route"] == route
            else:
                answer = await grpc_feedback(client, model, request_id, reward)
                assert answer.get_response().parameters["servegraph.feedback"].string_param == "accepted"
            routes.append(route)
    return routes


@pytest.mark.parametrize(
    "strategy, settings",
    [("EpsilonGreedy", {"epsilon": 0.1}), ("ThompsonSampling", {})],
)
async def test_bandits_converge_to_the_better_arm(models: Server, strategy: str, settings: dict[str, Any]) -> None:
    rounds = 300
    async with serve_node(router("bandit", models, strategy, seed=3, **settings)) as node:
        routes = await play(node, "bandit", rounds, seed=11)
        last = routes[-100:]
        assert last.count("model-a") >= 80, routes
        arms = (await node_extras(node, "bandit"))["arms"]
        assert arms["model-a"]["pulls"] + arms["model-b"]["pulls"] == rounds
        assert arms["model-b"]["pulls"] >= 1, "every arm is tried"
        assert arms["model-a"]["mean_reward"] > arms["model-b"]["mean_reward"]
        text = await metrics_text(node)
        assert metric(text, "servegraph_router_pulls_total", node="bandit", arm="model-a") == arms["model-a"]["pulls"]
        assert metric(text, "servegraph_router_reward_total", node="bandit", arm="model-a") == arms["model-a"]["reward_sum"]


async def test_bandit_state_survives_a_restart(models: Server, tmp_path: Path) -> None:
    state = tmp_path / "state" / "bandit.json"
    config = router("bandit", models, "EpsilonGreedy", seed=5, state_file=str(state))
    async with serve_node(config) as node:
        await play(node, "bandit", 30, seed=1)
        before = (await node_extras(node, "bandit"))["arms"]

        def saved_pulls() -> int:
            try:
                return sum(a["pulls"] for a in json.loads(state.read_text())["arms"].values())
            except (OSError, ValueError):
                return -1

        await eventually(lambda: saved_pulls() == 30, what="the debounced save")
    async with serve_node(config) as node:
        after = (await node_extras(node, "bandit"))["arms"]
        assert {a: (s["pulls"], s["reward_sum"]) for a, s in after.items()} == {
            a: (s["pulls"], s["reward_sum"]) for a, s in before.items()
        }
        text = await metrics_text(node)
        assert metric(text, "servegraph_router_pulls_total", node="bandit", arm="model-a") == before["model-a"]["pulls"]
        await play(node, "bandit", 2, seed=2)  # and it keeps learning
        assert sum(s["pulls"] for s in (await node_extras(node, "bandit"))["arms"].values()) == 32
    assert not [p for p in state.parent.iterdir() if p != state], "no temporary file is left behind"


async def test_feedback_errors(models: Server) -> None:
    async with serve_node(router("ts", models, "ThompsonSampling", seed=1)) as node, grpc_client(node) as client:
        status, body = await post_feedback(node, "ts", "nope", 1)
        assert status == 404
        assert body == {
            "error": "no routing record for request id 'nope' at router 'ts' (remembered: last 10000 request ids, each rewarded once)"
        }
        with pytest.raises(InferenceServerException) as info:
            await grpc_feedback(client, "ts", "nope", 1.0)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        result = await client.infer("ts", [grpc_input(rows(1))], request_id="r-1")
        status, body = await post_feedback(node, "ts", "r-1", 1.5)
        assert status == 400 and "takes rewards between 0 and 1, got 1.5" in body["error"]
        status, body = await post_feedback(node, "ts", "r-1", "lots")
        assert status == 400 and "reward must be a number" in body["error"]
        status, body = await post_feedback(node, "ts", "", 1)
        assert status == 400 and "'id'" in body["error"]
        # The bad rewards consumed nothing: the record still takes one good reward, once.
        assert (await post_feedback(node, "ts", "r-1", 1))[0] == 200
        assert (await post_feedback(node, "ts", "r-1", 1))[0] == 404
        assert route_of(result) in AB
    status, body = await post_feedback(models, "model-a", "r-1", 1)
    assert status == 400 and "model 'model-a' takes no feedback" in body["error"]


async def test_feedback_memory_is_bounded(models: Server) -> None:
    config = router("ab", models, "Weighted", feedback_memory=3, seed=1)
    async with serve_node(config) as node, grpc_client(node) as client:
        for i in range(5):
            await client.infer("ab", [grpc_input(rows(1))], request_id=f"m-{i}")
        status, body = await post_feedback(node, "ab", "m-0", 1)
        assert status == 404 and "(remembered: last 3 request ids" in body["error"]
        assert (await post_feedback(node, "ab", "m-4", 0.5))[0] == 200
        feedback = (await node_extras(node, "ab"))["feedback"]
        assert feedback["remembered"] == 2 and feedback["forgotten"] == 2 and feedback["unknown_ids"] == 1


async def test_shadow_copies_reach_the_shadow_child_while_the_caller_sees_the_primary(models: Server) -> None:
    requests = 60
    config = router("shadow", models, "Shadow", primary="model-a", shadow_percent=50, seed=4)
    async with serve_node(config) as node, grpc_client(node) as client, grpc_client(models) as children:
        for i in range(requests):
            x = rows(1, i)
            result = await client.infer("shadow", [grpc_input(x)])
            assert route_of(result) == "model-a"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-a", x))

        async def served(model: str) -> int:
            stats = await children.get_inference_statistics(model, as_json=True)
            return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))

        shadows = graph_node(node).shadow
        assert shadows is not None
        await eventually(lambda: shadows.in_flight == 0, what="shadow copies to finish")
        extras = await node_extras(node, "shadow")
        copies = extras["shadow"]["children"]["model-b"]["success"]
        sigma = math.sqrt(requests * 0.25)
        assert abs(copies - requests / 2) <= 4 * sigma, copies
        assert await served("model-b") == copies  # the shadow child counted every copy
        assert await served("model-a") == requests
        assert extras["arms"]["model-b"]["routed"] == 0 and extras["arms"]["model-a"]["routed"] == requests
        text = await metrics_text(node)
        assert metric(text, "servegraph_router_shadow_requests_total", node="shadow", child="model-b", outcome="success") == copies


async def test_shadow_failures_never_reach_the_caller(models: Server) -> None:
    children = [child("model-a", models), child("gone", address="127.0.0.1:1")]
    config = node_config("shadow", "router", children, strategy="Shadow", primary="model-a")
    async with serve_node(config) as node, grpc_client(node) as client:
        for _ in range(5):
            assert route_of(await client.infer("shadow", [grpc_input(rows(1))])) == "model-a"
        shadows = graph_node(node).shadow
        assert shadows is not None
        await eventually(lambda: shadows.counts.get("gone", {}).get("failed") == 5, what="5 failed copies")
        assert (await node_extras(node, "shadow"))["children"]["gone"]["failed"] == 5


async def test_nested_routes_join_and_feedback_passes_on(models: Server) -> None:
    inner = router("ab", models, "Weighted", weights={"model-b": 100})
    async with serve_node(inner) as inner_node:
        outer = node_config("outer", "router", [child("ab", inner_node)], strategy="Weighted")
        async with serve_node(outer) as outer_node, grpc_client(outer_node) as client:
            x = rows(3)
            result = await client.infer("outer", [grpc_input(x)])
            assert route_of(result) == "ab/model-b"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-b", x))
            status, body = await post_feedback(outer_node, "outer", result.get_response().id, 1)
            assert status == 200 and body["route"] == "ab/model-b" and body["passed_on"] is True
            assert (await node_extras(outer_node, "outer"))["arms"]["ab"]["pulls"] == 1
            assert (await node_extras(inner_node, "ab"))["arms"]["model-b"]["pulls"] == 1


async def test_a_node_looks_like_a_model_to_tritonclient(models: Server) -> None:
    config = router("ab", models, "Weighted")
    async with serve_node(config) as node, grpc_client(node) as grpc, http_client(node) as http:
        assert await grpc.is_server_ready() and await http.is_server_ready()
        assert await grpc.is_model_ready("ab") and await http.is_model_ready("ab", "1")
        meta = await http.get_model_metadata("ab")
        assert meta["platform"] == "servegraph_router" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["OUTPUT", "LABEL"]
        config_json = (await grpc.get_model_config("ab", as_json=True))["config"]
        assert config_json["platform"] == "servegraph_router" and config_json["input"][0]["name"] == "INPUT"
        assert (await http.get_model_config("ab"))["name"] == "ab"
        await grpc.infer("ab", [grpc_input(rows(2))])
        stats = await grpc.get_inference_statistics("ab", as_json=True)  # Triton's proto parses it
        assert stats["model_stats"][0]["inference_stats"]["success"]["count"] == "1"
        index = await http.get_model_repository_index()
        assert index == [{"name": "ab", "version": "1", "state": "READY", "reason": ""}]
        with pytest.raises(InferenceServerException) as info:
            await grpc.infer("ab", [grpc_input(rows(1))], model_version="2")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as info:
            await grpc.infer("ab", [grpc_input(rows(1))], outputs=[grpcaio.InferRequestedOutput("NOPE")])
        assert "unexpected inference output 'NOPE' for model 'ab'" in info.value.message()
        result = await grpc.infer("ab", [grpc_input(rows(1))], outputs=[grpcaio.InferRequestedOutput("LABEL")])
        assert result.as_numpy("OUTPUT") is None and result.as_numpy("LABEL") is not None


async def test_feedback_through_a_transformer_reaches_the_router_below(models: Server) -> None:
    """The demo's shape: transformer -> router -> models. The router makes up the id, the
    transformer returns it, and a reward posted to the transformer reaches the router."""
    async with serve_node(router("ab", models, "EpsilonGreedy", seed=2)) as ab:
        config = node_config("tr", "transformer", [child("ab", ab)], input=[{"kind": "StandardScaler", "mean": [0.0], "scale": [2.0]}])
        async with serve_node(config) as tr, grpc_client(tr) as client:
            x = rows(2)
            result = await client.infer("tr", [grpc_input(x)])
            request_id, route = result.get_response().id, route_of(result)
            arm = route.removeprefix("ab/")
            assert request_id and route in ("ab/model-a", "ab/model-b")
            np.testing.assert_allclose(result.as_numpy("OUTPUT"), affine(arm, x / 2), rtol=1e-6)
            answer = await grpc_feedback(client, "tr", request_id, 1.0)
            assert answer.get_response().parameters["servegraph.route"].string_param == route
            assert (await node_extras(ab, "ab"))["arms"][arm]["pulls"] == 1
            status, body = await post_feedback(tr, "tr", request_id, 1.0)  # rewarded once only
            assert status == 404 and "no routing record for request id" in body["error"]
