"""Malformed input below the tensors: URL segments, body encodings, HTTP framing, protobuf
bytes, and bugs behind the non-inference endpoints. Each must answer 4xx ``{"error": str}``
or its gRPC twin (or a logged 500 / INTERNAL for a bug), never a hang, and the server then
still serves (RELIABILITY.md R10).

Covered: version segments that are not decimal numbers (Unicode digits included) on every
endpoint and RPC; a body whose Content-Encoding does not match it; requests the HTTP
parser refuses; protobuf that does not decode, on unary RPCs and on a stream; a bug in a
non-inference handler (INTERNAL naming it, never "not ready"). The HTTP cases run on each
REST transport (``--http-server``).

Left out: tensor-level validation (test_errors.py) and random requests (test_fuzz.py).
"""

from __future__ import annotations

import asyncio
import gzip
import select
import socket
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

import grpc
from servegraph.runtime.config import HttpServer
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.protocol.errors import ModelNotReady
from servegraph.runtime.servers import grpc as grpc_transport
from servegraph.runtime.servers import rest_api
from servegraph.runtime.servers.rest_listeners import open_rest
from tests.conftest import ADD_SUB_ONES, ServerProcess, assert_still_serves, http_request
from tests.runtime.frontend_modes import example_server_in_both_modes, frontend_mode  # noqa: F401  (both modes)

# ------------------------------------------------------------------ version segments

NOT_A_VERSION = {"superscript_two": "%C2%B2", "circled_one": "%E2%91%A0", "arabic_three": "%D9%A3", "word": "latest"}
DECODED = {"%C2%B2": "²", "%E2%91%A0": "①", "%D9%A3": "٣", "latest": "latest"}


@pytest.mark.parametrize("segment", NOT_A_VERSION.values(), ids=NOT_A_VERSION.keys())
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", "/infer"), ("GET", ""), ("GET", "/config"), ("GET", "/stats"), ("GET", "/ready")],
    ids=["infer", "metadata", "config", "stats", "ready"],
)
def test_a_version_that_is_no_number_is_400(
    example_http_server: ServerProcess, segment: str, method: str, suffix: str
) -> None:
    body = orjson.dumps(ADD_SUB_ONES) if method == "POST" else b""
    reply = http_request(example_http_server.http_url, method, f"/v2/models/add_sub/versions/{segment}{suffix}", body)
    assert reply.status == 400, reply
    assert f"version of model 'add_sub' must be a decimal number such as '1', got '{DECODED[segment]}'" in reply.error()


@pytest.mark.parametrize("version", ["²", "①", "٣"])
@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelMetadata", "ModelConfig", "ModelStatistics", "ModelReady"])
def test_a_version_that_is_no_number_is_invalid_argument_over_grpc(
    example_server: ServerProcess, rpc: str, version: str
) -> None:
    request: Any
    if rpc == "ModelInfer":
        request = pb.ModelInferRequest(model_name="add_sub", model_version=version)
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([1.0] * 16)
    else:
        request = getattr(pb, f"{rpc}Request")(name="add_sub", version=version)
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{rpc}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
    error = cast(grpc.Call, info.value)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"got '{version}'" in (error.details() or "")
    assert_still_serves(example_server)


# -------------------------------------------------------------------- body encodings


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize(
    "path", ["/v2/models/add_sub/infer", "/v2/repository/index", "/v2/models/add_sub/feedback"],
    ids=["infer", "index", "feedback"],
)
def test_a_body_not_in_its_content_encoding_is_400(example_http_server: ServerProcess, encoding: str, path: str) -> None:
    reply = http_request(
        example_http_server.http_url, "POST", path, orjson.dumps(ADD_SUB_ONES), {"Content-Encoding": encoding}
    )
    assert reply.status == 400, reply
    assert f"unreadable request body (Content-Encoding: {encoding})" in reply.error()
    assert_still_serves(example_http_server)


