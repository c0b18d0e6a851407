"""Raw HTTP/2 against servegraph's own gRPC server (servers/http2.py under servers/grpc_h2.py).

tritonclient and grpcio only ever send well-formed traffic (test_grpc_protocol.py covers it);
here a small client built on ``hyperframe`` (frames) and ``hpack`` (header blocks) sends what
a hostile or unusual peer sends, frame by frame, and checks the answers RFC 9113 and gRPC's
HTTP/2 protocol (PROTOCOL-HTTP2.md) call for: the connection preface, PING, CONTINUATION
floods and HPACK bombs, rapid reset, the stream limit, stream and connection flow control,
malformed request headers and trailers, frames in flight on a stream the server reset,
message size limits, unknown methods, non-gRPC requests, bad ``grpc-timeout`` and
``grpc-encoding`` headers, and frames on streams where they must not be.

No sleeps: "the server sent nothing more" is checked with a PING whose ACK comes back after
everything the server had written before it read the PING (``H2.barrier``). Every read has
a deadline (``TIMEOUT``), so a server that does not answer or does not close fails the test.

Left out: TLS and h2c upgrade (the server speaks prior-knowledge HTTP/2 only), priorities
(ignored by design), server push (never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import urllib.parse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import hpack
import numpy as np
import pytest
import pytest_asyncio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from tritonclient.grpc import service_pb2 as pb

from servegraph.runtime.server import Server
from servegraph.runtime.servers import http2
from servegraph.runtime.servers.grpc_h2 import GrpcH2Server
from tests.conftest import add_model, serve

pytestmark = pytest.mark.asyncio(loop_scope="module")

TIMEOUT = 5.0
"""Seconds any one read may wait: a server that neither answers nor closes fails the test."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x0, 0x1, 0x3, 0x5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x6, 0x7, 0x8, 0xB

# gRPC status codes.
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 0, 3, 8, 12

SERVICE = "/inference.GRPCInferenceService"
MAX_REQUEST = 4096
"""The server's ``max_request_bytes``: the largest gRPC message it reads."""
BIG = 32_768
"""FP32 values in one row of the ``big`` model's answer: 128 KiB, twice the default connection window."""

BIG_MODEL = """
import numpy as np


class Big:
    def predict(self, inputs):
        return {"OUTPUT": np.repeat(inputs["INPUT"], %d, axis=1).astype(np.float32)}
""" % BIG


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame hyperframe would refuse to build (wrong stream, wrong length)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def framed(message: bytes, compressed: bool = False) -> bytes:
    """A gRPC length-prefixed message."""
    return bytes((int(compressed),)) + len(message).to_bytes(4, "big") + message


@dataclass
class Headers:
    """A whole header block as received (HEADERS and its CONTINUATIONs), decoded."""

    stream_id: int
    fields: dict[str, str]
    end_stream: bool


Received = Frame | Headers


@dataclass
class Reply:
    """One stream's answer: its header blocks, body and how it ended."""

    headers: dict[str, str] | None = None
    data: bytes = b""
    data_frames: list[int] = field(default_factory=list)
    trailers: dict[str, str] | None = None
    reset: int | None = None

    def messages(self) -> list[bytes]:
        out, rest = [], self.data
        while rest:
            assert len(rest) >= 5 and rest[0] == 0, rest[:16]
            size = int.from_bytes(rest[1:5], "big")
            assert len(rest) >= 5 + size, "a gRPC message cut short"
            out.append(rest[5 : 5 + size])
            rest = rest[5 + size :]
        return out

    @property
    def grpc_status(self) -> int:
        assert self.trailers is not None, self
        return int(self.trailers["grpc-status"])

    @property
    def grpc_message(self) -> str:
        assert self.trailers is not None, self
        return urllib.parse.unquote(self.trailers.get("grpc-message", ""))


