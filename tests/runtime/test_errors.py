"""Error paths over real HTTP and gRPC: every bad request gets the status of its error class
and a message naming the model, the tensor, and expected vs actual; then a small valid
request must still succeed (RELIABILITY.md R1, R4, R5, R9, R10; Triton's
``L0_input_validation`` and ``L0_large_payload``).

Covered, table-driven: unknown model and version; signature mismatches (datatype, rank,
dims, batch size, missing, extra or duplicate input, unknown output); the JSON and binary
REST encodings (malformed bodies, ``Inference-Header-Content-Length``, Σ binary_data_size
against the tail, byte sizes, element counts, out-of-range values, BF16, negative and
overflowing dims); gRPC raw and typed contents; body limits (413 before parsing,
RESOURCE_EXHAUSTED); a model that raises or returns the wrong row count, alone, inside a
batch, and on a stream; JSON ``{"error": str}`` on every HTTP error route; ERROR_TABLE
through the real REST app and gRPC servicer, and live on a real server for every class
one can reach. Every HTTP case runs on each REST transport (``--http-server``).

Left out: ``Unsupported`` live (nothing raises it yet; its mapping is still checked);
randomised requests (test_fuzz.py); queueing and deadlines beyond one live case each
(test_batching.py); draining on SIGTERM (test_shutdown.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, NamedTuple, cast

import aiohttp
import brotli
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

import grpc
from servegraph.runtime.config import HttpServer
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol.errors import (
    ERROR_TABLE,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    ServegraphError,
    ShuttingDown,
    Unsupported,
)
from servegraph.runtime.protocol.rest_codec import HEADER_LENGTH
from servegraph.runtime.protocol.types import InferRequest, InferResponse
from servegraph.runtime.server import Ports
from servegraph.runtime.servers import grpc as grpc_transport
from servegraph.runtime.servers import rest_api
from servegraph.runtime.servers.rest_listeners import open_rest
from tests.conftest import (
    ADD_SUB_ONES,
    DOUBLES,
    Gate,
    ServerProcess,
    add_model,
    assert_still_serves,
    eventually,
    fp32_model_config,
    grpc_url,
    http_request,
    http_url,
    serve,
)
from tests.runtime.frontend_modes import example_server_in_both_modes, frontend_mode  # noqa: F401  (both modes)

Json = dict[str, Any]

ADD_SUB = "/v2/models/add_sub/infer"
TEXT_LENGTH = "/v2/models/text_length/infer"
ZEROS = [0.0] * 16
ROW = bytes(64)  # one [1, 16] FP32 row
HUGE = 1 << 40
V0 = {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": ZEROS}
V1 = {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": ZEROS}


# ---------------------------------------------------------------- HTTP, raw bodies


class HttpCase(NamedTuple):
    body: bytes
    headers: dict[str, str]
    messages: tuple[str, ...]
    status: int = 400
    path: str = ADD_SUB


def tensor(name: str, shape: list[int], data: Any = None, datatype: str = "FP32", binary: int | None = None) -> Json:
    """One input of a REST request: JSON ``data``, or a ``binary_data_size`` into the tail."""
    entry: Json = {"name": name, "datatype": datatype, "shape": shape}
    if binary is not None:
        entry["parameters"] = {"binary_data_size": binary}
    elif data is not None:
        entry["data"] = data
    return entry


def json_case(inputs: list[Json], *messages: str, status: int = 400, path: str = ADD_SUB, **extra: Any) -> HttpCase:
    return HttpCase(json.dumps({"inputs": inputs, **extra}).encode(), {}, messages, status, path)


def raw_case(body: bytes, *messages: str, headers: dict[str, str] | None = None) -> HttpCase:
    return HttpCase(body, headers or {}, messages)


def binary_case(
    inputs: list[Json], tail: bytes, *messages: str, header_length: str | None = None, path: str = ADD_SUB
) -> HttpCase:
    """Binary extension: JSON header, then ``tail``; the header length is right unless given."""
    header = json.dumps({"inputs": inputs}).encode()
    length = str(len(header)) if header_length is None else header_length
    return HttpCase(header + tail, {HEADER_LENGTH: length}, messages, 400, path)


BINARY_PAIR = [tensor("INPUT0", [1, 16], binary=64), tensor("INPUT1", [1, 16], binary=64)]
BINARY_PAIR_BODY_LENGTH = len(json.dumps({"inputs": BINARY_PAIR}).encode()) + 128

HTTP_CASES: dict[str, HttpCase] = {
    # -- which model
    "unknown_model": json_case([V0, V1], "unknown model: 'nope'", status=404, path="/v2/models/nope/infer"),
    "unknown_version": json_case(
        [V0, V1], "unknown version '7' of model 'add_sub'; available: [1]",
        status=404, path="/v2/models/add_sub/versions/7/infer",
    ),
    "non_numeric_version": json_case(  # Triton: 400, "failed to get model version"
        [V0, V1], "version of model 'add_sub' must be a decimal number such as '1', got 'latest'",
        path="/v2/models/add_sub/versions/latest/infer",
    ),
    "unicode_digit_version": json_case(  # str.isdigit is true for '²', int() refuses it
        [V0, V1], "version of model 'add_sub' must be a decimal number such as '1', got '²'",
        path="/v2/models/add_sub/versions/%C2%B2/infer",
    ),
    "circled_digit_version": json_case(
        [V0, V1], "got '①'", path="/v2/models/add_sub/versions/%E2%91%A0/infer",
    ),
    # -- the model's signature
    "wrong_datatype": json_case(
        [tensor("INPUT0", [1, 16], [0] * 16, "INT32"), V1],
        "inference input 'INPUT0' for model 'add_sub' has datatype INT32, expected FP32",
    ),
    "wrong_rank": json_case(
        [tensor("INPUT0", [16], ZEROS), V1],
        "unexpected shape for input 'INPUT0' for model 'add_sub': expected [-1, 16], got [16]",
    ),
    "wrong_dim": json_case(
        [tensor("INPUT0", [1, 15], ZEROS[:15]), V1],
        "unexpected shape for input 'INPUT0' for model 'add_sub': expected [-1, 16], got [1, 15]",
    ),
    "batch_over_max": json_case(
        [tensor("INPUT0", [9, 16], ZEROS * 9), tensor("INPUT1", [9, 16], ZEROS * 9)],
        "inference request batch-size must be <= 8 for model 'add_sub', got 9 for input 'INPUT0'",
    ),
    "batch_sizes_disagree": json_case(
        [V0, tensor("INPUT1", [2, 16], ZEROS * 2)],
        "inputs of model 'add_sub' disagree on the batch size: 'INPUT1' has 2, others 1",
    ),
    "empty_batch": json_case(
        [tensor("INPUT0", [0, 16], []), tensor("INPUT1", [0, 16], [])],
        "input 'INPUT0' for model 'add_sub' has an empty batch",
    ),
    "missing_input": json_case([V0], "expected input 'INPUT1' for model 'add_sub' is missing"),
    "extra_input": json_case(
        [V0, V1, tensor("INPUT2", [1, 16], ZEROS)],
        "unexpected inference input 'INPUT2' for model 'add_sub'; expected inputs ['INPUT0', 'INPUT1']",
    ),
    "duplicate_input": json_case([V0, V0, V1], "input 'INPUT0' for model 'add_sub' appears twice"),
    "unknown_output": json_case(
        [V0, V1], "unexpected inference output 'OUTPUT9' for model 'add_sub'; outputs are ['OUTPUT0', 'OUTPUT1']",
        outputs=[{"name": "OUTPUT9"}],
    ),
    # -- datatypes and shapes on the wire
    "unsupported_datatype": json_case(
        [tensor("INPUT0", [1, 16], ZEROS, "BF16"), V1],
        "unsupported datatype 'BF16' of input 'INPUT0' for model 'add_sub'; expected one of BOOL,",
    ),
    "negative_dim": json_case(
        [tensor("INPUT0", [-1, 16], ZEROS), V1],
        "input 'INPUT0' for model 'add_sub' needs a 'shape' list of non-negative integers, got [-1, 16]",
    ),
    "huge_dims_json": json_case(
        [tensor("INPUT0", [HUGE, HUGE], []), V1],
        f"shape [{HUGE}, {HUGE}] of input 'INPUT0' for model 'add_sub' is too large: over {HUGE} elements",
    ),
    "huge_dims_around_a_zero": json_case(
        [tensor("INPUT0", [0, HUGE, HUGE], []), V1],
        f"shape [0, {HUGE}, {HUGE}] of input 'INPUT0' for model 'add_sub' is too large: over {HUGE} elements",
    ),
    "huge_dims_binary": binary_case(
        [tensor("INPUT0", [HUGE, HUGE], binary=0), V1], b"",
        f"shape [{HUGE}, {HUGE}] of input 'INPUT0' for model 'add_sub' is too large",
    ),
    # -- JSON data
    "json_element_count": json_case(
        [tensor("INPUT0", [1, 16], ZEROS[:15]), V1],
        "input 'INPUT0' for model 'add_sub' has 15 elements in 'data', expected 16 for shape [1, 16]",
    ),
    "json_int_out_of_range": json_case(
        [tensor("INPUT0", [1, 16], [300] * 16, "INT8"), V1],
        "data of input 'INPUT0' for model 'add_sub' does not fit datatype INT8",
    ),
    "json_uint_negative": json_case(
        [tensor("INPUT0", [1, 16], [-1] * 16, "UINT8"), V1],
        "data of input 'INPUT0' for model 'add_sub' does not fit datatype UINT8",
    ),
    "json_fp16_overflow": json_case(
        [tensor("INPUT0", [1, 16], [1e10] * 16, "FP16"), V1],
        "data of input 'INPUT0' for model 'add_sub' does not fit datatype FP16",
    ),
    "json_not_numbers": json_case(
        [tensor("INPUT0", [1, 16], ["x"] * 16), V1],
        "data of input 'INPUT0' for model 'add_sub' does not fit datatype FP32",
    ),
    "json_ragged": json_case(
        [tensor("INPUT0", [1, 16], [[0.0], [0.0, 0.0]]), V1],
        "data of input 'INPUT0' for model 'add_sub' does not fit datatype FP32",
    ),
    "json_bytes_not_strings": json_case(
        [tensor("TEXT", [1, 1], [5], "BYTES")],
        "BYTES input 'TEXT' for model 'text_length' holds a int; expected strings", path=TEXT_LENGTH,
    ),
    "no_data": json_case(
        [tensor("INPUT0", [1, 16]), V1], "input 'INPUT0' for model 'add_sub' has neither 'data' nor binary_data_size"
    ),
    # -- the body itself
    "malformed_json": raw_case(b'{"inputs": [', "malformed JSON in request body"),
    "non_object_body": raw_case(b"[1, 2]", "request body must be a JSON object"),
    "missing_inputs": raw_case(b"{}", "request needs a non-empty 'inputs' list"),
    "empty_inputs": raw_case(b'{"inputs": []}', "request needs a non-empty 'inputs' list"),
    "input_not_object": raw_case(b'{"inputs": [1]}', "each input must be an object"),
    "timeout_header_not_number": raw_case(
        json.dumps(ADD_SUB_ONES).encode(), "X-Request-Timeout-Ms must be a number, got 'soon'",
        headers={"X-Request-Timeout-Ms": "soon"},
    ),
    "timeout_header_negative": raw_case(
        json.dumps(ADD_SUB_ONES).encode(), "X-Request-Timeout-Ms must be a finite, non-negative number, got '-5'",
        headers={"X-Request-Timeout-Ms": "-5"},
    ),
    "timeout_header_nan": raw_case(
        json.dumps(ADD_SUB_ONES).encode(), "X-Request-Timeout-Ms must be a finite, non-negative number, got 'nan'",
        headers={"X-Request-Timeout-Ms": "nan"},
    ),
    "timeout_parameter": json_case(
        [V0, V1], "parameter 'timeout' must be a non-negative integer of microseconds, got 'soon'",
        parameters={"timeout": "soon"},
    ),
    # -- binary extension
    "binary_byte_size": binary_case(
        [tensor("INPUT0", [1, 16], binary=60), tensor("INPUT1", [1, 16], binary=64)], ROW[:60] + ROW,
        "input byte size mismatch for input 'INPUT0' for model 'add_sub': "
        "expected 64 bytes for shape [1, 16] of FP32, got 60",
    ),
    "header_length_not_integer": binary_case(
        BINARY_PAIR, ROW * 2, "Inference-Header-Content-Length must be an integer, got 'abc'", header_length="abc"
    ),
    "header_length_past_body": binary_case(
        BINARY_PAIR, ROW * 2,
        f"Inference-Header-Content-Length is 100000 but the body has only {BINARY_PAIR_BODY_LENGTH} bytes",
        header_length="100000",
    ),
    "header_length_negative": binary_case(
        BINARY_PAIR, ROW * 2, "Inference-Header-Content-Length must not be negative, got -1", header_length="-1"
    ),
    "header_length_cuts_json": binary_case(
        BINARY_PAIR, ROW * 2, "malformed JSON in request body",
        header_length=str(BINARY_PAIR_BODY_LENGTH - 128 - 1),
    ),
    "binary_tail_longer_than_sizes": binary_case(
        BINARY_PAIR, ROW * 2 + b"xxxx",
        "binary data for model 'add_sub' is 132 bytes but the inputs' binary_data_size add up to 128",
    ),
    "binary_tail_shorter_than_sizes": binary_case(
        BINARY_PAIR, ROW + ROW[:60],
        "input 'INPUT1' for model 'add_sub' declares binary_data_size 64 but only 60 bytes of binary data remain",
    ),
    "binary_size_negative": binary_case(
        [tensor("INPUT0", [1, 16], binary=-3), tensor("INPUT1", [1, 16], binary=64)], ROW,
        "binary_data_size of input 'INPUT0' for model 'add_sub' must be a non-negative integer, got -3",
    ),
    "bytes_count_past_data": binary_case(
        [tensor("TEXT", [1 << 39, 1], datatype="BYTES", binary=0)], b"",
        "BYTES input 'TEXT' for model 'text_length' is truncated: "
        "expected at least 2199023255552 bytes for 549755813888 elements, got 0",
        path=TEXT_LENGTH,
    ),
    "bytes_element_past_data": binary_case(
        [tensor("TEXT", [1, 1], datatype="BYTES", binary=6)], b"\x05\x00\x00\x00ab",
        "BYTES input 'TEXT' for model 'text_length' element 0 runs past the end of the data",
        path=TEXT_LENGTH,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", HTTP_CASES.values(), ids=HTTP_CASES.keys())
def test_http_rejects_bad_requests(example_http_server: ServerProcess, case: HttpCase) -> None:
    reply = http_request(example_http_server.http_url, "POST", case.path, case.body, case.headers)
    assert reply.status == case.status, reply
    message = reply.error()
    for expected in case.messages:
        assert expected in message
    assert_still_serves(example_http_server)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/v2/models/nope", b"", 404, "unknown model: 'nope'"),
        ("GET", "/v2/models/nope/ready", b"", 404, "unknown model: 'nope'"),
        ("GET", "/v2/models/add_sub/versions/9/config", b"", 404, "unknown version '9' of model 'add_sub'"),
        ("GET", "/v2/models/nope/stats", b"", 404, "unknown model: 'nope'"),
        ("POST", "/v2/repository/index", b"{", 400, "malformed JSON in request body"),
        ("POST", "/v2/repository/models/mlp/load", b"", 403, "model control is disabled"),
        ("GET", "/v2/no/such/route", b"", 404, "Not Found: GET /v2/no/such/route"),
        ("GET", ADD_SUB, b"", 405, "Method Not Allowed: GET /v2/models/add_sub/infer"),
    ],
    ids=["metadata", "ready", "config", "stats", "index", "model_control", "no_route", "wrong_method"],
)
def test_every_http_error_is_a_json_error_object(
    example_http_server: ServerProcess, method: str, path: str, body: bytes, status: int, message: str
) -> None:
    """Not only inference: aiohttp's own 404 and 405 are ``{"error": str}`` too (R10)."""
    reply = http_request(example_http_server.http_url, method, path, body)
    assert reply.status == status, reply
    assert message in reply.error()
    assert_still_serves(example_http_server)