RAW_DEFLATE = {"wbits": -zlib.MAX_WBITS}


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: zlib.compress(b, **RAW_DEFLATE))],
    ids=["gzip", "deflate", "raw_deflate"],
)
def test_a_body_in_its_content_encoding_is_read(
    example_http_server: ServerProcess, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    reply = http_request(
        example_http_server.http_url,
        "POST",
        "/v2/models/add_sub/infer",
        compress(orjson.dumps(ADD_SUB_ONES)),
        {"Content-Encoding": encoding},
    )
    assert reply.status == 200, reply


# ------------------------------------------------------------------------ HTTP framing


def _raw_http(address: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as-is and read the whole answer (the server closes after an error)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head, "the connection closed without an answer"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, body


MALFORMED_HTTP = {
    "bad_url_bytes": b"GET /v2/\x01models HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_chunk_size": b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "duplicate_content_length": b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "unknown_method": b"FR\x00B /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "huge_content_length": b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n{}",
    "content_length_not_a_number": b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n{}",
    "header_line_too_long": b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    "url_too_long": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_http_version": b"GET /v2 HTTP/9.x\r\nHost: x\r\n\r\n",
    "huge_content_length_index": b"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n{}",
    "huge_content_length_feedback": b"POST /v2/models/add_sub/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n{}",
    "content_length_past_int64": b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
}  # fmt: skip


@pytest.mark.parametrize("data", MALFORMED_HTTP.values(), ids=MALFORMED_HTTP.keys())
def test_what_the_http_parser_refuses_is_a_json_error(example_http_server: ServerProcess, data: bytes) -> None:
    status, headers, body = _raw_http(example_http_server.http_url, data)
    assert 400 <= status < 500, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    payload = orjson.loads(body)
    assert set(payload) == {"error"} and isinstance(payload["error"], str) and payload["error"], payload
    assert_still_serves(example_http_server)


def test_of_a_repeated_header_the_first_counts(example_http_server: ServerProcess) -> None:
    """Both REST transports read a repeated header alike (the first one, as aiohttp does): a
    bad deadline before a good one is refused on each."""
    body = orjson.dumps(ADD_SUB_ONES)
    request = (
        b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nX-Request-Timeout-Ms: soon\r\nX-Request-Timeout-Ms: 5000\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    status, _, answer = _raw_http(example_http_server.http_url, request)
    assert status == 400, answer
    assert "X-Request-Timeout-Ms must be a number" in orjson.loads(answer)["error"]


def test_a_head_that_never_ends_is_refused_not_buffered(example_http_server: ServerProcess) -> None:
    """A header line that never ends (slowloris-style, 2 MiB and counting) is refused with a
    JSON 400 or a closed connection, never buffered without bound while the client waits."""
    host, port = example_http_server.http_url.rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Long: ")
        try:
            for _ in range(32):  # 64 KiB at a time, until the server answers or hangs up
                sock.sendall(b"a" * 65536)
                if select.select([sock], [], [], 0)[0]:
                    break
            while chunk := sock.recv(65536):  # a server that buffers on never answers: timeout
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up while the client was still sending: refused too
    if answer:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split()[1] == b"400", head
        assert orjson.loads(body)["error"], body
    assert_still_serves(example_http_server)


# ------------------------------------------------------------------------- protobuf

UNDECODABLE = b"\x0a\x03\x76\xff\x63"
"""Field 1 (a model or server name: string) holding bytes that are not UTF-8."""


@pytest.mark.parametrize(
    "rpc", ["ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "RepositoryIndex"]
)
@pytest.mark.parametrize("data", [UNDECODABLE, b"\xff\xff\xff"], ids=["not_utf8", "truncated"])
def test_undecodable_protobuf_is_invalid_argument(example_server: ServerProcess, rpc: str, data: bytes) -> None:
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}")
        with pytest.raises(grpc.RpcError) as info:
            call(data, timeout=30)
    error = cast(grpc.Call, info.value)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "malformed" in (error.details() or "") and "Request message" in (error.details() or "")
    assert_still_serves(example_server)


async def test_a_stream_answers_what_it_read_then_ends_on_an_undecodable_message(
    example_server: ServerProcess,
) -> None:
    valid = pb.ModelInferRequest(model_name="add_sub", id="first")
    for name in ("INPUT0", "INPUT1"):
        valid.inputs.add(name=name, datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([1.0] * 16)

    async def messages() -> Any:
        yield valid.SerializeToString()
        yield UNDECODABLE
        await asyncio.sleep(3600)  # the client keeps its side open: the server must end it

    async with grpc.aio.insecure_channel(example_server.grpc_url) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(messages(), timeout=30)
        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with asyncio.timeout(20):
                async for answer in call:
                    answers.append(pb.ModelStreamInferResponse.FromString(answer))
    assert [(a.error_message, a.infer_response.id) for a in answers] == [("", "first")]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest message" in (info.value.details() or "")
    assert_still_serves(example_server)


def test_undecodable_protobuf_is_invalid_argument_on_a_message_without_fields(example_server: ServerProcess) -> None:
    """ServerLiveRequest has no fields (UNDECODABLE's field 1 would be kept as unknown)."""
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"\xff\xff\xff", timeout=30)
    assert cast(grpc.Call, info.value).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unimplemented_rpcs_stay_unimplemented(example_server: ServerProcess) -> None:
    with grpc.insecure_channel(example_server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryStatus")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=30)
    assert cast(grpc.Call, info.value).code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------- bugs behind other endpoints


class BuggyRepository:
    """A model source whose lookups fail with a bug (not a ServegraphError)."""

    models = {"m": object()}

    def get(self, name: str, version: str = "") -> Any:
        raise RuntimeError("lookup exploded")

    def served_versions(self, name: str) -> list[str]:
        raise RuntimeError("lookup exploded")

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        raise RuntimeError("lookup exploded")

    def triton_config(self, name: str, version: str = "") -> dict[str, Any]:
        raise RuntimeError("lookup exploded")


class NotReadyRepository(BuggyRepository):
    def get(self, name: str, version: str = "") -> Any:
        raise ModelNotReady("model 'm' is loading")


def test_a_bug_in_a_lookup_is_never_a_health_answer() -> None:
    settings: Any = object()
    assert DataPlane(cast(Any, NotReadyRepository()), settings).model_ready("m") is False
    with pytest.raises(RuntimeError, match="lookup exploded"):
        DataPlane(cast(Any, BuggyRepository()), settings).model_ready("m")


async def test_a_bug_in_a_non_inference_endpoint_is_a_logged_500_and_internal(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, http_server: HttpServer
) -> None:
    from types import SimpleNamespace

    dataplane = DataPlane(cast(Any, BuggyRepository()), cast(Any, SimpleNamespace(max_request_bytes=1 << 20)))
    listener = await open_rest(http_server, dataplane, "127.0.0.1", 0)
    http_port = listener.port
    server, grpc_port = grpc_transport.create_server(dataplane, "127.0.0.1:0")
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/v2/models/m", "/v2/models/m/ready", "/v2/models/m/config", "/v2/models/m/stats"):
                async with session.get(f"http://127.0.0.1:{http_port}{path}") as reply:
                    assert reply.status == 500, path
                    assert await reply.json() == {"error": "internal server error: RuntimeError: lookup exploded"}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            for rpc, request in [
                ("ModelMetadata", pb.ModelMetadataRequest(name="m")),
                ("ModelReady", pb.ModelReadyRequest(name="m")),
                ("ModelConfig", pb.ModelConfigRequest(name="m")),
                ("ModelStatistics", pb.ModelStatisticsRequest(name="m")),
                ("RepositoryIndex", pb.RepositoryIndexRequest()),
            ]:
                call = channel.unary_unary(
                    f"/inference.GRPCInferenceService/{rpc}", request_serializer=lambda m: m.SerializeToString()
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(request, timeout=30)
                assert info.value.code() == grpc.StatusCode.INTERNAL, rpc
                assert info.value.details() == "internal server error: RuntimeError: lookup exploded", rpc
    finally:
        await server.stop(grace=1.0)
        await listener.close()
    assert "unexpected error in GET /v2/models/m/config" in caplog.text
    assert "unexpected error in ModelMetadata" in caplog.text


# ------------------------------------------------------- numbers in headers and params


@pytest.mark.parametrize("value", ["٣", "1_0", "²", "--5"])
def test_numbers_in_headers_and_rewards_are_ascii(value: str) -> None:
    """int() and float() read Unicode digits ("٣" as 3) and underscores; the protocol does not."""
    from servegraph.runtime.protocol.errors import InvalidInput
    from servegraph.runtime.protocol.parameters import parse_reward
    from servegraph.runtime.protocol.rest_codec import HEADER_LENGTH

    headers = {HEADER_LENGTH.lower(): value, rest_api.TIMEOUT_HEADER.lower(): value}  # as transports look them up
    with pytest.raises(InvalidInput, match=f"{HEADER_LENGTH} must be an integer"):
        rest_api.integer_header(headers, HEADER_LENGTH)
    if value not in ("1_0", "--5"):  # float("1_0") is 10.0 (ASCII); "--5" is for the integer only
        with pytest.raises(InvalidInput, match="must be a number"):
            rest_api.timeout_header(headers)
        with pytest.raises(InvalidInput, match="reward must be a number"):
            parse_reward(value)
