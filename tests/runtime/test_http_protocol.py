"""Every REST endpoint through tritonclient.http, JSON and binary tensors alike, on each REST
transport (``--http-server``)."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import ServerProcess
from tests.runtime.frontend_modes import example_server_in_both_modes, frontend_mode  # noqa: F401  (both modes)


@pytest.fixture
def client(example_http_server: ServerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(example_http_server.http_url)


def _add_sub_inputs(x: np.ndarray, y: np.ndarray, binary: bool) -> list[httpclient.InferInput]:
    a = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    a.set_data_from_numpy(x, binary_data=binary)
    b = httpclient.InferInput("INPUT1", list(y.shape), "FP32")
    b.set_data_from_numpy(y, binary_data=binary)
    return [a, b]


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "servegraph"
    assert "binary_tensor_data" in meta["extensions"]
    assert "statistics" in meta["extensions"]


def test_model_metadata_ready_and_versions(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub")
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "python"
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]
    assert client.get_model_metadata("add_sub", "1")["name"] == "add_sub"
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_add_sub(client: httpclient.InferenceServerClient, binary: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    y = rng.standard_normal((3, 16)).astype(np.float32)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer("add_sub", _add_sub_inputs(x, y, binary), outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + y)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x - y)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == "1"


def test_default_outputs_come_back_binary(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), np.float32)
    result = client.infer("add_sub", _add_sub_inputs(x, x, True))
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert outputs["OUTPUT0"]["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))


def test_requested_output_subset(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((2, 16), np.float32)
    result = client.infer(
        "add_sub", _add_sub_inputs(x, x, True), outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None


def test_versioned_infer_url(client: httpclient.InferenceServerClient) -> None:
    x = np.full((1, 16), 2, np.float32)
    result = client.infer("add_sub", _add_sub_inputs(x, x, True), model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors(client: httpclient.InferenceServerClient, binary: bool) -> None:
    text = np.array([["héllo"], ["servegraph"], [""]], dtype=object)
    inp = httpclient.InferInput("TEXT", [3, 1], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("LENGTH", binary_data=binary),
        httpclient.InferRequestedOutput("UPPER", binary_data=binary),
    ]
    result = client.infer("text_length", [inp], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[5], [10], [0]])
    upper = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("UPPER").ravel()]
    assert upper == ["HÉLLO", "SERVEGRAPH", ""]


def test_onnx_model_signature_read_from_the_graph(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("scale_onnx")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("X", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("scale_onnx", [inp]).as_numpy("Y"), 2 * x + 1)


def test_model_config_is_tritons_shape(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("scale_onnx")
    assert config["name"] == "scale_onnx"
    assert config["max_batch_size"] == 16
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "500"
    assert client.get_model_config("add_sub", "1")["backend"] == "python"


def test_statistics_count_requests_and_executions(client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("add_sub")["model_stats"][0]
    x = np.ones((2, 16), np.float32)
    client.infer("add_sub", _add_sub_inputs(x, x, True))
    after = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 2
    assert any(b["batch_size"] >= 2 for b in after["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == {"add_sub", "mlp", "scale_onnx", "text_length"}
    assert client.get_inference_statistics("add_sub", "1")["model_stats"][0]["version"] == "1"


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index


def test_model_control_is_disabled(example_http_server: ServerProcess) -> None:
    request = urllib.request.Request(
        f"http://{example_http_server.http_url}/v2/repository/models/mlp/unload", method="POST", data=b""
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 403
    assert "model control is disabled" in json.loads(info.value.read())["error"]


def test_metrics_port(example_http_server: ServerProcess, client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 16), np.float32)
    client.infer("add_sub", _add_sub_inputs(x, x, True))
    text = urllib.request.urlopen(f"http://127.0.0.1:{example_http_server.metrics}/metrics", timeout=5).read().decode()
    for metric in (
        'servegraph_inference_requests_total{model="add_sub",outcome="success",version="1"}',
        "servegraph_request_latency_seconds_bucket",
        "servegraph_queue_seconds_bucket",
        "servegraph_compute_seconds_bucket",
        'servegraph_batch_size_bucket{le="1.0",model="add_sub",version="1"}',
        'servegraph_queue_depth{model="add_sub",version="1"}',
    ):
        assert metric in text, metric