# ----------------------------------------------------------------- gRPC, raw stub


class GrpcCase(NamedTuple):
    request: Any  # pb.ModelInferRequest
    messages: tuple[str, ...]
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


def grpc_request(
    *inputs: tuple[str, str, list[int]],
    raw: list[bytes] | None = None,
    model: str = "add_sub",
    version: str = "",
    outputs: tuple[str, ...] = (),
) -> Any:
    """A hand-built ModelInferRequest: (name, datatype, shape) per input, raw contents if given."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    for name in outputs:
        request.outputs.add(name=name)
    return request


def typed(request: Any, field: str, *values: list[Any]) -> Any:
    """Fill ``contents.<field>`` of each input in turn (typed contents instead of raw)."""
    for tensor_, data in zip(request.inputs, values):
        getattr(tensor_.contents, field).extend(data)
    return request


def grpc_case(request: Any, *messages: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> GrpcCase:
    return GrpcCase(request, messages, code)


PAIR = (("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [1, 16]))

GRPC_CASES: dict[str, GrpcCase] = {
    "unknown_model": grpc_case(
        grpc_request(*PAIR, raw=[ROW, ROW], model="nope"), "unknown model: 'nope'", code=grpc.StatusCode.NOT_FOUND
    ),
    "unknown_version": grpc_case(
        grpc_request(*PAIR, raw=[ROW, ROW], version="7"), "unknown version '7' of model 'add_sub'",
        code=grpc.StatusCode.NOT_FOUND,
    ),
    "no_model_name": grpc_case(grpc_request(*PAIR, raw=[ROW, ROW], model=""), "model_name is required"),
    "no_inputs": grpc_case(grpc_request(), "request for model 'add_sub' has no inputs"),
    "wrong_datatype": grpc_case(
        grpc_request(("INPUT0", "INT32", [1, 16]), PAIR[1], raw=[ROW, ROW]),
        "inference input 'INPUT0' for model 'add_sub' has datatype INT32, expected FP32",
    ),
    "wrong_rank": grpc_case(
        grpc_request(("INPUT0", "FP32", [16]), PAIR[1], raw=[ROW, ROW]),
        "unexpected shape for input 'INPUT0' for model 'add_sub': expected [-1, 16], got [16]",
    ),
    "batch_over_max": grpc_case(
        grpc_request(("INPUT0", "FP32", [9, 16]), ("INPUT1", "FP32", [9, 16]), raw=[ROW * 9, ROW * 9]),
        "inference request batch-size must be <= 8 for model 'add_sub', got 9 for input 'INPUT0'",
    ),
    "missing_input": grpc_case(
        grpc_request(PAIR[0], raw=[ROW]), "expected input 'INPUT1' for model 'add_sub' is missing"
    ),
    "extra_input": grpc_case(
        grpc_request(*PAIR, ("INPUT2", "FP32", [1, 16]), raw=[ROW] * 3),
        "unexpected inference input 'INPUT2' for model 'add_sub'",
    ),
    "duplicate_input": grpc_case(
        grpc_request(PAIR[0], PAIR[0], raw=[ROW, ROW]), "input 'INPUT0' for model 'add_sub' appears twice"
    ),
    "unknown_output": grpc_case(
        grpc_request(*PAIR, raw=[ROW, ROW], outputs=("OUTPUT9",)),
        "unexpected inference output 'OUTPUT9' for model 'add_sub'",
    ),
    "raw_byte_size": grpc_case(
        grpc_request(*PAIR, raw=[ROW[:60], ROW]),
        "input byte size mismatch for input 'INPUT0' for model 'add_sub': "
        "expected 64 bytes for shape [1, 16] of FP32, got 60",
    ),
    "raw_contents_count": grpc_case(
        grpc_request(*PAIR, raw=[ROW]), "request for model 'add_sub' has 2 inputs but 1 raw_input_contents"
    ),
    "typed_contents_count": grpc_case(
        typed(grpc_request(*PAIR), "fp32_contents", ZEROS[:15], ZEROS),
        "input 'INPUT0' for model 'add_sub' has 15 elements in contents.fp32_contents, "
        "expected 16 for shape [1, 16]",
    ),
    "typed_contents_wrong_field": grpc_case(
        typed(grpc_request(*PAIR), "int_contents", [0] * 16, [0] * 16),
        "input 'INPUT0' for model 'add_sub' has 0 elements in contents.fp32_contents, expected 16",
    ),
    "typed_contents_out_of_range": grpc_case(
        typed(grpc_request(("INPUT0", "INT8", [1, 16]), PAIR[1]), "int_contents", [300] * 16),
        "contents.int_contents of input 'INPUT0' for model 'add_sub' do not fit datatype INT8",
    ),
    "typed_contents_fp16": grpc_case(
        grpc_request(("INPUT0", "FP16", [1, 16]), PAIR[1]),
        "input 'INPUT0' for model 'add_sub' of datatype FP16 must be sent in raw_input_contents",
    ),
    "unsupported_datatype": grpc_case(
        grpc_request(("INPUT0", "BF16", [1, 16]), PAIR[1], raw=[ROW[:32], ROW]),
        "unsupported datatype 'BF16' of input 'INPUT0' for model 'add_sub'",
    ),
    "negative_dim": grpc_case(
        grpc_request(("INPUT0", "FP32", [-1, 16]), PAIR[1], raw=[ROW, ROW]),
        "input 'INPUT0' for model 'add_sub' has a negative dimension in shape [-1, 16]",
    ),
    "huge_dims": grpc_case(
        grpc_request(("INPUT0", "FP32", [1 << 62, 1 << 62]), PAIR[1], raw=[b"", ROW]),
        f"shape [{1 << 62}, {1 << 62}] of input 'INPUT0' for model 'add_sub' is too large: over {HUGE} elements",
    ),
    "huge_dims_around_a_zero": grpc_case(
        grpc_request(("INPUT0", "FP32", [0, 1 << 62]), PAIR[1], raw=[b"", ROW]),
        f"shape [0, {1 << 62}] of input 'INPUT0' for model 'add_sub' is too large",
    ),
    "bytes_count_past_data": grpc_case(
        grpc_request(("TEXT", "BYTES", [1 << 39, 1]), raw=[b""], model="text_length"),
        "BYTES input 'TEXT' for model 'text_length' is truncated: expected at least 2199023255552 bytes",
    ),
}  # fmt: skip


def _timeout_parameter_case() -> GrpcCase:
    request = grpc_request(*PAIR, raw=[ROW, ROW])
    request.parameters["timeout"].string_param = "soon"
    return grpc_case(request, "parameter 'timeout' must be a non-negative integer of microseconds, got 'soon'")


GRPC_CASES["timeout_parameter"] = _timeout_parameter_case()


@pytest.mark.parametrize("case", GRPC_CASES.values(), ids=GRPC_CASES.keys())
def test_grpc_rejects_bad_requests(example_server: ServerProcess, case: GrpcCase) -> None:
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(case.request, timeout=30)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == case.code, error.details()
    for expected in case.messages:
        assert expected in (error.details() or "")
    assert_still_serves(example_server)


# ----------------------------------------------------- tritonclient, both transports


class ClientCase(NamedTuple):
    model: str
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    message: str
    version: str = ""
    outputs: tuple[str, ...] = ()
    not_found: bool = False


CLIENT_PAIR = (("INPUT0", "FP32", (1, 16)), ("INPUT1", "FP32", (1, 16)))

CLIENT_CASES: dict[str, ClientCase] = {
    "unknown_model": ClientCase("nope", CLIENT_PAIR, "unknown model: 'nope'", not_found=True),
    "unknown_version": ClientCase(
        "add_sub", CLIENT_PAIR, "unknown version '7' of model 'add_sub'", version="7", not_found=True
    ),
    "wrong_datatype": ClientCase(
        "add_sub", (("INPUT0", "INT32", (1, 16)), CLIENT_PAIR[1]),
        "inference input 'INPUT0' for model 'add_sub' has datatype INT32, expected FP32",
    ),
    "wrong_rank": ClientCase(
        "add_sub", (("INPUT0", "FP32", (16,)), CLIENT_PAIR[1]),
        "unexpected shape for input 'INPUT0' for model 'add_sub': expected [-1, 16], got [16]",
    ),
    "wrong_dim": ClientCase(
        "add_sub", (("INPUT0", "FP32", (1, 15)), CLIENT_PAIR[1]),
        "unexpected shape for input 'INPUT0' for model 'add_sub': expected [-1, 16], got [1, 15]",
    ),
    "batch_over_max": ClientCase(
        "add_sub", (("INPUT0", "FP32", (9, 16)), ("INPUT1", "FP32", (9, 16))),
        "inference request batch-size must be <= 8 for model 'add_sub', got 9 for input 'INPUT0'",
    ),
    "missing_input": ClientCase(
        "add_sub", CLIENT_PAIR[:1], "expected input 'INPUT1' for model 'add_sub' is missing"
    ),
    "extra_input": ClientCase(
        "add_sub", (*CLIENT_PAIR, ("INPUT2", "FP32", (1, 16))), "unexpected inference input 'INPUT2' for model 'add_sub'"
    ),
    "unknown_output": ClientCase(
        "add_sub", CLIENT_PAIR, "unexpected inference output 'OUTPUT9' for model 'add_sub'", outputs=("OUTPUT9",)
    ),
    "bytes_for_fp32": ClientCase(
        "add_sub", (("INPUT0", "BYTES", (1, 16)), CLIENT_PAIR[1]),
        "inference input 'INPUT0' for model 'add_sub' has datatype BYTES, expected FP32",
    ),
}  # fmt: skip


def client_inputs(module: ModuleType, specs: tuple[tuple[str, str, tuple[int, ...]], ...]) -> list[Any]:
    """tritonclient InferInputs of zeros (or b"0" strings), consistent on the client side."""
    inputs = []
    for name, datatype, shape in specs:
        if datatype == "BYTES":
            data = np.full(shape, b"0", dtype=np.object_)
        else:
            data = np.zeros(shape, dtype=triton_to_np_dtype(datatype))
        inp = module.InferInput(name, list(shape), datatype)
        inp.set_data_from_numpy(data)
        inputs.append(inp)
    return inputs


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("case", CLIENT_CASES.values(), ids=CLIENT_CASES.keys())
def test_tritonclient_sees_the_error(example_http_server: ServerProcess, transport: str, case: ClientCase) -> None:
    """What a Triton user sees: the status and message through tritonclient's exception."""
    module: ModuleType = httpclient if transport == "http" else grpcclient
    url = example_http_server.http_url if transport == "http" else example_http_server.grpc_url
    client = module.InferenceServerClient(url)
    try:
        outputs = [module.InferRequestedOutput(name) for name in case.outputs] or None
        with pytest.raises(InferenceServerException) as info:
            client.infer(case.model, client_inputs(module, case.inputs), model_version=case.version, outputs=outputs)
    finally:
        client.close()
    expected = {
        ("http", False): "400",
        ("http", True): "404",
        ("grpc", False): "StatusCode.INVALID_ARGUMENT",
        ("grpc", True): "StatusCode.NOT_FOUND",
    }[transport, case.not_found]
    assert info.value.status() == expected
    assert case.message in info.value.message()
    assert_still_serves(example_http_server)


