"""A node calling its child over HTTP/1.1 (``http_channel``): what each answer of a child becomes.

A scripted HTTP child (``RawHttpChild``: a bare asyncio server whose answer bytes a test
sets, recording what it was sent) stands beside a scripted gRPC child that answers the
node's readiness and metadata calls. Covered: binary tensors both ways, with the request id,
parameters, forwarded headers and the deadline (``X-Request-Timeout-Ms``) arriving; answers
framed by Content-Length, chunks and the connection's end; keep-alive connections reused, and
one the child closed while idle replaced without the caller seeing it; a busy child (503 with
``X-Retry-After-Ms`` or ``Retry-After``, 429) passing back 503 with its retry hint and never
marked down; every other status as the node's matching status naming the child; a child that
hangs up mid-answer (503, down), one that answers garbage (500), one that never answers (504
within the caller's deadline). The channel alone (``HttpChannel`` against a ``RawHttpChild``):
a chunked answer in 2,000 packets; bytes past an answer's end, with it or on an idle
connection, retiring the connection; keep-alive kept or ended (``Connection: close``,
HTTP/1.0); 1xx answers skipped; malformed status lines; a head over ``MAX_HEAD_BYTES``.

Left out: real servegraph children over HTTP (every other graph test runs with both child
transports: conftest's ``transport``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import orjson
import pytest

from servegraph.runtime.graph import http_channel
from servegraph.runtime.graph.http_channel import MAX_HEAD_BYTES, HttpChannel, ProtocolViolation, Reply
from servegraph.runtime.server import Server
from tests.conftest import eventually, serve_node
from tests.runtime.graph.helpers import child, graph_node, grpc_client, grpc_input, node_config, rows
from tests.runtime.graph.test_backpressure import ScriptedChild, grpc_error, http_infer


def echo_answer(body: bytes, header_length: int, extra_headers: str = "") -> bytes:
    """A v2 binary answer echoing the request's first input as OUTPUT, framed by Content-Length."""
    header = orjson.loads(body[:header_length])
    tensor = header["inputs"][0]
    answer = orjson.dumps({
        "model_name": "m",
        "model_version": "1",
        "id": header.get("id", ""),
        "parameters": {"seen": "yes"},
        "outputs": [{**tensor, "name": "OUTPUT"}],
    })
    payload = answer + body[header_length:]
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(answer)}\r\n{extra_headers}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def error_answer(status: int, message: str, extra_headers: str = "") -> bytes:
    body = orjson.dumps({"error": message})
    return f"HTTP/1.1 {status} X\r\n{extra_headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


class RawHttpChild:
    """An HTTP/1.1 server that answers each request with what ``answer`` returns for it.

    ``answer(head, body)`` gives the bytes to send (or a list of pieces, each its own write, the
    loop turning between them so that the node reads them apart), or None to hang;
    ``close_after`` closes the connection once they are sent. Every request's head is kept
    (``heads``), every connection counted (``connections``), and ``hung_up`` is set once the
    node drops one.
    """

    def __init__(self) -> None:
        self.heads: list[dict[str, str]] = []
        self.connections = 0
        self.close_after = False
        self.hung_up = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.answer = lambda head, body: echo_answer(body, int(head["inference-header-content-length"]))
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                head = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                head[":request"] = lines[0]
                body = await reader.readexactly(int(head["content-length"]))
                self.heads.append(head)
                reply = self.answer(head, body)
                if reply is None:
                    await asyncio.Event().wait()  # hang until the connection goes
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                else:
                    for piece in reply:
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(0)  # drain() does not yield while the buffer is empty
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
            writer.close()


@pytest.fixture
async def kid() -> AsyncIterator[tuple[ScriptedChild, RawHttpChild]]:
    """The gRPC half (readiness, metadata) and the HTTP half (inference) of one child."""
    grpc_half, http_half = ScriptedChild(), RawHttpChild()
    await grpc_half.server.start()
    await http_half.start()
    try:
        yield grpc_half, http_half
    finally:
        await http_half.stop()
        await grpc_half.server.stop(grace=None)


