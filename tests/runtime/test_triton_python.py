"""Triton python-backend models (``TritonPythonModel`` on ``triton_python_backend_utils``)
served unchanged from a Triton repository (config.pbtxt), called with tritonclient."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from tests.conftest import grpc_url, http_url, serve

ADD_SUB_PBTXT = """
name: "add_sub"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

ADD_SUB_MODEL = '''
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton's add_sub example, as its users write it."""

    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(model_config, "OUTPUT1")["data_type"])
        seen = {key: args[key] for key in ("model_name", "model_version", "model_instance_kind")}
        seen["output0_dims"] = output0_config["dims"]
        seen["max_batch_size"] = model_config["max_batch_size"]
        seen["repository"] = args["model_repository"]
        (Path(args["model_repository"]) / "initialized.json").write_text(json.dumps(seen))
        pb_utils.Logger.log_info("add_sub initialized")

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if (in_0 >= 1000).any():
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError("INPUT0 must be below 1000")))
                continue
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        Path(FINALIZED).write_text("finalized")
'''


def triton_repo(root: Path, name: str, pbtxt: str, model: str) -> Path:
    """A Triton model folder: ``config.pbtxt`` and ``1/model.py``."""
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(pbtxt)
    (folder / "1" / "model.py").write_text(model)
    return folder


def pair(x0: np.ndarray, x1: np.ndarray, module: object = grpcaio) -> list[object]:
    tensors = []
    for name, x in (("INPUT0", x0), ("INPUT1", x1)):
        tensor = module.InferInput(name, list(x.shape), "FP32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(x)
        tensors.append(tensor)
    return tensors


async def test_a_triton_add_sub_model_serves_unchanged(repo: Path, tmp_path: Path) -> None:
    finalized = tmp_path / "finalized.txt"
    folder = triton_repo(repo, "add_sub", ADD_SUB_PBTXT, ADD_SUB_MODEL.replace("FINALIZED", repr(str(finalized))))
    rng = np.random.default_rng(0)
    async with serve(repo) as server:
        assert server.ports is not None
        seen = json.loads((folder / "initialized.json").read_text())
        assert seen == {
            "model_name": "add_sub", "model_version": "1", "model_instance_kind": "CPU",
            "output0_dims": [4], "max_batch_size": 8, "repository": str(folder),
        }
        async with grpcaio.InferenceServerClient(grpc_url(server.ports)) as client:

            async def one(rows: int) -> None:
                x0 = rng.random((rows, 4), dtype=np.float32)
                x1 = rng.random((rows, 4), dtype=np.float32)
                result = await client.infer("add_sub", pair(x0, x1))
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x0 + x1)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x0 - x1)

            await asyncio.gather(*(one(1 + i % 3) for i in range(24)))
            meta = await client.get_model_metadata("add_sub", as_json=True)
            assert [t["name"] for t in meta["inputs"]] == ["INPUT0", "INPUT1"]
        assert not finalized.exists()
    assert finalized.read_text() == "finalized", "finalize() runs when the model unloads"


async def test_an_error_response_reaches_only_its_caller(repo: Path, tmp_path: Path) -> None:
    triton_repo(repo, "add_sub", ADD_SUB_PBTXT, ADD_SUB_MODEL.replace("FINALIZED", repr(str(tmp_path / "f"))))
    async with serve(repo) as server:
        assert server.ports is not None
        async with grpcaio.InferenceServerClient(grpc_url(server.ports)) as grpc, \
                httpaio.InferenceServerClient(http_url(server.ports)) as http:
            good = np.ones((2, 4), np.float32)
            bad = good * 5000

            async def expect_error(client: object, module: object) -> str:
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("add_sub", pair(bad, good, module))  # type: ignore[attr-defined]
                assert "INPUT0 must be below 1000" in info.value.message()
                return str(info.value.status())

            results = await asyncio.gather(
                expect_error(grpc, grpcaio), expect_error(http, httpaio),
                *(grpc.infer("add_sub", pair(good, good)) for _ in range(6)),
            )
            assert results[:2] == ["StatusCode.INTERNAL", "500"]
            for result in results[2:]:
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), good + good)  # type: ignore[union-attr]


BLS_MODEL = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(requests[0], "INPUT0")]
        answer = pb_utils.InferenceRequest(model_name="other", inputs=inputs, requested_output_names=["X"]).exec()
        return [answer]
'''


async def test_business_logic_scripting_is_refused_with_a_reason(repo: Path) -> None:
    triton_repo(repo, "bls", ADD_SUB_PBTXT.replace('name: "add_sub"', 'name: "bls"'), BLS_MODEL)
    async with serve(repo, strict_readiness=False) as server:
        assert server.ports is not None
        async with grpcaio.InferenceServerClient(grpc_url(server.ports)) as client:
            index = await client.get_model_repository_index(as_json=True)
            state = index["models"][0]
            assert state["state"] == "UNAVAILABLE"
            assert "business logic scripting (InferenceRequest.exec to model 'other') is not supported" in state["reason"]


AUTO_COMPLETE_PBTXT = 'backend: "python"\nmax_batch_size: 4\n'

AUTO_COMPLETE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]})
        auto_complete_model_config.add_output({"name": "LENGTH", "data_type": "TYPE_INT64", "dims": [1]})
        return auto_complete_model_config

    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            lengths = np.array([[len(t[0])] for t in text], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("LENGTH", lengths)]))
        return responses
'''


async def test_auto_complete_config_declares_the_signature(repo: Path) -> None:
    triton_repo(repo, "length", AUTO_COMPLETE_PBTXT, AUTO_COMPLETE_MODEL)
    async with serve(repo) as server:
        assert server.ports is not None
        async with grpcaio.InferenceServerClient(grpc_url(server.ports)) as client:
            meta = await client.get_model_metadata("length", as_json=True)
            assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("TEXT", "BYTES")]
            assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("LENGTH", "INT64")]
            text = np.array([[b"servegraph"], [b"v2"]], dtype=np.object_)
            tensor = grpcaio.InferInput("TEXT", [2, 1], "BYTES")
            tensor.set_data_from_numpy(text)
            result = await client.infer("length", [tensor])
            np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[10], [2]])