# ------------------------------------------------------------ the error table itself

DOCUMENTED_TABLE: dict[type[ServegraphError], tuple[int, grpc.StatusCode]] = {
    ServegraphError: (500, grpc.StatusCode.INTERNAL),
    PermissionDenied: (403, grpc.StatusCode.PERMISSION_DENIED),
    InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
    ModelNotReady: (503, grpc.StatusCode.UNAVAILABLE),
    QueueFull: (503, grpc.StatusCode.UNAVAILABLE),
    ShuttingDown: (503, grpc.StatusCode.UNAVAILABLE),
    DeadlineExceeded: (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    PayloadTooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ModelError: (500, grpc.StatusCode.INTERNAL),
    Unsupported: (400, grpc.StatusCode.UNIMPLEMENTED),
}
"""STYLE.md "Errors", pinned: changing a pair is a protocol change and must change this too.
Any other class (a graph node's child errors, say) answers with the pair of its base here."""


def _all_subclasses(cls: type[ServegraphError]) -> set[type[ServegraphError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def _documented_base(cls: type[ServegraphError]) -> type[ServegraphError]:
    return next(base for base in cls.__mro__ if base in DOCUMENTED_TABLE)


def test_error_table_is_the_documented_one() -> None:
    for cls, (http_status, grpc_code) in DOCUMENTED_TABLE.items():
        assert ERROR_TABLE[cls] == (http_status, grpc_code.name), cls
    for cls, (http_status, code) in ERROR_TABLE.items():
        assert (http_status, grpc.StatusCode[code]) == DOCUMENTED_TABLE[_documented_base(cls)], cls


def _sample(cls: type[ServegraphError]) -> ServegraphError:
    message = f"{cls.__name__} for model 'm'"
    return cls(message, retry_after=0.25) if issubclass(cls, QueueFull) else cls(message)  # type: ignore[call-arg]


class RaisingDataPlane:
    """Stands in for DataPlane: inference raises ``error`` (or answers when it is None), so
    every class goes through the real REST app and gRPC servicer, including those no real
    model can trigger on demand."""

    def __init__(self, error: ServegraphError | None) -> None:
        self.error = error
        self.settings = SimpleNamespace(max_request_bytes=1 << 20)

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.error is not None:
            raise self.error
        return InferResponse(
            request.model_name, "1", {"OUTPUT": np.zeros((1, 1), np.float32)}, {"OUTPUT": "FP32"}
        )


EVERY_ERROR_CLASS = sorted(_all_subclasses(ServegraphError) | {ServegraphError}, key=lambda cls: cls.__name__)
"""Every class a caller may see, found by walking subclasses (not read from ERROR_TABLE), so a
class without a row, or a row the transports ignore, fails below."""


@pytest.mark.parametrize("cls", EVERY_ERROR_CLASS, ids=lambda cls: cls.__name__)
async def test_rest_and_grpc_answer_with_the_table(cls: type[ServegraphError], http_server: HttpServer) -> None:
    """Each class through the real REST app (on each HTTP server) and gRPC servicer answers
    its documented pair."""
    assert cls in ERROR_TABLE, f"{cls.__name__} has no row in ERROR_TABLE"
    http_status, grpc_code = DOCUMENTED_TABLE[_documented_base(cls)]
    error = _sample(cls)
    reply = rest_api.error_reply(error)
    assert reply.status == http_status
    assert orjson.loads(reply.body) == {"error": error.message}

    dataplane = RaisingDataPlane(error)
    listener = await open_rest(http_server, cast(DataPlane, dataplane), "127.0.0.1", 0)
    http_port = listener.port
    grpc_server, grpc_port = grpc_transport.create_server(cast(DataPlane, dataplane), "127.0.0.1:0")
    await grpc_server.start()
    infer_url = f"http://127.0.0.1:{http_port}/v2/models/m/infer"
    request = grpc_request(*PAIR, raw=[ROW, ROW], model="m")
    try:
        async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            async with session.post(infer_url, json=ADD_SUB_ONES) as reply:
                assert reply.status == http_status
                assert await reply.json() == {"error": error.message}
                if isinstance(error, QueueFull):
                    assert reply.headers["Retry-After"] == "1"
                    assert reply.headers["X-Retry-After-Ms"] == "250"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request, timeout=30)
            assert info.value.code() == grpc_code
            assert info.value.details() == error.message
            if isinstance(error, QueueFull):
                assert ("grpc-retry-pushback-ms", "250") in list(info.value.trailing_metadata() or ())

            dataplane.error = None  # and then a valid request still succeeds
            async with session.post(infer_url, json=ADD_SUB_ONES) as reply:
                assert reply.status == 200
            assert (await stub.ModelInfer(request, timeout=30)).model_name == "m"
    finally:
        await grpc_server.stop(grace=1.0)  # as Server.stop does; nothing is in flight by now
        await listener.close()


# ------------------------------------------------- in-process servers: live classes

FAULTY_CONFIG = fp32_model_config(
    max_batch_size=8,
    warmup=False,  # warm-up feeds random normals, and negative values are poison to faulty.py
    dynamic_batching={"max_queue_delay_microseconds": 100, "scheduler": "fixed_delay"},
)

GATED_FAULTY = '''
"""faulty.py behind gated.py's gate, so the test decides when (and with whom) a batch runs."""
import os
import time

import numpy as np


class GatedFaulty:
    def predict(self, inputs):
        x = inputs["INPUT"]
        params = self.config.parameters
        with open(params["entered"], "a") as marker:
            marker.write(f"{x.shape[0]} {x[:, 0].tolist()}\\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(params["gate"]) and time.monotonic() < deadline:
            time.sleep(0.002)  # a blocked model, not test synchronisation
        if (x[:, 0] < 0).any():
            raise ValueError("negative inputs are poison")
        if (x[:, 0] == 999).any():
            return {"OUTPUT": (x * 2)[:-1]}
        return {"OUTPUT": x * 2}
'''


def faulty_repo(repo: Path) -> Path:
    add_model(repo, "faulty", FAULTY_CONFIG, DOUBLES / "faulty.py")
    return repo


def gated_repo(repo: Path, tmp_path: Path, **batching: Any) -> Gate:
    """faulty (for the follow-up request) plus a gated faulty model named "gated"."""
    gate = Gate(tmp_path)
    config = fp32_model_config(
        max_batch_size=8,
        warmup=False,
        parameters=gate.parameters(),
        dynamic_batching={"max_queue_delay_microseconds": 100, "scheduler": "fixed_delay", **batching},
    )
    add_model(faulty_repo(repo), "gated", config, GATED_FAULTY)
    return gate


def _rows(*first_values: float) -> np.ndarray:
    """One [1, 4] row per value, the value repeated (faulty.py looks at column 0)."""
    return np.repeat(np.asarray(first_values, np.float32)[:, None], 4, axis=1)


async def _infer(
    client: Any, module: ModuleType, model: str, x: np.ndarray, **options: Any
) -> Any:
    inp = module.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return await client.infer(model, [inp], **options)


class Clients:
    """One tritonclient aio client per transport against an in-process server."""

    def __init__(self, ports: Ports) -> None:
        self.http = httpaio.InferenceServerClient(http_url(ports))
        self.grpc = grpcaio.InferenceServerClient(grpc_url(ports))

    def pick(self, transport: str) -> tuple[Any, ModuleType]:
        return (self.http, httpaio) if transport == "http" else (self.grpc, grpcaio)

    async def close(self) -> None:
        await self.http.close()
        await self.grpc.close()


STATUS = {
    "http": {400: "400", 413: "413", 500: "500", 503: "503", 504: "504"},
    "grpc": {
        400: "StatusCode.INVALID_ARGUMENT",
        500: "StatusCode.INTERNAL",
        503: "StatusCode.UNAVAILABLE",
        504: "StatusCode.DEADLINE_EXCEEDED",
    },
}
"""tritonclient's ``status()`` string for an HTTP status, per transport."""


def assert_failed(result: Any, transport: str, http_status: int, *messages: str) -> None:
    assert isinstance(result, InferenceServerException), result
    assert result.status() == STATUS[transport][http_status], result
    for message in messages:
        assert message in (result.message() or "")


async def assert_still_serves_async(ports: Ports) -> None:
    """The faulty model answers a valid request over both transports (end of every negative test)."""
    clients = Clients(ports)
    try:
        x = _rows(1, 2)
        for transport in ("http", "grpc"):
            client, module = clients.pick(transport)
            result = await asyncio.wait_for(_infer(client, module, "faulty", x), 30)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), 2 * x)
    finally:
        await clients.close()


