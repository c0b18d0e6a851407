"""Fuzzing the wire formats of a live server (RELIABILITY.md R10; Triton's ``L0_http_fuzz``).

Hypothesis sends the session's ``servegraph serve`` subprocess about 500 REST bodies:
valid requests with a few mutations (dropped keys, swapped values, wrong datatypes,
out-of-range values, bad shapes, cut or padded binary tails, wrong
``Inference-Header-Content-Length``), requests drawn field by field from the OIP schema,
and plain random JSON and bytes; then about 200 mutated and random gRPC
``ModelInferRequest``s. Every answer must be 200 or a 4xx with a JSON ``{"error": str}``
body (OK, INVALID_ARGUMENT or NOT_FOUND over gRPC): never a 5xx, never a hang. Untouched
requests must get 200, and afterwards a valid request must still succeed. One server for
all of it, sync clients: a few seconds in all.

Left out: random bytes into text_length's BYTES tensors as valid length-prefixed
elements. Invalid UTF-8 makes that example model raise, which is a model failure and a
500 by design (STYLE.md "Errors"), not a protocol bug. Also left out: request-level
timeouts (a 504 is the right answer to those) and body limits (test_errors.py).
"""

from __future__ import annotations

import copy
import json
import struct
from collections import Counter
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from servegraph.runtime.protocol.rest_codec import HEADER_LENGTH
from tests.conftest import ServerProcess, assert_still_serves, http_request

Json = Any
Request = tuple[str, bytes, dict[str, str], bool]
"""(URL path, body, headers, whether it is a valid request that must get 200)."""

HTTP_EXAMPLES = 500
GRPC_EXAMPLES = 200


def _fp32(name: str, rows: int, width: int, value: float = 0.5) -> Json:
    return {"name": name, "datatype": "FP32", "shape": [rows, width], "data": [value] * (rows * width)}


def _binary(name: str, datatype: str, shape: list[int], blob: bytes) -> tuple[Json, bytes]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}, blob


def _bytes_blob(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _valid_requests() -> list[tuple[str, Json, bytes]]:
    """(model, JSON header, binary tail) for requests the example models accept."""
    a, blob_a = _binary("INPUT0", "FP32", [2, 16], bytes(128))
    b, blob_b = _binary("INPUT1", "FP32", [2, 16], bytes(128))
    x, blob_x = _binary("X", "FP32", [3, 4], bytes(48))
    t, blob_t = _binary("TEXT", "BYTES", [2, 1], _bytes_blob(b"abc", "ü".encode()))
    return [
        ("add_sub", {"inputs": [_fp32("INPUT0", 1, 16), _fp32("INPUT1", 1, 16)]}, b""),
        ("add_sub", {"inputs": [a, b], "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}]},
         blob_a + blob_b),
        ("add_sub", {"id": "r", "inputs": [a, _fp32("INPUT1", 2, 16)], "parameters": {"binary_data_output": True}},
         blob_a),
        ("scale_onnx", {"inputs": [x]}, blob_x),
        ("mlp", {"inputs": [_fp32("INPUT", 1, 512)]}, b""),
        ("text_length", {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "bé"]}]},
         b""),
        ("text_length", {"inputs": [t], "outputs": [{"name": "UPPER"}]}, blob_t),
    ]  # fmt: skip


VALID = _valid_requests()
MODELS = ["add_sub", "scale_onnx", "mlp", "text_length", "nope"]
KEYS = ["inputs", "outputs", "name", "datatype", "shape", "data", "parameters", "binary_data_size",
        "binary_data_output", "binary_data", "id"]  # fmt: skip
DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "BF16", "", "fp32"]
INTERESTING: list[Json] = [
    None, True, 0, -1, 1, 7, 8, 9, 2**31, 2**40, 2**63 - 1, 2**64, -(2**63), 1.5, float("nan"), 1e300,
    "", "x", "FP32", "BF16", [], [0], [-1, 16], [1 << 40, 1 << 40], {}, {"binary_data_size": 3},
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities become invalid JSON: a malformed-body case
    | st.text(max_size=8)
    | st.sampled_from(DATATYPES)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


def _paths(value: Json, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON document a mutation may hit."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:4]):  # not every element of a 512-long data list
            found += _paths(child, (*prefix, index))
    return found


def _parent(document: Json, path: tuple[Any, ...]) -> Json:
    for step in path[:-1]:
        document = document[step]
    return document


@st.composite
def mutated_requests(draw: st.DrawFn) -> Request:
    model, original, original_tail = draw(st.sampled_from(VALID))
    header, tail = copy.deepcopy(original), original_tail
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(header)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(header, path)
        action = draw(st.sampled_from(["delete", "replace", "interesting", "duplicate", "retype", "refill"]))
        inputs = header.get("inputs")
        if action in ("retype", "refill") and isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            # Schema-aware: a wrong datatype for the data, or values out of the datatype's range.
            target = draw(st.sampled_from(inputs))
            if not isinstance(target, dict):
                continue
            if action == "retype":
                target["datatype"] = draw(st.sampled_from(DATATYPES))
            elif isinstance(target.get("data"), list) and target["data"]:
                target["data"] = [draw(numbers)] + target["data"][1:]
        elif action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "interesting":
            parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(INTERESTING)))  # never share them
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
    if tail and model != "text_length":  # see the module docstring
        cut = draw(st.integers(0, len(tail)))
        tail = draw(st.sampled_from([tail, tail[:cut], tail + draw(st.binary(max_size=16)), draw(st.binary())]))
    body = json.dumps(header).encode()
    headers: dict[str, str] = {}
    length = len(body)
    if tail or draw(st.booleans()):
        length_text = draw(
            st.sampled_from([str(length), str(length - 1), str(length + 1), "0", "-1", str(length + len(tail) + 1)])
            | header_text
        )
        headers[HEADER_LENGTH] = length_text
    version = draw(st.sampled_from(["", "", "/versions/1", "/versions/2", "/versions/x"]))
    # Conservative: only an untouched request is sure to be valid (NaN != NaN keeps it so).
    valid = (
        header == original
        and tail == original_tail
        and headers.get(HEADER_LENGTH, str(length)) == str(length)
        and version in ("", "/versions/1")
    )
    return f"/v2/models/{model}{version}/infer", body + tail, headers, valid


