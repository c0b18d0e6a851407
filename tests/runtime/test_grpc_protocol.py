"""Every gRPC method through tritonclient.grpc (sync and aio), raw and typed contents."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

import grpc
from tests.conftest import ServerProcess
from tests.runtime.frontend_modes import example_server_in_both_modes, frontend_mode  # noqa: F401  (both modes)


@pytest.fixture
def client(example_server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(example_server.grpc_url)


def _inputs(x: np.ndarray, y: np.ndarray) -> list[grpcclient.InferInput]:
    a = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    a.set_data_from_numpy(x)
    b = grpcclient.InferInput("INPUT1", list(y.shape), "FP32")
    b.set_data_from_numpy(y)
    return [a, b]


def test_health_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "servegraph"
    model = client.get_model_metadata("add_sub", as_json=True)
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "16"]}
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 512


def test_infer_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    y = np.ones((2, 16), np.float32)
    result = client.infer(
        "add_sub", _inputs(x, y), request_id="g-1", outputs=[grpcclient.InferRequestedOutput("OUTPUT1")]
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x - y)
    assert result.as_numpy("OUTPUT0") is None
    assert result.get_response().id == "g-1"


def test_infer_typed_contents(example_server: ServerProcess) -> None:
    """Typed ``contents`` (no raw_input_contents), as non-Triton v2 clients send them."""
    channel = grpc.insecure_channel(example_server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="add_sub")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [1.0] * 16)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend(values)
    response = stub.ModelInfer(request, timeout=10)
    channel.close()
    out = {o.name: i for i, o in enumerate(response.outputs)}
    summed = np.frombuffer(response.raw_output_contents[out["OUTPUT0"]], np.float32)
    np.testing.assert_array_equal(summed, np.arange(16, dtype=np.float32) + 1)


def test_bytes_over_grpc(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([[b"abc"], ["ünï".encode()]], dtype=object)
    inp = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(text)
    result = client.infer("text_length", [inp])
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[3], [3]])
    assert result.as_numpy("UPPER").ravel().tolist() == [b"ABC", "ÜNÏ".encode()]


def test_statistics_and_index(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), np.float32)
    client.infer("add_sub", _inputs(x, x))
    stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 1
    assert int(stats["execution_count"]) >= 1
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == {"add_sub", "mlp", "scale_onnx", "text_length"}
    assert all(m["state"] == "READY" for m in index)


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model: 'nope'" in info.value.message()


async def test_aio_client_and_stream(example_server: ServerProcess) -> None:
    client = grpcaio.InferenceServerClient(example_server.grpc_url)
    try:
        assert await client.is_server_ready()
        x = np.full((1, 16), 3, np.float32)
        result = await client.infer("add_sub", _inputs(x, x))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)

        async def requests():  # type: ignore[no-untyped-def]
            for i in range(5):
                v = np.full((1, 16), i, np.float32)
                yield {"model_name": "add_sub", "inputs": _inputs(v, v), "request_id": f"s{i}"}

        seen = {}
        async for result, error in client.stream_infer(requests()):
            assert error is None
            seen[result.get_response().id] = result.as_numpy("OUTPUT0")[0, 0]
        assert seen == {f"s{i}": 2.0 * i for i in range(5)}
    finally:
        await client.close()


async def test_aio_http_client(example_server: ServerProcess) -> None:
    import tritonclient.http.aio as httpaio

    client = httpaio.InferenceServerClient(example_server.http_url)
    try:
        x = np.full((2, 16), 1.5, np.float32)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            inp = httpaio.InferInput(name, [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            inputs.append(inp)
        result = await client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    finally:
        await client.close()