async def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except InferenceServerException as exc:
        return exc


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_model_exception_is_500_with_the_models_message(repo: Path, transport: str, http_server: HttpServer) -> None:
    async with serve(faulty_repo(repo), http_server=http_server) as server:
        clients = Clients(server.ports)
        try:
            client, module = clients.pick(transport)
            result = await _outcome(lambda: _infer(client, module, "faulty", _rows(-1)))
        finally:
            await clients.close()
        assert_failed(
            result, transport, 500, "model 'faulty' version 1 failed: ValueError: negative inputs are poison"
        )
        await assert_still_serves_async(server.ports)


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_wrong_row_count_is_500_naming_the_output(repo: Path, transport: str, http_server: HttpServer) -> None:
    async with serve(faulty_repo(repo), http_server=http_server) as server:
        clients = Clients(server.ports)
        try:
            client, module = clients.pick(transport)
            result = await _outcome(lambda: _infer(client, module, "faulty", _rows(999, 1)))
        finally:
            await clients.close()
        assert_failed(
            result, transport, 500, "model 'faulty' returned 1 rows for output 'OUTPUT' but was given a batch of 2"
        )
        await assert_still_serves_async(server.ports)


async def test_stream_reports_the_model_error_and_goes_on(repo: Path) -> None:
    """On ModelStreamInfer an error is one message on the stream, not the end of it."""
    async with serve(faulty_repo(repo)) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i, value in enumerate((1.0, -1.0, 2.0)):
                    inp = grpcaio.InferInput("INPUT", [1, 4], "FP32")
                    inp.set_data_from_numpy(_rows(value))
                    yield {"model_name": "faulty", "inputs": [inp], "request_id": f"s{i}"}

            answers: dict[str, Any] = {}
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    answers["error"] = error.message()
                else:
                    answers[result.get_response().id] = result.as_numpy("OUTPUT")[0, 0]
        finally:
            await client.close()
        assert answers == {
            "s0": 2.0,
            "s2": 4.0,
            "error": "model 'faulty' version 1 failed: ValueError: negative inputs are poison",
        }
        await assert_still_serves_async(server.ports)