ITEMSIZE = {"FP32": 4, "FP16": 2, "FP64": 8, "INT8": 1, "INT32": 4, "INT64": 8, "UINT8": 1, "UINT64": 8, "BOOL": 1}
NAMES = ["INPUT0", "INPUT1", "INPUT", "X", "TEXT", "", "extra"]
dims = st.integers(-2, 20) | st.sampled_from([1 << 40, 2**63 - 1, 2**64, -(2**63)])
numbers = (
    st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([127, 128, 255, 256, -129, 2**31, 2**63, 1e5, 65504.0, 65520.0, 1e39])
    | st.booleans()
)


@st.composite
def schema_requests(draw: st.DrawFn) -> Request:
    """Requests shaped like the OIP schema, with every field drawn from near and far off the
    values the models accept: names, datatypes, dims, element counts, byte sizes, values."""
    model = draw(st.sampled_from(MODELS))
    inputs: list[Json] = []
    tail = b""
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(dims, max_size=3))
        datatype = draw(st.sampled_from(DATATYPES))
        count = 1
        for dim in shape:
            count *= dim
        if not 0 <= count <= 64 or any(d < 0 for d in shape):
            count = draw(st.integers(0, 8))
        count += draw(st.sampled_from([0, 0, 0, -1, 1]))
        entry: Json = {"name": draw(st.sampled_from(NAMES)), "datatype": datatype, "shape": shape}
        if draw(st.booleans()):
            if datatype == "BYTES":  # valid UTF-8 only: see the module docstring
                blob = _bytes_blob(*(t.encode() for t in draw(st.lists(st.text(max_size=4), max_size=max(count, 0)))))
            else:
                size = max(count, 0) * ITEMSIZE.get(datatype, 4) + draw(st.sampled_from([0, 0, -1, 1, 3]))
                blob = draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
            declared = len(blob) + draw(st.sampled_from([0, 0, 0, -1, 1, -len(blob) - 1]))
            entry["parameters"] = {"binary_data_size": declared}
            tail += blob
        elif datatype == "BYTES":
            entry["data"] = draw(st.lists(st.text(max_size=4) | numbers, min_size=max(count, 0), max_size=max(count, 0)))
        else:
            entry["data"] = draw(st.lists(numbers, min_size=max(count, 0), max_size=max(count, 0)))
        inputs.append(entry)
    header: Json = {"inputs": inputs}
    if draw(st.booleans()):
        header["outputs"] = [{"name": n} for n in draw(st.lists(st.sampled_from(["OUTPUT0", "Y", "LENGTH", "no"])))]
    body = json.dumps(header).encode()
    headers = {HEADER_LENGTH: str(len(body))} if tail or draw(st.booleans()) else {}
    return f"/v2/models/{model}/infer", body + tail, headers, False


@st.composite
def random_requests(draw: st.DrawFn) -> Request:
    """Anything at all: JSON of any shape, raw bytes, with or without a binary header length."""
    model = draw(st.sampled_from(MODELS))
    kind = draw(st.sampled_from(["json", "inputs", "bytes"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "inputs":
        body = json.dumps({"inputs": draw(st.lists(json_values, max_size=3))}).encode()
    else:
        body = draw(st.binary(max_size=256))
    headers = {}
    if draw(st.booleans()):
        tail = draw(st.binary(max_size=64))
        headers[HEADER_LENGTH] = draw(st.sampled_from([str(len(body))]) | header_text)
        body += tail
    return f"/v2/models/{model}/infer", body, headers, False


def _check_http(server: ServerProcess, request: Request) -> int:
    path, body, headers, valid = request
    reply = http_request(server.http_url, "POST", path, body, headers)
    if valid:
        assert reply.status == 200, reply
    assert reply.status == 200 or 400 <= reply.status < 500, reply
    if reply.status != 200:
        reply.error()  # exactly {"error": str}, as JSON
    return reply.status


def test_http_fuzz_never_5xx(example_http_server: ServerProcess) -> None:
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=HTTP_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=mutated_requests() | schema_requests() | random_requests())
    def check(request: Request) -> None:
        statuses[_check_http(example_http_server, request)] += 1

    check()
    # Not vacuous: some requests got through to a model, most were turned away.
    assert statuses[200] > 0 and statuses[400] > 0, statuses
    assert_still_serves(example_http_server)


# ----------------------------------------------------------------------------- gRPC

tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(NAMES),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.lists(st.integers(-2, 20) | st.sampled_from([1 << 40, 2**63 - 1, -(2**63)]), max_size=4),
        "raw": st.binary(max_size=160),
        "ints": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),
        "floats": st.lists(st.floats(width=32), max_size=40),
    }
)


