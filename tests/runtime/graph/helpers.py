"""Graph-test helpers: three affine children, node configs, and calls.

Children are python models on one in-process servegraph server (``serve``), the node under
test another in-process server (``serve_node``), and tritonclient's aio clients the caller,
all on 127.0.0.1 in the test's event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio

from servegraph.runtime.server import Server
from tests.conftest import DOUBLES, add_model, fp32_model_config, grpc_url, http_url

AFFINE = DOUBLES / "affine.py"
FEATURES = 4
ROUTE = "servegraph.route"

AFFINE_MODELS = {"model-a": (1.0, 0.0), "model-b": (1.0, 100.0), "model-c": (2.0, 1.0)}
"""name -> (scale, offset): OUTPUT = INPUT * scale + offset."""


def affine_config(scale: float = 1.0, offset: float = 0.0, **extra: Any) -> dict[str, Any]:
    config = fp32_model_config(64, dims=[FEATURES], parameters={"scale": str(scale), "offset": str(offset)}, **extra)
    config["output"].append({"name": "LABEL", "data_type": "INT64", "dims": [1]})
    return config


def affine(name: str, x: np.ndarray) -> np.ndarray:
    """What child ``name`` answers for ``x`` (OUTPUT), computed by hand."""
    scale, offset = AFFINE_MODELS[name]
    return (x * np.float32(scale) + np.float32(offset)).astype(np.float32)


def add_affine_models(repo: Path) -> None:
    for name, (scale, offset) in AFFINE_MODELS.items():
        add_model(repo, name, affine_config(scale, offset), AFFINE)


CHILD_TRANSPORTS = ("grpc", "http")
"""How a node calls a child server: ``grpc`` (its gRPC endpoint only) or ``http`` (its HTTP
endpoint given too, which a node uses for inference); ``child_transport`` picks one."""

child_transport = {"now": "grpc"}


def child(
    name: str, server: Server | None = None, *, model: str = "", address: str = "", http: str = ""
) -> dict[str, Any]:
    """A ChildEndpoint: the model ``model`` (default: ``name``) on ``server`` (or ``address``,
    and ``http`` for an HTTP endpoint). A server's HTTP endpoint is given when the test runs
    with the ``http`` child transport."""
    if server is not None:
        assert server.ports is not None
        address = grpc_url(server.ports)
        if child_transport["now"] == "http":
            http = http_url(server.ports)
    endpoint = {"name": name, "model": model or name, "grpc": address}
    if http:
        endpoint["http"] = http
    return endpoint


def node_config(node: str, role: str, children: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """A NodeConfig dict for ``role`` with ``settings`` as its role block (extra top-level
    fields go in ``settings["_top"]``)."""
    top = settings.pop("_top", {})
    return {"node": node, "deployment": "tests", "role": role, "model_name": node, "children": children, role: settings, **top}


def grpc_client(server: Server) -> grpcaio.InferenceServerClient:
    assert server.ports is not None
    return grpcaio.InferenceServerClient(grpc_url(server.ports))


def http_client(server: Server) -> httpaio.InferenceServerClient:
    assert server.ports is not None
    return httpaio.InferenceServerClient(http_url(server.ports))


def grpc_input(x: np.ndarray, name: str = "INPUT") -> grpcaio.InferInput:
    tensor = grpcaio.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def http_input(x: np.ndarray, name: str = "INPUT") -> httpaio.InferInput:
    tensor = httpaio.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return tensor


def route_of(result: Any) -> str:
    """The ``servegraph.route`` of a gRPC or HTTP InferResult."""
    response = result.get_response()
    if isinstance(response, dict):
        return str(response["parameters"][ROUTE])
    return str(response.parameters[ROUTE].string_param)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


async def post_feedback(server: Server, model: str, request_id: Any, reward: Any) -> tuple[int, Any]:
    """``POST /v2/models/{model}/feedback`` with ``{"id", "reward"}``: (status, JSON body)."""
    import aiohttp

    assert server.ports is not None
    url = f"http://{http_url(server.ports)}/v2/models/{model}/feedback"
    async with aiohttp.ClientSession() as session, session.post(url, json={"id": request_id, "reward": reward}) as reply:
        return reply.status, await reply.json()


async def grpc_feedback(client: grpcaio.InferenceServerClient, model: str, request_id: str, reward: float) -> Any:
    """Feedback over gRPC: ModelInfer with no inputs and the two feedback parameters."""
    return await client.infer(
        model, [], parameters={"servegraph.feedback_id": request_id, "servegraph.reward": reward}
    )


async def node_extras(server: Server, model: str) -> dict[str, Any]:
    """The node's ``servegraph`` entry of ``GET /v2/models/{model}/stats`` (tritonclient HTTP)."""
    async with http_client(server) as client:
        stats = await client.get_inference_statistics(model)
    return dict(stats["model_stats"][0]["servegraph"])


async def metrics_text(server: Server) -> str:
    import aiohttp

    assert server.ports is not None
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{server.ports.metrics}/metrics") as reply:
        return await reply.text()


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text, or None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def graph_node(server: Server) -> Any:
    """The GraphNode an in-process node server serves (for polling its state in ``eventually``)."""
    from servegraph.runtime.graph.hosting import NodeHost

    assert isinstance(server.repository, NodeHost)
    return server.repository.node