async def test_poison_requests_fail_alone_in_a_batch(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    """A batch holding a raising and a wrong-row-count request is retried request by request:
    those two get 500 with their own message, every valid neighbour gets its answer (R4, R5)."""
    gate = gated_repo(repo, tmp_path)
    values = [1.0, -1.0, 2.0, 999.0, 3.0, 4.0]
    transports = ["http", "grpc"] * 3
    async with serve(repo, http_server=http_server) as server:
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        clients = Clients(server.ports)
        try:
            blocker = asyncio.ensure_future(_infer(clients.grpc, grpcaio, "gated", _rows(0)))
            await eventually(lambda: len(gate.entered()) == 1, what="the blocking batch to start")
            calls = [
                asyncio.ensure_future(_outcome(lambda c=clients.pick(t), v=v: _infer(*c, "gated", _rows(v))))
                for t, v in zip(transports, values)
            ]
            await eventually(lambda: batcher.depth == len(values), what="every request queued")
            gate.open()
            first, *results = await asyncio.gather(blocker, *calls)
        finally:
            await clients.close()
        np.testing.assert_array_equal(first.as_numpy("OUTPUT"), _rows(0))
        for transport, value, result in zip(transports, values, results):
            if value == -1:
                assert_failed(result, transport, 500, "ValueError: negative inputs are poison")
            elif value == 999:
                assert_failed(
                    result, transport, 500,
                    "model 'gated' returned 0 rows for output 'OUTPUT' but was given a batch of 1",
                )  # fmt: skip
            else:
                np.testing.assert_array_equal(result.as_numpy("OUTPUT"), 2 * _rows(value))
        entered = gate.entered()
        rows, batch = entered[1]  # arrival order across two transports is the loop's business
        assert (rows, sorted(batch)) == (len(values), sorted(values)), "the requests did not share one batch"
        assert sorted(v for rows, batch in entered[2:] for v in batch) == sorted(values)
        assert all(rows == 1 for rows, _ in entered[2:])
        await assert_still_serves_async(server.ports)


async def test_body_over_the_limit_is_413_before_parsing(repo: Path, http_server: HttpServer) -> None:
    async with serve(faulty_repo(repo), max_request_bytes=4096, http_server=http_server) as server:
        url = f"http://{http_url(server.ports)}/v2/models/faulty/infer"
        async with aiohttp.ClientSession() as session:
            # Not even JSON: a 413 rather than a 400 shows the size is checked before parsing.
            async with session.post(url, data=b"{" * 5000) as reply:
                assert reply.status == 413
                assert await reply.json() == {"error": "request body of 5000 bytes is over the 4096-byte limit"}

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"{" * 1000

            # Chunked, so no Content-Length to check up front: the limit applies while reading.
            async with session.post(url, data=chunks()) as reply:
                assert reply.status == 413
                assert "over the 4096-byte limit" in (await reply.json())["error"]
            # Small on the wire, over the limit once decoded: the limit holds for what is read.
            bomb = gzip.compress(b"{" * 5000)
            async with session.post(url, data=bomb, headers={"Content-Encoding": "gzip"}) as reply:
                assert reply.status == 413
                assert "over the 4096-byte limit" in (await reply.json())["error"]
            # 48 KB of brotli that would decode to 256 MiB: refused without decoding it all.
            brotli_bomb = brotli.compress(b"{" * (256 << 20), quality=1)
            tracemalloc.start()
            try:
                async with session.post(url, data=brotli_bomb, headers={"Content-Encoding": "br"}) as reply:
                    assert reply.status == 413
                    assert "over the 4096-byte limit" in (await reply.json())["error"]
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 32 << 20, f"decoding the bomb took {peak >> 20} MiB"
            # At the limit exactly, the body is read and parsed (and is malformed): 400, not 413.
            async with session.post(url, data=b"{" * 4096) as reply:
                assert reply.status == 400
                assert "malformed JSON in request body" in (await reply.json())["error"]
        await assert_still_serves_async(server.ports)


async def test_grpc_message_over_the_limit_is_resource_exhausted(repo: Path) -> None:
    async with serve(faulty_repo(repo), max_request_bytes=4096) as server:
        request = grpc_request(("INPUT", "FP32", [1, 2048]), raw=[bytes(8192)], model="faulty")
        async with grpc.aio.insecure_channel(grpc_url(server.ports)) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4096" in (info.value.details() or "")
        await assert_still_serves_async(server.ports)


async def test_model_not_ready_is_503_live(repo: Path, http_server: HttpServer) -> None:
    add_model(faulty_repo(repo), "broken", fp32_model_config(), DOUBLES / "broken.py")
    async with serve(repo, http_server=http_server) as server:
        clients = Clients(server.ports)
        try:
            for transport in ("http", "grpc"):
                client, module = clients.pick(transport)
                result = await _outcome(lambda: _infer(client, module, "broken", _rows(1)))
                assert_failed(result, transport, 503, "model 'broken' has no ready version", "weights are corrupt")
        finally:
            await clients.close()
        await assert_still_serves_async(server.ports)


async def test_queue_full_is_503_live(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    gate = gated_repo(repo, tmp_path, max_queue_size=1)
    async with serve(repo, http_server=http_server) as server:
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        clients = Clients(server.ports)
        try:
            running = asyncio.ensure_future(_infer(clients.grpc, grpcaio, "gated", _rows(0)))
            await eventually(lambda: len(gate.entered()) == 1, what="the blocking batch to start")
            queued = asyncio.ensure_future(_infer(clients.grpc, grpcaio, "gated", _rows(1)))
            await eventually(lambda: batcher.depth == 1, what="the queue to fill")
            for transport in ("http", "grpc"):
                client, module = clients.pick(transport)
                result = await _outcome(lambda: _infer(client, module, "gated", _rows(2)))
                assert_failed(result, transport, 503, "queue for model 'gated' version 1 is full (1 requests)")
            gate.open()
            for call, value in ((running, 0), (queued, 1)):
                np.testing.assert_array_equal((await call).as_numpy("OUTPUT"), 2 * _rows(value))
        finally:
            await clients.close()
        await assert_still_serves_async(server.ports)


async def test_deadline_in_the_queue_is_504_live(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    """X-Request-Timeout-Ms over HTTP, the ``timeout`` parameter (µs) over gRPC; neither runs."""
    gate = gated_repo(repo, tmp_path)
    async with serve(repo, http_server=http_server) as server:
        clients = Clients(server.ports)
        try:
            running = asyncio.ensure_future(_infer(clients.grpc, grpcaio, "gated", _rows(0)))
            await eventually(lambda: len(gate.entered()) == 1, what="the blocking batch to start")
            late_http = await _outcome(
                lambda: _infer(clients.http, httpaio, "gated", _rows(5), headers={"X-Request-Timeout-Ms": "1"})
            )
            late_grpc = await _outcome(lambda: _infer(clients.grpc, grpcaio, "gated", _rows(6), timeout=1000))
            gate.open()
            await running
        finally:
            await clients.close()
        for transport, result in (("http", late_http), ("grpc", late_grpc)):
            assert_failed(result, transport, 504, "request for model 'gated' timed out after", "it was not run")
        assert [batch for _, batch in gate.entered()] == [[0.0]]
        await assert_still_serves_async(server.ports)


async def test_shutting_down_is_503_live(repo: Path, http_server: HttpServer) -> None:
    async with serve(faulty_repo(repo), http_server=http_server) as server:
        clients = Clients(server.ports)
        try:
            server.dataplane.draining = True  # what SIGTERM sets; test_shutdown.py covers the rest
            for transport in ("http", "grpc"):
                client, module = clients.pick(transport)
                result = await _outcome(lambda: _infer(client, module, "faulty", _rows(1)))
                assert_failed(result, transport, 503, "server is shutting down and accepts no new requests")
            server.dataplane.draining = False
        finally:
            await clients.close()
        await assert_still_serves_async(server.ports)