@st.composite
def random_grpc_requests(draw: st.DrawFn) -> Any:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["add_sub", "scale_onnx", "mlp", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2", "x"])),
    )
    use_raw = draw(st.booleans())
    specs = draw(st.lists(tensors, max_size=3))
    for spec in specs:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        if use_raw:
            request.raw_input_contents.append(spec["raw"])
        else:
            tensor.contents.int_contents.extend(spec["ints"])
            tensor.contents.fp32_contents.extend(spec["floats"])
    if use_raw and specs and draw(st.booleans()):
        request.raw_input_contents.append(b"")  # one blob too many
    for name in draw(st.lists(st.sampled_from(["OUTPUT0", "OUTPUT1", "Y", "OUTPUT", "nope"]), max_size=2)):
        request.outputs.add(name=name)
    return request


TYPED_FIELDS = {
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BOOL": "bool_contents",
}  # fmt: skip
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bool_contents": st.booleans(),
}
"""What each typed-contents field can carry on the wire: wider than INT8 or UINT16 can hold."""


@st.composite
def mutated_grpc_requests(draw: st.DrawFn) -> Any:
    """A valid add_sub request (raw or typed contents), then up to three mutations."""
    rows = draw(st.integers(1, 3))
    raw = draw(st.booleans())
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[rows, 16])
        if raw:
            request.raw_input_contents.append(bytes(64 * rows))
        else:
            tensor.contents.fp32_contents.extend([0.5] * (16 * rows))
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs[draw(st.integers(0, len(request.inputs) - 1))] if request.inputs else None
        mutation = draw(st.sampled_from(
            ["model", "version", "datatype", "retype", "shape", "name", "contents", "drop_input", "drop_raw", "output"]
        ))  # fmt: skip
        if mutation == "model":
            request.model_name = draw(st.sampled_from(["nope", "", "mlp", "scale_onnx", "text_length"]))
        elif mutation == "version":
            request.model_version = draw(st.sampled_from(["1", "2", "x", "-1"]))
        elif mutation == "output":
            request.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "OUTPUT1", "Y", ""])))
        elif mutation == "drop_raw" and request.raw_input_contents:
            del request.raw_input_contents[-1]
        elif tensor is None:
            continue
        elif mutation == "datatype":
            tensor.datatype = draw(st.sampled_from(DATATYPES))
        elif mutation == "retype" and not raw and all(0 <= d <= 64 for d in tensor.shape):
            # Another datatype with the right element count, so the values themselves are tested.
            tensor.datatype = draw(st.sampled_from(sorted(TYPED_FIELDS)))
            field = TYPED_FIELDS[tensor.datatype]
            count = int(np.prod(list(tensor.shape), dtype=np.int64))
            tensor.contents.Clear()
            getattr(tensor.contents, field).extend(draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count)))
        elif mutation == "shape":
            tensor.shape[:] = draw(st.lists(dims.filter(lambda d: -(2**63) <= d < 2**63), max_size=4))
        elif mutation == "name":
            tensor.name = draw(st.sampled_from(NAMES))
        elif mutation == "drop_input":
            del request.inputs[-1]
        elif raw and request.raw_input_contents:
            index = draw(st.integers(0, len(request.raw_input_contents) - 1))
            request.raw_input_contents[index] = draw(st.binary(max_size=200))
        else:
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=4)))
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=4)))
    return request


ACCEPTABLE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
"""The caller's fault, and nothing else: no INTERNAL, UNKNOWN or UNAVAILABLE."""


def test_grpc_fuzz_never_internal(example_server: ServerProcess) -> None:
    codes: Counter[grpc.StatusCode] = Counter()
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        @settings(max_examples=GRPC_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(request=mutated_grpc_requests() | random_grpc_requests())
        def check(request: Any) -> None:
            try:
                stub.ModelInfer(request, timeout=30)
            except grpc.RpcError as error:
                assert isinstance(error, grpc.Call)
                assert error.code() in ACCEPTABLE_CODES, (error.code(), error.details())
                assert error.details()
                codes[error.code()] += 1
            else:
                codes[grpc.StatusCode.OK] += 1

        check()
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.INVALID_ARGUMENT] > 0, codes
    assert_still_serves(example_server)