class H2:
    """A raw HTTP/2 client connection: frames out as given, frames in as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.server_settings: dict[int, int] = {}
        self.next_stream = 1
        self._pings = 0
        self.was_reset = False

    # ------------------------------------------------------------------ writing
    def send(self, *frames: Frame | bytes) -> None:
        self.writer.write(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def new_stream(self) -> int:
        stream_id, self.next_stream = self.next_stream, self.next_stream + 2
        return stream_id

    def headers_frame(self, stream_id: int, fields: Iterable[tuple[str, str]], end_stream: bool = False) -> HeadersFrame:
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(stream_id, self.encoder.encode(list(fields)), flags=flags)

    @staticmethod
    def grpc_fields(path: str, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        return [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra,
        ]  # fmt: skip

    def request(
        self, method: str, body: bytes | None, extra: Iterable[tuple[str, str]] = (), *, end_stream: bool = True
    ) -> int:
        """A gRPC call as grpc clients send it: HEADERS, then DATA with the body (framed by the caller)."""
        stream_id = self.new_stream()
        path = method if method.startswith("/") else f"{SERVICE}/{method}"
        frames: list[Frame] = [self.headers_frame(stream_id, self.grpc_fields(path, extra), end_stream=body is None)]
        if body is not None:
            frames.append(DataFrame(stream_id, body, flags=["END_STREAM"] if end_stream else []))
        self.send(*frames)
        return stream_id

    async def call(self, method: str, message: bytes, extra: Iterable[tuple[str, str]] = ()) -> Reply:
        return await self.response(self.request(method, framed(message), extra))

    # ------------------------------------------------------------------ reading
    async def _read_exactly(self, size: int) -> bytes | None:
        try:
            return await asyncio.wait_for(self.reader.readexactly(size), TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            assert not exc.partial, f"the connection closed inside a frame ({len(exc.partial)} of {size} bytes)"
            return None
        except ConnectionResetError:
            self.was_reset = True
            return None

    async def _read_frame(self) -> Frame | None:
        header = await self._read_exactly(9)
        if header is None:
            return None
        frame, length = Frame.parse_frame_header(memoryview(header))
        body = await self._read_exactly(length) if length else b""
        assert body is not None, "the connection closed inside a frame"
        frame.parse_body(memoryview(body))
        return frame

    async def read(self) -> Received | None:
        """The next frame (a header block whole and decoded); None once the server has closed."""
        frame = await self._read_frame()
        if not isinstance(frame, HeadersFrame):
            return frame
        block, flags = bytearray(frame.data), frame.flags
        while "END_HEADERS" not in flags:
            more = await self._read_frame()
            assert isinstance(more, ContinuationFrame) and more.stream_id == frame.stream_id, more
            block += more.data
            flags = more.flags
        fields = {str(k): str(v) for k, v in self.decoder.decode(bytes(block))}
        return Headers(frame.stream_id, fields, "END_STREAM" in frame.flags)

    async def response(self, stream_id: int, reply: Reply | None = None) -> Reply:
        """Read until ``stream_id`` ends (END_STREAM or RST_STREAM); other frames are skipped.
        ``reply``: what was already read of the stream, to carry on from."""
        reply = reply or Reply()
        while True:
            got = await self.read()
            assert got is not None, f"the connection closed before stream {stream_id} ended: {reply}"
            if got.stream_id != stream_id:
                continue
            if isinstance(got, Headers):
                if reply.headers is None:
                    reply.headers = got.fields
                    if got.end_stream:  # trailers-only
                        reply.trailers = got.fields
                else:
                    assert got.end_stream, "a second header block must end the stream"
                    reply.trailers = got.fields
                if got.end_stream:
                    return reply
            elif isinstance(got, DataFrame):
                assert reply.headers is not None, "DATA before the response headers"
                reply.data += got.data
                reply.data_frames.append(len(got.data))
                if "END_STREAM" in got.flags:
                    return reply
            elif isinstance(got, RstStreamFrame):
                reply.reset = got.error_code
                return reply

    async def barrier(self) -> list[Received]:
        """PING and wait for its ACK: returns what the server sent before it (everything it
        had written when it read the PING, since one connection's frames stay in order)."""
        self._pings += 1
        opaque = self._pings.to_bytes(8, "big")
        self.send(PingFrame(0, opaque))
        seen: list[Received] = []
        while True:
            got = await self.read()
            assert got is not None, f"the connection closed before the PING ACK; before it: {seen}"
            if isinstance(got, PingFrame) and "ACK" in got.flags and got.opaque_data == opaque:
                return seen
            seen.append(got)

    async def until_closed(self) -> list[Received]:
        """Everything until the server closes the connection (fails if it does not, in TIMEOUT)."""
        seen: list[Received] = []
        while (got := await self.read()) is not None:
            seen.append(got)
        return seen

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


@contextlib.asynccontextmanager
async def opened(port: int) -> AsyncIterator[H2]:
    """A TCP connection, nothing sent yet."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    client = H2(reader, writer)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def connected(port: int, settings: dict[int, int] | None = None) -> AsyncIterator[H2]:
    """The client's preface and SETTINGS sent, the server's SETTINGS read and acknowledged."""
    async with opened(port) as client:
        client.send(PREFACE, SettingsFrame(0, settings or {}))
        first = await client.read()
        # RFC 9113 §3.4: the server's preface is a SETTINGS frame, its first frame.
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, first
        client.server_settings = dict(first.settings)
        client.send(SettingsFrame(0, flags=["ACK"]))
        yield client


def goaway_of(frames: list[Received]) -> GoAwayFrame:
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert len(goaways) == 1, frames
    return goaways[0]


def resets(frames: list[Received], stream_id: int | None = None) -> list[RstStreamFrame]:
    return [f for f in frames if isinstance(f, RstStreamFrame) and stream_id in (None, f.stream_id)]


async def assert_live(client: H2) -> None:
    """A ServerLive call on the connection answers live=true with grpc-status 0."""
    reply = await client.call("ServerLive", pb.ServerLiveRequest().SerializeToString())
    assert reply.headers is not None and reply.headers[":status"] == "200", reply
    assert reply.grpc_status == OK, reply
    [message] = reply.messages()
    assert pb.ServerLiveResponse.FromString(message).live is True


async def assert_serves(port: int) -> None:
    """A fresh connection still gets answers (after a test that broke one)."""
    async with connected(port) as client:
        await assert_live(client)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    repo: Path = tmp_path_factory.mktemp("http2") / "models"
    add_model(repo, "big", {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": [1]}],
        "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [BIG]}],
    }, BIG_MODEL)  # fmt: skip
    async with serve(repo, max_request_bytes=MAX_REQUEST) as started:
        yield started


@pytest.fixture
def port(server: Server) -> int:
    assert server.ports is not None
    return server.ports.grpc


def big_request(value: float = 1.5) -> bytes:
    request = pb.ModelInferRequest(model_name="big")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32(value).tobytes())
    return bytes(request.SerializeToString())


# ---------------------------------------------------------------------------- a plain call


async def test_raw_unary_call(port: int) -> None:
    async with connected(port) as client:
        # What the server advertised (RFC 9113 §6.5.2): no push, a stream limit, the header list limit.
        assert client.server_settings.get(SettingsFrame.ENABLE_PUSH) == 0
        assert client.server_settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS, 0) >= 100
        assert client.server_settings.get(SettingsFrame.MAX_HEADER_LIST_SIZE, 0) > 0
        stream_id = client.request("ServerLive", framed(b""), [("grpc-timeout", "2S"), ("x-custom", "v")])
        reply = await client.response(stream_id)
        assert reply.headers is not None
        assert reply.headers[":status"] == "200"
        assert reply.headers["content-type"] == "application/grpc"
        assert reply.trailers == {"grpc-status": "0"}
        [message] = reply.messages()
        assert pb.ServerLiveResponse.FromString(message).live is True
        # The exchange is complete on both sides: nothing more on the stream, no GOAWAY.
        after = await client.barrier()
        assert not [f for f in after if f.stream_id == stream_id or isinstance(f, GoAwayFrame)], after
        # The connection carries on: a second call on the next stream.
        await assert_live(client)


# ---------------------------------------------------------------------------- the preface


@pytest.mark.parametrize(
    "opening",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="http1"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", id="preface-typo"),
        # The preface proper, then a first frame that is not SETTINGS (RFC 9113 §3.4).
        pytest.param(PREFACE + PingFrame(0, b"12345678").serialize(), id="ping-before-settings"),
        pytest.param(PREFACE + SettingsFrame(0, flags=["ACK"]).serialize(), id="settings-ack-first"),
    ],
)
async def test_bad_connection_preface_is_a_protocol_error(port: int, opening: bytes) -> None:
    async with opened(port) as client:
        client.send(opening)
        frames = await client.until_closed()
    goaway = goaway_of(frames)
    assert goaway.error_code == PROTOCOL_ERROR
    assert goaway.last_stream_id == 0
    assert frames[-1] is goaway, frames  # and nothing after it: the connection closed
    await assert_serves(port)


# ---------------------------------------------------------------------------- PING


async def test_ping_is_acknowledged_with_its_payload(port: int) -> None:
    async with connected(port) as client:
        client.send(PingFrame(0, b"\x00\xffsg-h2\x01"))
        while not isinstance(got := await client.read(), PingFrame):
            assert got is not None
        assert "ACK" in got.flags
        assert got.opaque_data == b"\x00\xffsg-h2\x01"
        # A PING ACK from the client is not answered: the next frame is the ACK of the next PING.
        client.send(PingFrame(0, b"ACKACKAC", flags=["ACK"]))
        assert not [f for f in await client.barrier() if isinstance(f, PingFrame)]
        await assert_live(client)


# ---------------------------------------------------------------------------- header floods


async def test_continuation_flood_is_cut_at_the_header_limit(port: int) -> None:
    """HEADERS without END_HEADERS, then CONTINUATIONs past the header list limit: GOAWAY
    ENHANCE_YOUR_CALM as soon as the block is over the limit, not at END_HEADERS (there is none)."""
    async with connected(port) as client:
        limit = client.server_settings[SettingsFrame.MAX_HEADER_LIST_SIZE]
        chunk = 1024
        count = limit // chunk + 1  # the last frame takes the block over the limit
        block = client.encoder.encode(
            client.grpc_fields(f"{SERVICE}/ServerLive") + [(f"x-pad-{i}", "v" * 1100) for i in range(count)],
            huffman=False,
        )
        assert len(block) >= count * chunk
        chunks = [block[i * chunk : (i + 1) * chunk] for i in range(count)]
        client.send(HeadersFrame(1, chunks[0]), *(ContinuationFrame(1, c) for c in chunks[1:]))
        frames = await client.until_closed()
    goaway = goaway_of(frames)
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert goaway.last_stream_id == 0  # the stream was never opened
    assert not [f for f in frames if isinstance(f, Headers)], frames
    await assert_serves(port)


@pytest.mark.parametrize("size", [0, 1], ids=["empty", "one-byte"])
async def test_continuation_flood_of_tiny_frames_is_cut_at_the_frame_limit(port: int, size: int) -> None:
    """HEADERS without END_HEADERS, then 1,000 empty (or one-byte) CONTINUATIONs: far under
    the header list limit in bytes, so only a bound on the frames of one block cuts them off
    (the 2024 CONTINUATION flood advisories): GOAWAY ENHANCE_YOUR_CALM, the stream never opened."""
    async with connected(port) as client:
        block = client.encoder.encode(client.grpc_fields(f"{SERVICE}/ServerLive"))
        client.send(HeadersFrame(1, block), *(ContinuationFrame(1, b"\x00" * size) for _ in range(1000)))
        frames = await client.until_closed()
    goaway = goaway_of(frames)
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert goaway.last_stream_id == 0
    assert not [f for f in frames if isinstance(f, Headers)], frames
    await assert_serves(port)


async def test_header_block_in_many_continuations_is_served(port: int) -> None:
    """The frame limit is generous: a block cut into 32 pieces (8 times what nghttp2 allows) is
    an ordinary call."""
    async with connected(port) as client:
        block = client.encoder.encode(client.grpc_fields(f"{SERVICE}/ServerLive"), huffman=False)
        cuts = [len(block) * i // 32 for i in range(33)]
        chunks = [block[a:b] for a, b in zip(cuts, cuts[1:])]
        assert len(chunks) == 32 and all(chunks)
        client.send(
            HeadersFrame(1, chunks[0]),
            *(ContinuationFrame(1, c) for c in chunks[1:-1]),
            ContinuationFrame(1, chunks[-1], flags=["END_HEADERS"]),
            DataFrame(1, framed(pb.ServerLiveRequest().SerializeToString()), flags=["END_STREAM"]),
        )
        reply = await client.response(1)
        assert reply.grpc_status == OK, reply
        assert pb.ServerLiveResponse.FromString(reply.messages()[0]).live is True


async def test_hpack_bomb_is_cut_at_the_header_list_limit(port: int) -> None:
    """A small block that decodes to a huge header list (one 4 KB entry of the dynamic table,
    referenced again and again): GOAWAY ENHANCE_YOUR_CALM, nothing served."""
    async with connected(port) as client:
        limit = client.server_settings[SettingsFrame.MAX_HEADER_LIST_SIZE]
        entry = ("x-bomb", "b" * 4000)
        repeats = limit // 4000 + 2
        block = client.encoder.encode(client.grpc_fields(f"{SERVICE}/ServerLive") + [entry] * repeats)
        assert len(block) < limit // 4  # small on the wire
        client.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]))
        frames = await client.until_closed()
    goaway = goaway_of(frames)
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert not [f for f in frames if isinstance(f, Headers)], frames
    await assert_serves(port)


# ---------------------------------------------------------------------------- stream floods


async def test_rapid_reset_cancels_and_forgets_every_stream(server: Server, port: int) -> None:
    """CVE-2023-44487: 500 calls each reset at once, half of them whole requests (their handler
    started), half still waiting for their body. The connection stays up (no GOAWAY by design:
    a reset stream's work is cancelled and the stream forgotten at once), keeps no state for
    them, and the next call on it is answered."""
    async with connected(port) as client:
        frames: list[Frame] = []
        for i in range(500):
            stream_id = client.new_stream()
            frames.append(client.headers_frame(stream_id, client.grpc_fields(f"{SERVICE}/ServerLive")))
            if i % 2:
                frames.append(DataFrame(stream_id, framed(b""), flags=["END_STREAM"]))
            frames.append(RstStreamFrame(stream_id, CANCEL))
        client.send(*frames)
        seen = await client.barrier()
        assert not [f for f in seen if isinstance(f, (GoAwayFrame, RstStreamFrame))], seen
        # The server side of this very connection holds no stream any more.
        grpc_server = server._grpc  # the private side of the public port
        assert isinstance(grpc_server, GrpcH2Server)
        sockname = client.writer.get_extra_info("sockname")
        [connection] = [
            c for c in grpc_server._connections
            if c.transport is not None and c.transport.get_extra_info("peername") == sockname
        ]
        assert connection.streams == {}
        assert connection.idle.is_set()
        await assert_live(client)


async def test_streams_past_the_advertised_limit_are_refused(port: int) -> None:
    async with connected(port) as client:
        limit = client.server_settings[SettingsFrame.MAX_CONCURRENT_STREAMS]
        ids = [client.new_stream() for _ in range(limit + 1)]
        # Open and left open: HEADERS without END_STREAM, no body yet.
        client.send(*(client.headers_frame(i, client.grpc_fields(f"{SERVICE}/ServerLive")) for i in ids))
        seen = await client.barrier()
        assert [(f.stream_id, f.error_code) for f in resets(seen)] == [(ids[-1], REFUSED_STREAM)]
        # One open stream finishes; the connection is still usable for it.
        client.send(DataFrame(ids[0], framed(b""), flags=["END_STREAM"]))
        reply = await client.response(ids[0])
        assert reply.grpc_status == OK


# ---------------------------------------------------------------------------- flow control


async def test_stream_flow_control_holds_the_answer_to_the_window(port: int) -> None:
    """The client's SETTINGS_INITIAL_WINDOW_SIZE is 16: the server sends 16 bytes of the answer,
    then nothing until WINDOW_UPDATE, then exactly the increment, then the rest and trailers."""
    async with connected(port, {SettingsFrame.INITIAL_WINDOW_SIZE: 16}) as client:
        stream_id = client.request("ModelMetadata", framed(pb.ModelMetadataRequest(name="big").SerializeToString()))
        headers: Headers | None = None
        while not isinstance(got := await client.read(), DataFrame) or got.stream_id != stream_id:
            assert got is not None
            if isinstance(got, Headers) and got.stream_id == stream_id:
                assert not got.end_stream, got
                headers = got
        assert headers is not None and headers.fields[":status"] == "200"
        assert len(got.data) == 16 and "END_STREAM" not in got.flags
        body = bytearray(got.data)
        held = [f for f in await client.barrier() if f.stream_id == stream_id]
        assert held == [], "the server wrote past the stream's window"

        client.send(WindowUpdateFrame(stream_id, 10))
        got = await client.read()
        while not isinstance(got, DataFrame):  # connection-level frames may come first
            assert got is not None and got.stream_id != stream_id, got
            got = await client.read()
        assert got.stream_id == stream_id and len(got.data) == 10
        body += got.data
        held = [f for f in await client.barrier() if f.stream_id == stream_id]
        assert held == [], "the server wrote past the stream's window"

        client.send(WindowUpdateFrame(stream_id, 1 << 20))
        reply = await client.response(stream_id, Reply(headers=headers.fields, data=bytes(body)))
        assert reply.trailers == {"grpc-status": "0"}
    [message] = reply.messages()
    metadata = pb.ModelMetadataResponse.FromString(message)
    assert metadata.name == "big"
    assert [(o.name, list(o.shape)) for o in metadata.outputs] == [("OUTPUT", [-1, BIG])]


async def test_connection_flow_control_holds_the_answer_to_the_window(port: int) -> None:
    """A 128 KiB answer against the connection's default window (65,535; the stream's is
    1 MiB): exactly the window, in frames of at most 16,384 bytes (the client's
    SETTINGS_MAX_FRAME_SIZE), nothing more until a connection WINDOW_UPDATE, then the rest."""
    async with connected(port, {SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}) as client:
        stream_id = client.request("ModelInfer", framed(big_request(2.5)))
        first = Reply()
        while len(first.data) < 65_535:
            got = await client.read()
            assert got is not None
            if isinstance(got, DataFrame) and got.stream_id == stream_id:
                assert "END_STREAM" not in got.flags
                first.data += got.data
                first.data_frames.append(len(got.data))
            elif isinstance(got, Headers) and got.stream_id == stream_id:
                assert not got.end_stream and got.fields[":status"] == "200", got
                first.headers = got.fields
        assert len(first.data) == 65_535
        held = [f for f in await client.barrier() if f.stream_id == stream_id]
        assert held == [], "the server wrote past the connection's window"
        client.send(WindowUpdateFrame(0, 1 << 20))
        reply = await client.response(stream_id, first)
        assert reply.trailers == {"grpc-status": "0"}
    assert max(reply.data_frames) <= 16_384
    [message] = reply.messages()
    response = pb.ModelInferResponse.FromString(message)
    assert list(response.outputs[0].shape) == [1, BIG]
    assert response.raw_output_contents[0] == np.full(BIG, 2.5, np.float32).tobytes()


# ---------------------------------------------------------------------------- malformed header blocks


def request_fields(change: dict[str, str | None] | None = None, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """A ServerLive call's header list with the fields in ``change`` replaced (None: left out),
    then ``extra``."""
    change = change or {}
    fields = [(k, change.get(k, v)) for k, v in H2.grpc_fields(f"{SERVICE}/ServerLive")]
    return [(k, v) for k, v in fields if v is not None] + list(extra)


MALFORMED_REQUESTS = {
    # RFC 9113 §8.2.1: field names are lowercase.
    "uppercase-name": request_fields(extra=[("X-Custom", "v")]),
    "uppercase-pseudo-header": [(":Path", f"{SERVICE}/ServerLive"), *request_fields({":path": None})],
    # §8.2.2: connection-specific fields, and te other than "trailers".
    **{f"{name}-field": request_fields(extra=[(name, value)]) for name, value in [
        ("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"), ("upgrade", "h2c"),
    ]},  # fmt: skip
    "te-gzip": request_fields({"te": "gzip"}),
    "te-trailers-and-more": request_fields({"te": "trailers, deflate"}),
    # §8.3: pseudo-headers first, each once, only a request's, :method :scheme :path all there.
    "pseudo-header-after-regular": request_fields({":authority": None}, [(":authority", "127.0.0.1")]),
    "duplicated-pseudo-header": [(":path", f"{SERVICE}/ServerLive"), *request_fields()],
    "unknown-pseudo-header": [(":protocol", "websocket"), *request_fields()],
    "response-pseudo-header": [(":status", "200"), *request_fields()],
    "no-method": request_fields({":method": None}),
    "no-scheme": request_fields({":scheme": None}),
    "no-path": request_fields({":path": None}),
    "empty-path": request_fields({":path": ""}),
    # §8.5: CONNECT names an :authority, and no :scheme or :path.
    "connect-with-a-path": request_fields({":method": "CONNECT"}),
}


@pytest.mark.parametrize("fields", list(MALFORMED_REQUESTS.values()), ids=list(MALFORMED_REQUESTS))
async def test_malformed_request_headers_are_a_stream_error(port: int, fields: list[tuple[str, str]]) -> None:
    """RFC 9113 §8.1.1: a malformed request is a stream error, RST_STREAM PROTOCOL_ERROR, not
    answered; its body (already sent) is ignored, and the connection carries on."""
    async with connected(port) as client:
        stream_id = client.new_stream()
        client.send(
            client.headers_frame(stream_id, fields),
            DataFrame(stream_id, framed(pb.ServerLiveRequest().SerializeToString()), flags=["END_STREAM"]),
        )
        seen = await client.barrier()
        assert [(f.stream_id, f.error_code) for f in resets(seen)] == [(stream_id, PROTOCOL_ERROR)], seen
        assert [f for f in seen if isinstance(f, (Headers, DataFrame, GoAwayFrame))] == [], seen
        await assert_live(client)


async def test_well_formed_connect_request_is_not_malformed(port: int) -> None:
    """CONNECT with only :method and :authority is well formed (§8.5): not a gRPC call, so
    answered 405, as any method but POST."""
    async with connected(port) as client:
        stream_id = client.new_stream()
        fields = [(":method", "CONNECT"), (":authority", "127.0.0.1:443"), ("content-type", "application/grpc")]
        client.send(client.headers_frame(stream_id, fields, end_stream=True))
        reply = await client.response(stream_id)
        assert reply.reset is None and reply.headers is not None and reply.headers[":status"] == "405", reply


@pytest.mark.parametrize(
    "trailers",
    [
        pytest.param([(":path", f"{SERVICE}/ServerLive")], id="request-pseudo-header"),
        pytest.param([(":status", "200")], id="response-pseudo-header"),
        pytest.param([("X-Trailer", "v")], id="uppercase-name"),
        pytest.param([("transfer-encoding", "chunked")], id="connection-specific"),
    ],
)
async def test_malformed_trailers_are_a_stream_error(port: int, trailers: list[tuple[str, str]]) -> None:
    """Trailers carry no pseudo-headers (RFC 9113 §8.1) and follow §8.2 as any field block:
    RST_STREAM PROTOCOL_ERROR, the call not answered."""
    async with connected(port) as client:
        stream_id = client.request("ServerLive", framed(pb.ServerLiveRequest().SerializeToString()), end_stream=False)
        client.send(client.headers_frame(stream_id, trailers, end_stream=True))
        seen = await client.barrier()
        assert [(f.stream_id, f.error_code) for f in resets(seen)] == [(stream_id, PROTOCOL_ERROR)], seen
        assert [f for f in seen if isinstance(f, (Headers, DataFrame, GoAwayFrame))] == [], seen
        await assert_live(client)


async def test_well_formed_trailers_end_the_request(port: int) -> None:
    async with connected(port) as client:
        stream_id = client.request("ServerLive", framed(pb.ServerLiveRequest().SerializeToString()), end_stream=False)
        client.send(client.headers_frame(stream_id, [("x-trailer", "v"), ("te", "trailers")], end_stream=True))
        reply = await client.response(stream_id)
        assert reply.grpc_status == OK, reply
        assert pb.ServerLiveResponse.FromString(reply.messages()[0]).live is True


# ---------------------------------------------------------------------------- streams the server reset


def too_large_prefix() -> bytes:
    """The length prefix of a message over ``max_request_bytes``: the server answers
    RESOURCE_EXHAUSTED as soon as it reads it, then RST_STREAM NO_ERROR (§8.1) when the
    request has not ended."""
    return framed(bytes(MAX_REQUEST + 1))[:5]


async def reset_by_the_server(client: H2, how: str) -> tuple[int, int]:
    """A ModelInfer stream the server resets, still open on the client's side: its id and the
    RST_STREAM's code, read before returning."""
    stream_id = client.new_stream()
    client.send(client.headers_frame(stream_id, client.grpc_fields(f"{SERVICE}/ModelInfer")))
    if how == "answered-early":
        client.send(DataFrame(stream_id, too_large_prefix()))
        code = NO_ERROR
    else:  # a message still coming (4,000 bytes announced), then DATA one byte past the stream's window
        window = client.server_settings[SettingsFrame.INITIAL_WINDOW_SIZE]
        client.send(DataFrame(stream_id, framed(bytes(4000))[:5]), DataFrame(stream_id, bytes(window - 4)))
        code = FLOW_CONTROL_ERROR
    seen = await client.barrier()
    assert [(f.stream_id, f.error_code) for f in resets(seen)] == [(stream_id, code)], seen
    return stream_id, code


@pytest.mark.parametrize("how", ["answered-early", "flow-control"])
async def test_frames_in_flight_on_a_stream_the_server_reset_are_ignored(port: int, how: str) -> None:
    """RFC 9113 §5.1: when the server's RST_STREAM reaches it, the client may still have DATA,
    trailers and WINDOW_UPDATE in flight on the stream. They are ignored: no RST_STREAM back,
    no GOAWAY. The trailers are still decoded: a header they put in the HPACK table is then
    referenced by the next call's headers, which must decode."""
    async with connected(port) as client:
        stream_id, _ = await reset_by_the_server(client, how)
        client.send(
            DataFrame(stream_id, b"more of the body"),
            client.headers_frame(stream_id, [("x-in-flight", "trailers")], end_stream=True),
            WindowUpdateFrame(stream_id, 1000),
        )
        seen = await client.barrier()
        assert [f for f in seen if f.stream_id == stream_id or isinstance(f, GoAwayFrame)] == [], seen
        reply = await client.call("ServerLive", b"", [("x-in-flight", "trailers")])  # an indexed field now
        assert reply.grpc_status == OK, reply


async def test_streams_the_server_reset_are_remembered_up_to_a_bound(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streams the server reset are remembered for their frames in flight, the newest
    ``RESET_MEMORY`` (made 2 here) only: DATA on an older one is on a closed stream again
    (RST_STREAM STREAM_CLOSED, the connection carries on)."""
    monkeypatch.setattr(http2, "RESET_MEMORY", 2)
    async with connected(port) as client:
        ids = [(await reset_by_the_server(client, "answered-early"))[0] for _ in range(3)]
        client.send(*(DataFrame(i, b"late") for i in ids))
        seen = await client.barrier()
        assert [(f.stream_id, f.error_code) for f in resets(seen)] == [(ids[0], STREAM_CLOSED)], seen
        await assert_live(client)


async def test_data_on_streams_the_server_reset_counts_against_the_connection_window(port: int) -> None:
    """RFC 9113 §6.9: DATA ignored on a stream the server reset still counts against the
    connection's window, so it is granted back as any other: a client that spends the whole
    connection window (16 streams of 1 MiB) on such streams is never owed more than half of it."""
    async with connected(port) as client:
        grant = await client.read()  # the server's connection WINDOW_UPDATE, right after its SETTINGS
        assert isinstance(grant, WindowUpdateFrame) and grant.stream_id == 0, grant
        window = 65_535 + grant.window_increment
        per_stream = client.server_settings[SettingsFrame.INITIAL_WINDOW_SIZE]
        assert window % per_stream == 0
        ids = [client.new_stream() for _ in range(window // per_stream)]
        fields = client.grpc_fields(f"{SERVICE}/ModelInfer")
        client.send(*(f for i in ids for f in (client.headers_frame(i, fields), DataFrame(i, too_large_prefix()))))
        seen = await client.barrier()
        assert sorted((f.stream_id, f.error_code) for f in resets(seen)) == [(i, NO_ERROR) for i in ids], seen
        # The rest of each stream's window, sent on the reset streams: the connection's window in all.
        client.send(*(DataFrame(i, bytes(per_stream - 5)) for i in ids))
        seen = await client.barrier()
        assert [f for f in seen if isinstance(f, (GoAwayFrame, RstStreamFrame))] == [], seen
        granted = sum(f.window_increment for f in seen if isinstance(f, WindowUpdateFrame) and f.stream_id == 0)
        assert window - granted < window // 2, (window, granted)
        await assert_live(client)


# ---------------------------------------------------------------------------- gRPC errors


@pytest.mark.parametrize("complete", [True, False], ids=["whole-request", "cut-short"])
async def test_message_over_the_limit_is_resource_exhausted(port: int, complete: bool) -> None:
    """A message over ``max_request_bytes``: RESOURCE_EXHAUSTED naming both sizes, answered
    as soon as its length prefix is read. A client still sending is then asked to stop with
    RST_STREAM NO_ERROR (RFC 9113 §8.1); one that had finished gets nothing more (the stream
    is closed on both sides: no frame may follow, §5.1)."""
    size = MAX_REQUEST + 904
    async with connected(port) as client:
        body = framed(bytes(size)) if complete else framed(bytes(size))[:1000]
        stream_id = client.request("ModelInfer", body, end_stream=complete)
        reply = await client.response(stream_id)
        assert reply.headers is not None and reply.headers[":status"] == "200"
        assert reply.grpc_status == RESOURCE_EXHAUSTED, reply
        assert f"{size}" in reply.grpc_message and f"{MAX_REQUEST}" in reply.grpc_message, reply.grpc_message
        after = resets(await client.barrier(), stream_id)
        assert [f.error_code for f in after] == ([] if complete else [NO_ERROR])
        await assert_live(client)


async def test_second_message_on_a_unary_call_is_refused_at_once(port: int) -> None:
    """A unary call with a second message is INVALID_ARGUMENT as soon as that message is
    read, not when the request ends: a client that never ends it with a stream of empty
    messages would otherwise be read (and its window granted) for ever."""
    async with connected(port) as client:
        stream_id = client.request("ServerLive", framed(b"") * 2, end_stream=False)
        reply = await client.response(stream_id)
        assert reply.grpc_status == INVALID_ARGUMENT, reply
        assert "exactly one request message" in reply.grpc_message, reply.grpc_message
        assert [f.error_code for f in resets(await client.barrier(), stream_id)] == [NO_ERROR]
        await assert_live(client)


@pytest.mark.parametrize(
    "path",
    [
        f"{SERVICE}/NoSuchMethod",
        f"{SERVICE}/CudaSharedMemoryStatus",  # in the service, not served
        "/other.Service/ServerLive",
    ],
)
async def test_unknown_method_is_unimplemented(port: int, path: str) -> None:
    async with connected(port) as client:
        reply = await client.call(path, b"")
        assert reply.headers is not None and reply.headers[":status"] == "200"
        assert reply.headers["content-type"] == "application/grpc"
        assert reply.grpc_status == UNIMPLEMENTED, reply
        assert path in reply.grpc_message
        assert reply.data == b""
        await assert_live(client)


async def test_unknown_method_without_a_body_gets_nothing_after_its_answer(port: int) -> None:
    """HEADERS with END_STREAM (a complete request), answered trailers-only: the stream is then
    closed on both sides, so no RST_STREAM may follow (RFC 9113 §5.1)."""
    async with connected(port) as client:
        stream_id = client.request(f"{SERVICE}/NoSuchMethod", None)
        reply = await client.response(stream_id)
        assert reply.grpc_status == UNIMPLEMENTED
        assert resets(await client.barrier(), stream_id) == []


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        pytest.param([(":method", "GET")], "405", id="GET"),
        pytest.param([("content-type", "application/json")], "415", id="json"),
        pytest.param([("content-type", "text/plain")], "415", id="text"),
        pytest.param([("content-type", None)], "415", id="no-content-type"),
    ],
)
async def test_non_grpc_request_gets_an_http_error(port: int, fields: list[tuple[str, str | None]], status: str) -> None:
    async with connected(port) as client:
        changed = dict(fields)
        request = [(k, changed.get(k, v)) for k, v in client.grpc_fields(f"{SERVICE}/ServerLive")]
        stream_id = client.new_stream()
        client.send(client.headers_frame(stream_id, [(k, v) for k, v in request if v is not None], end_stream=True))
        reply = await client.response(stream_id)
        assert reply.headers is not None
        assert reply.headers[":status"] == status
        assert "grpc-status" not in reply.headers
        if status == "405":
            assert reply.headers.get("allow") == "POST"  # RFC 9110 §15.5.6
        assert reply.trailers is not None and reply.data == b""  # the header block ended the stream
        assert resets(await client.barrier(), stream_id) == []
        await assert_live(client)


@pytest.mark.parametrize("timeout", ["1x", "", "S", "123456789S", "-1S", "1.5S", "10 S"], ids=repr)
async def test_malformed_grpc_timeout_is_invalid_argument(port: int, timeout: str) -> None:
    async with connected(port) as client:
        reply = await client.call("ServerLive", b"", [("grpc-timeout", timeout)])
        assert reply.grpc_status == INVALID_ARGUMENT, reply
        assert "grpc-timeout" in reply.grpc_message
        assert reply.data == b""
        await assert_live(client)


async def test_unsupported_grpc_encoding_is_unimplemented(port: int) -> None:
    """gRPC's compression spec: an encoding the server lacks gets UNIMPLEMENTED, and the
    answer names the encodings it accepts (grpc-accept-encoding)."""
    async with connected(port) as client:
        body = framed(b"compressed?", compressed=True)
        reply = await client.response(client.request("ServerLive", body, [("grpc-encoding", "snappy")]))
        assert reply.grpc_status == UNIMPLEMENTED, reply
        assert "snappy" in reply.grpc_message
        assert reply.headers is not None
        accepted = {e.strip() for e in reply.headers["grpc-accept-encoding"].split(",")}
        assert {"identity", "gzip"} <= accepted
        # What it does accept works: a gzip-compressed message.
        empty = gzip.compress(pb.ServerLiveRequest().SerializeToString())
        reply = await client.response(client.request("ServerLive", framed(empty, compressed=True), [("grpc-encoding", "gzip")]))
        assert reply.grpc_status == OK, reply
        assert pb.ServerLiveResponse.FromString(reply.messages()[0]).live is True


# ---------------------------------------------------------------------------- connection errors

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)


CONNECTION_ERRORS = {
    # (calls made first on streams 1 and 3, the bad bytes, the expected code)
    "data-on-stream-0": (0, raw_frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    "data-on-idle-stream": (0, raw_frame(DATA, 1, 1, framed(b"")), PROTOCOL_ERROR),
    "data-on-idle-stream-above-open-ones": (2, raw_frame(DATA, 1, 7, framed(b"")), PROTOCOL_ERROR),
    "data-on-server-stream": (2, raw_frame(DATA, 1, 2, framed(b"")), PROTOCOL_ERROR),
    "headers-on-stream-0": (0, raw_frame(HEADERS, 0x5, 0, b"\x82"), PROTOCOL_ERROR),
    "headers-on-even-stream": (0, raw_frame(HEADERS, 0x5, 2, b"\x83"), PROTOCOL_ERROR),
    "headers-reusing-a-stream": (2, raw_frame(HEADERS, 0x5, 1, b"\x83"), PROTOCOL_ERROR),
    "continuation-without-headers": (0, raw_frame(CONTINUATION, 0x4, 1, b"\x83"), PROTOCOL_ERROR),
    "headers-interrupted": (0, raw_frame(HEADERS, 0x0, 1, b"\x83") + raw_frame(PING, 0, 0, bytes(8)), PROTOCOL_ERROR),
    "continuation-on-another-stream": (
        0, raw_frame(HEADERS, 0x0, 1, b"\x83") + raw_frame(CONTINUATION, 0x4, 3, b"\x86"), PROTOCOL_ERROR,
    ),
    "window-update-on-idle-stream": (0, raw_frame(WINDOW_UPDATE, 0, 5, (1).to_bytes(4, "big")), PROTOCOL_ERROR),
    "window-update-on-server-stream": (2, raw_frame(WINDOW_UPDATE, 0, 2, (1).to_bytes(4, "big")), PROTOCOL_ERROR),
    "window-update-0-on-connection": (0, raw_frame(WINDOW_UPDATE, 0, 0, bytes(4)), PROTOCOL_ERROR),
    "rst-on-stream-0": (0, raw_frame(RST, 0, 0, bytes(4)), PROTOCOL_ERROR),
    "rst-on-idle-stream": (0, raw_frame(RST, 0, 9, bytes(4)), PROTOCOL_ERROR),
    "rst-on-server-stream": (2, raw_frame(RST, 0, 2, bytes(4)), PROTOCOL_ERROR),
    "settings-on-a-stream": (0, raw_frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),
    "ping-on-a-stream": (0, raw_frame(PING, 0, 1, bytes(8)), PROTOCOL_ERROR),
    "ping-of-7-bytes": (0, raw_frame(PING, 0, 0, bytes(7)), FRAME_SIZE_ERROR),
    "push-promise-from-client": (2, raw_frame(PUSH_PROMISE, 0x4, 1, bytes(4)), PROTOCOL_ERROR),
    "settings-of-5-bytes": (0, raw_frame(SETTINGS, 0, 0, bytes(5)), FRAME_SIZE_ERROR),
    "initial-window-over-2^31-1": (
        0, raw_frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (1 << 31).to_bytes(4, "big")), FLOW_CONTROL_ERROR,
    ),
}


@pytest.mark.parametrize(("calls", "bad", "code"), list(CONNECTION_ERRORS.values()), ids=list(CONNECTION_ERRORS))
async def test_frame_where_it_must_not_be_is_a_connection_error(port: int, calls: int, bad: bytes, code: int) -> None:
    async with connected(port) as client:
        for _ in range(calls):
            await assert_live(client)
        client.send(bad)
        frames = await client.until_closed()
    goaway = goaway_of(frames)
    assert goaway.error_code == code, goaway
    assert goaway.last_stream_id == max(2 * calls - 1, 0)
    assert frames[-1] is goaway, frames
    await assert_serves(port)