def router(kid: tuple[ScriptedChild, RawHttpChild], **top: object) -> dict[str, object]:
    grpc_half, http_half = kid
    endpoint = child("kid", address=grpc_half.address, http=http_half.address, model="m")
    return node_config("n", "router", [endpoint], strategy="Weighted", _top={"forward_headers": ["X-Variant"], **top})


async def ready_node(node: Server) -> None:
    await eventually(graph_node(node).is_ready, what="the node to be ready")


async def test_tensors_id_parameters_headers_and_deadline_reach_the_child(kid: tuple[ScriptedChild, RawHttpChild]) -> None:
    grpc_half, http_half = kid
    async with serve_node(router(kid)) as node, grpc_client(node) as client:
        await ready_node(node)
        x = rows(3)
        result = await client.infer(
            "n", [grpc_input(x)], request_id="r-1", parameters={"tag": "blue"}, headers={"x-variant": "b"},
            client_timeout=10,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x)
        response = result.get_response()
        assert response.id == "r-1" and response.parameters["seen"].string_param == "yes"
        head = http_half.heads[-1]
        assert head[":request"] == "POST /v2/models/m/infer HTTP/1.1"
        assert head["x-variant"] == "b"
        assert 0 < float(head["x-request-timeout-ms"]) < 10_000
        assert grpc_half.calls == 0  # inference went over HTTP only
        for _ in range(3):  # one caller at a time: one connection, kept alive
            await client.infer("n", [grpc_input(x)])
        assert http_half.connections == 1


@pytest.mark.parametrize("framing", ["chunked", "until_close"])
async def test_chunked_and_close_framed_answers_are_read(kid: tuple[ScriptedChild, RawHttpChild], framing: str) -> None:
    _, http_half = kid

    def answer(head: dict[str, str], body: bytes) -> bytes:
        whole = echo_answer(body, int(head["inference-header-content-length"]))
        top, _, payload = whole.partition(b"\r\n\r\n")
        top = b"\r\n".join(line for line in top.split(b"\r\n") if not line.startswith(b"Content-Length"))
        if framing == "until_close":
            http_half.close_after = True
            return top + b"\r\n\r\n" + payload
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i : i + 7]), payload[i : i + 7]) for i in range(0, len(payload), 7))
        return top + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    http_half.answer = answer
    async with serve_node(router(kid)) as node, grpc_client(node) as client:
        await ready_node(node)
        for _ in range(2):
            x = rows(2)
            np.testing.assert_array_equal((await client.infer("n", [grpc_input(x)])).as_numpy("OUTPUT"), x)


async def test_a_connection_the_child_closed_while_idle_is_replaced(kid: tuple[ScriptedChild, RawHttpChild]) -> None:
    _, http_half = kid
    async with serve_node(router(kid)) as node, grpc_client(node) as client:
        await ready_node(node)
        x = rows(1)
        await client.infer("n", [grpc_input(x)])
        for writer in http_half.writers:  # the child drops its idle keep-alive connection
            writer.close()
            await writer.wait_closed()
        # Whether or not the node has read the close yet, the next call gets a new connection.
        np.testing.assert_array_equal((await client.infer("n", [grpc_input(x)])).as_numpy("OUTPUT"), x)
        assert http_half.connections == 2


@pytest.mark.parametrize(
    ("headers", "status", "retry_ms"),
    [("X-Retry-After-Ms: 250\r\nRetry-After: 1\r\n", 503, 250), ("Retry-After: 2\r\n", 503, 2000), ("", 429, 1000)],
    ids=["servegraph_hint", "retry_after_seconds", "too_many_requests"],
)
async def test_a_busy_child_is_503_with_its_retry_hint_and_never_down(
    kid: tuple[ScriptedChild, RawHttpChild], headers: str, status: int, retry_ms: int
) -> None:
    _, http_half = kid
    async with serve_node(router(kid)) as node:
        await ready_node(node)
        http_half.answer = lambda head, body: error_answer(status, "queue is full", headers)
        code, answer_headers, body = await http_infer(node)
        assert code == 503 and body["error"] == "child 'kid' of node 'n' is busy: queue is full"
        assert answer_headers["X-Retry-After-Ms"] == str(retry_ms)
        error = await grpc_error(node)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert ("grpc-retry-pushback-ms", str(retry_ms)) in list(error.trailing_metadata() or ())
        assert graph_node(node).child_is_ready("kid")


