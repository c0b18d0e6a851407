"""Triton python-backend models (``TritonPythonModel`` on ``triton_python_backend_utils``)
served unchanged from a Triton repository (config.pbtxt), called with tritonclient."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from servegraph.runtime.backends import triton_compat
from tests.conftest import ROOT, grpc_url, http_url, serve

TRITON_EXAMPLES = ROOT / "examples" / "triton"
ADD_SUB_PBTXT = (TRITON_EXAMPLES / "add_sub" / "config.pbtxt").read_text()


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


async def test_a_triton_add_sub_model_serves_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    """examples/triton as it is: Triton's args reach initialize, concurrent answers are exact,
    finalize runs on unload."""
    caplog.set_level(logging.INFO, logger=triton_compat.log.name)
    rng = np.random.default_rng(0)
    async with serve(TRITON_EXAMPLES) as server:
        assert server.ports is not None
        assert "add_sub version 1 initialized on CPU; OUTPUT0 dims [4], max_batch_size 8" in caplog.messages
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
            assert meta["platform"] == "python"
        assert "add_sub finalized" not in caplog.messages
    assert "add_sub finalized" in caplog.messages, "finalize() runs when the model unloads"


async def test_an_error_response_reaches_only_its_caller() -> None:
    async with serve(TRITON_EXAMPLES) as server:
        assert server.ports is not None
        async with grpcaio.InferenceServerClient(grpc_url(server.ports)) as grpc, \
                httpaio.InferenceServerClient(http_url(server.ports)) as http:
            good = np.ones((2, 4), np.float32)
            bad = np.full((2, 4), np.nan, np.float32)

            async def expect_error(client: object, module: object) -> str:
                with pytest.raises(InferenceServerException) as info:
                    await client.infer("add_sub", pair(bad, good, module))  # type: ignore[attr-defined]
                assert "INPUT0 and INPUT1 must be finite" in info.value.message()
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