STATUS_CASES = [
    (503, 503, "is unavailable"),
    (404, 503, "is unavailable"),
    (400, 400, "rejected the request"),
    (403, 403, "refused the request"),
    (413, 413, "ran out of resources"),
    (501, 400, "does not implement the request"),
    (500, 500, "failed (INTERNAL)"),
    (502, 500, "failed (HTTP 502)"),
    (504, 504, "did not answer within the deadline"),
]


@pytest.mark.parametrize(("child_status", "node_status", "words"), STATUS_CASES, ids=[str(c[0]) for c in STATUS_CASES])
async def test_every_child_status_maps_to_the_nodes_matching_status(
    kid: tuple[ScriptedChild, RawHttpChild], child_status: int, node_status: int, words: str
) -> None:
    _, http_half = kid
    async with serve_node(router(kid)) as node:
        await ready_node(node)
        http_half.answer = lambda head, body: error_answer(child_status, "the child's own words")
        status, _, body = await http_infer(node)
        assert status == node_status, body
        assert body["error"].startswith(f"child 'kid' of node 'n' {words}")
        assert body["error"].endswith("the child's own words")
        http_half.answer = lambda head, body: echo_answer(body, int(head["inference-header-content-length"]))
        await eventually(graph_node(node).is_ready, what="the node to be ready again")
        status, _, _ = await http_infer(node)  # and the next good answer gets through
        assert status == 200


async def test_a_child_hanging_up_mid_answer_is_unavailable_and_garbage_is_500(
    kid: tuple[ScriptedChild, RawHttpChild],
) -> None:
    _, http_half = kid
    async with serve_node(router(kid)) as node:
        await ready_node(node)
        http_half.answer = lambda head, body: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
        http_half.close_after = True
        status, _, body = await http_infer(node)
        assert status == 503 and body["error"].startswith("child 'kid' of node 'n' is unavailable"), body
        http_half.close_after = False
        http_half.answer = lambda head, body: b"SPDY/9 what\r\n\r\n"
        await eventually(graph_node(node).is_ready, what="the node to see the child back")
        status, _, body = await http_infer(node)
        assert status == 500 and body["error"].startswith("child 'kid' of node 'n' sent an answer that is not HTTP/1.1"), body


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nxx",  # "²" in latin-1: str.isdigit() says yes
        b"HTTP/1.1 \xb200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",  # misframed
    ],
    ids=["unicode-length", "unicode-status", "negative-chunk", "chunk-overrun"],
)
async def test_a_misframed_answer_is_500_at_once(kid: tuple[ScriptedChild, RawHttpChild], answer: bytes) -> None:
    """Bytes that only look like numbers, or chunks that do not end where they say, are a
    protocol violation answered at once: never a hang until the deadline, never a bare 500."""
    _, http_half = kid
    async with serve_node(router(kid)) as node:
        await ready_node(node)
        http_half.answer = lambda head, body: answer
        status, _, body = await asyncio.wait_for(http_infer(node), 10)
        assert status == 500, body
        assert body["error"].startswith("child 'kid' of node 'n' sent an answer that is not HTTP/1.1"), body


async def test_a_child_that_never_answers_is_named_in_the_nodes_own_504(kid: tuple[ScriptedChild, RawHttpChild]) -> None:
    _, http_half = kid
    async with serve_node(router(kid)) as node:
        await ready_node(node)
        http_half.answer = lambda head, body: None
        error = await grpc_error(node, timeout=1.0)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "child 'kid' of node 'n' did not answer within the deadline" in (error.details() or "")


# ----------------------------------------------------- the channel on its own, against a raw child
@pytest.fixture
async def raw() -> AsyncIterator[RawHttpChild]:
    """A scripted HTTP child alone, for ``HttpChannel`` without a node around it."""
    server = RawHttpChild()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def channel(raw: RawHttpChild) -> AsyncIterator[HttpChannel]:
    channel = HttpChannel(raw.address)
    try:
        yield channel
    finally:
        channel.close()


def plain(body: bytes, version: str = "1.1", extra_headers: str = "") -> bytes:
    """An answer framed by Content-Length."""
    return f"HTTP/{version} 200 OK\r\n{extra_headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def post(channel: HttpChannel) -> Reply:
    """One small POST, bounded so that a hang fails the test rather than stalling it."""
    return await asyncio.wait_for(channel.post("/v2/models/m/infer", {}, [b"hello"]), 10)


async def test_a_chunked_answer_in_2000_packets_arrives_whole(
    raw: RawHttpChild, channel: HttpChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk is its own write and packet: every piece is read as it comes, and nothing
    is left over for the next answer."""
    packets = 0
    data_received = http_channel._Connection.data_received

    def counting(self: http_channel._Connection, data: bytes) -> None:
        nonlocal packets
        packets += 1
        data_received(self, data)

    monkeypatch.setattr(http_channel._Connection, "data_received", counting)
    payload = bytes(range(256)) * 40
    chunks, at = [], 0
    while at < len(payload):  # sizes 1-9: some chunk-size lines straddle packet boundaries
        size = 1 + len(chunks) % 9
        chunks.append(payload[at : at + size])
        at += size
    assert len(chunks) >= 2000
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    pieces += [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks]
    pieces.append(b"0\r\n\r\n")
    raw.answer = lambda head, body: pieces
    reply = await post(channel)
    assert reply.status == 200 and reply.body == payload
    assert packets > 1000  # the answer really came in pieces
    raw.answer = lambda head, body: plain(b"next")
    assert (await post(channel)).body == b"next"
    assert raw.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        plain(b"ok") + plain(b"stale"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nstale",
        plain(b"ok", extra_headers="Connection: close\r\n") + b"stale",
    ],
    ids=["content-length", "chunked", "connection-close"],
)
async def test_bytes_past_the_end_of_an_answer_fail_the_call_and_retire_the_connection(
    raw: RawHttpChild, channel: HttpChannel, answer: bytes
) -> None:
    """Kept, the extra bytes would be read as the next request's answer."""
    raw.answer = lambda head, body: answer  # one write: the extra bytes come with the answer
    with pytest.raises(ProtocolViolation, match="bytes past the end of the answer"):
        await post(channel)
    raw.answer = lambda head, body: plain(b"fresh")
    assert (await post(channel)).body == b"fresh"
    assert raw.connections == 2


async def test_bytes_on_an_idle_connection_retire_it(raw: RawHttpChild, channel: HttpChannel) -> None:
    """Bytes after an answer already handed back leave that answer alone, but the connection
    holding them is closed, never used for the next request."""
    raw.answer = lambda head, body: plain(b"ok")
    assert (await post(channel)).body == b"ok"
    raw.writers[0].write(plain(b"stale"))  # an answer to no request
    await asyncio.wait_for(raw.hung_up.wait(), 10)
    assert (await post(channel)).body == b"ok"
    assert raw.connections == 2


@pytest.mark.parametrize(
    ("version", "headers", "kept"),
    [
        ("1.1", "", True),
        ("1.0", "Connection: keep-alive\r\n", True),
        ("1.1", "Connection: close\r\n", False),
        ("1.0", "", False),
    ],
    ids=["http1.1", "http1.0-keep-alive", "connection-close", "http1.0"],
)
async def test_a_connection_serves_the_next_call_only_if_its_answer_kept_it_alive(
    raw: RawHttpChild, channel: HttpChannel, version: str, headers: str, kept: bool
) -> None:
    """A keep-alive answer leaves its connection for the next call; one that ends keep-alive
    closes it, though the child keeps the socket open here."""
    raw.answer = lambda head, body: plain(b"ok", version, headers)
    for _ in range(3):
        assert (await post(channel)).body == b"ok"
    assert raw.connections == (1 if kept else 3)


@pytest.mark.parametrize("writes", ["one", "several"])
async def test_informational_answers_are_skipped_for_the_real_one(
    raw: RawHttpChild, channel: HttpChannel, writes: str
) -> None:
    pieces = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </hint>\r\n\r\n",
        plain(b"ok", extra_headers="X-Answer: real\r\n"),
    ]
    raw.answer = lambda head, body: pieces if writes == "several" else b"".join(pieces)
    reply = await post(channel)
    assert reply.status == 200 and reply.body == b"ok"
    assert reply.headers["x-answer"] == "real" and "link" not in reply.headers
    assert (await post(channel)).body == b"ok"
    assert raw.connections == 1


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 20 OK", b"HTTP/1.1 200OK", b"HTTP/1.1", b"HTTP/2.0 200 OK", b"ICY 200 OK", b"HTTP/1.1 OK 200"],
)
async def test_a_malformed_status_line_is_a_protocol_violation(
    raw: RawHttpChild, channel: HttpChannel, status_line: bytes
) -> None:
    raw.answer = lambda head, body: status_line + b"\r\nContent-Length: 2\r\n\r\nok"
    with pytest.raises(ProtocolViolation):
        await post(channel)
    await asyncio.wait_for(raw.hung_up.wait(), 10)  # and the connection is dropped


@pytest.mark.parametrize("writes", ["one", "many"])
async def test_a_head_over_the_limit_is_a_protocol_violation(
    raw: RawHttpChild, channel: HttpChannel, writes: str
) -> None:
    """Whole in one packet, or a header that never ends in many: llhttp would buffer that
    one whole before telling of it, so the packets are counted too."""
    whole = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 2\r\n\r\nok"
    endless = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2 * MAX_HEAD_BYTES
    pieces = [endless[i : i + 1024] for i in range(0, len(endless), 1024)]
    raw.answer = lambda head, body: whole if writes == "one" else pieces
    with pytest.raises(ProtocolViolation, match=f"answer head over {MAX_HEAD_BYTES} bytes"):
        await post(channel)

TENSORS = {
    "FP32": np.arange(8, dtype=np.float32).reshape(2, 4),
    "FP16": np.array([[0.5, -2.0]], dtype=np.float16),
    "INT64": np.array([[1], [-(2**40)]], dtype=np.int64),
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.zeros((0, 3), dtype=np.uint8),
    "BYTES": np.array([[b"a", b""], [b"\xff\x00", b"long" * 10]], dtype=np.object_),
}


@pytest.mark.parametrize("datatype", list(TENSORS))
def test_the_client_codec_round_trips_through_the_servers(datatype: str) -> None:
    """What a node writes, the server's decoder reads; what the server writes, the node reads."""
    from servegraph.runtime.protocol import rest_codec
    from servegraph.runtime.protocol.types import InferResponse

    x = TENSORS[datatype]
    strided = np.asfortranarray(x) if x.ndim == 2 and x.dtype != np.object_ else x  # not C-contiguous
    parts, length = rest_codec.encode_request({"X": strided}, {"X": datatype}, "id-1", {"p": 1.5})
    request = rest_codec.decode_request(b"".join(parts), length, "m", "")
    np.testing.assert_array_equal(request.inputs["X"], x)
    assert request.id == "id-1" and request.parameters["p"] == 1.5 and request.binary_output_default
    response = InferResponse("m", "1", {"Y": request.inputs["X"]}, {"Y": datatype}, id="id-1", parameters={"q": "r"})
    body, header_length = rest_codec.encode_response(response, request)
    outputs, datatypes, parameters, answer_id = rest_codec.decode_response(body, header_length, "child 'c'")
    np.testing.assert_array_equal(outputs["Y"], x)
    assert outputs["Y"].shape == x.shape and datatypes == {"Y": datatype}
    assert parameters == {"q": "r"} and answer_id == "id-1"
    if datatype == "BYTES":
        return  # JSON carries text only: b"\xff" would not survive it
    json_request = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}'
    json_body, none = rest_codec.encode_response(response, rest_codec.decode_request(json_request, None, "m", ""))
    assert none is None  # an answer in JSON (a child that ignores binary_data_output) reads too
    np.testing.assert_array_equal(rest_codec.decode_response(json_body, None, "child 'c'")[0]["Y"], x)
