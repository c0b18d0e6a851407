"""A server-side HTTP/2 connection for gRPC: frames, settings, flow control, header blocks.

Why by hand: on one core grpc.aio spends about 350 µs of CPU per unary call before any of
our code runs, and the pure-Python ``h2`` state machine about 270 µs; this connection, with
the ``hpack`` library decoding header blocks, about 70 µs (bench/transport_ceiling.py). The
scope is what gRPC clients speak without TLS: HTTP/2 with prior knowledge (no h2c upgrade),
no server push, priorities ignored. Our header blocks never use the dynamic table, so each
is stateless bytes (``encode_headers``).

Guards against what RFC 9113 and the 2019/2023/2024 HTTP/2 advisories list: a header block
is bounded in bytes and in frames (CONTINUATION floods), streams per connection are bounded,
a reset stream's work is cancelled at once (rapid reset), reading stops while the peer does
not read what we write (PING/SETTINGS reflection), every window and frame size is checked.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384

MAX_CONCURRENT_STREAMS = 1024
"""Streams open at once on one connection; past it a new stream is refused (REFUSED_STREAM)."""
RESET_MEMORY = MAX_CONCURRENT_STREAMS
"""Streams we sent RST_STREAM on that a connection remembers (the newest): what the client
had in flight on them when our reset reached it is ignored (RFC 9113 §5.1), not taken for a
frame on a closed stream. As many as may be open at once, so a client that had every stream
in flight when we reset them all is covered, in about 64 KiB at most per connection.
Past it the oldest is forgotten, as §5.1 allows: DATA on it gets RST_STREAM STREAM_CLOSED,
a header block a connection error."""
STREAM_WINDOW = 1 << 20
"""What a client may send on one stream before we grant more (the gRPC layer grants as it reads)."""
CONNECTION_WINDOW = 16 << 20
"""What a client may send on the connection before we grant more (granted as it arrives)."""
MAX_FRAME = 1 << 20
"""Largest frame we accept (advertised): fewer, larger DATA frames for big tensors."""
MAX_HEADER_BLOCK = 64 << 10
"""Largest header block, CONTINUATIONs included, and largest decoded header list."""
MAX_CONTINUATIONS = 64
"""CONTINUATION frames one header block may have. The byte limit above does not stop a flood
of empty (or one-byte) CONTINUATIONs, each costing a frame's parsing while the block never
ends (the 2024 "CONTINUATION flood" advisories); nghttp2 cuts at 8. Our largest block cut at
the smallest frame size a client may assume (16 KiB) needs 3; 64 still lets a client cut it
into 1 KiB pieces (``MAX_HEADER_BLOCK // 1024``)."""


REQUEST_PSEUDO_HEADERS = frozenset((b":method", b":scheme", b":path", b":authority"))
"""The pseudo-headers a request may carry (RFC 9113 §8.3.1): ``:protocol`` needs
SETTINGS_ENABLE_CONNECT_PROTOCOL, which we do not send, and ``:status`` is a response's."""
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te")
)
"""Fields HTTP/2 forbids (RFC 9113 §8.2.2), and ``te``, allowed with the value ``trailers`` only."""


class Http2Error(Exception):
    """The connection cannot go on: GOAWAY with ``code``, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamReset(Exception):
    """One stream cannot go on: RST_STREAM with ``code``; the connection carries on."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with ``first`` in the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block with no dynamic-table state: ``:status: 200`` as its static index, the
    rest as literals without indexing, no Huffman coding."""
    out = bytearray()
    for name, value in headers:
        if name == b":status" and value == b"200":
            out += b"\x88"
            continue
        out += b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value
    return bytes(out)


class StreamHandler(Protocol):
    """What the application does with one stream's inbound side (called by the connection)."""

    def data_received(self, data: bytes) -> None: ...

    def end_received(self) -> None: ...

    def reset(self) -> None:
        """The stream is gone (the client reset it, or the connection closed): stop its work."""


def malformed(headers: list[tuple[bytes, bytes]], trailers: bool = False) -> str | None:
    """Why a request's header list (or its ``trailers``) is malformed, RFC 9113 §8.2-8.3, or
    None: a stream error (§8.1.1). One pass of cheap tests, and only once per distinct header
    block (``Http2Connection._decode`` keeps the answer with the decoded list)."""
    pseudo: list[bytes] = []  # the pseudo-headers seen, at most 4
    method = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if trailers:
                return f"pseudo-header {name!r} in trailers"
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name not in REQUEST_PSEUDO_HEADERS:
                return f"{name!r} is not a request pseudo-header"
            if name in pseudo:
                return f"{name!r} twice"
            pseudo.append(name)
            if name == b":method":
                method = value
            elif name == b":path" and not value:
                return "an empty :path"
            continue
        regular = True
        if not name.islower() and name != name.lower():  # islower: False too for a name without letters
            return f"an uppercase field name {name!r}"
        if name in CONNECTION_SPECIFIC and (name != b"te" or value != b"trailers"):
            return f"a connection-specific field {name!r}"
    if trailers:
        return None
    if method == b"CONNECT":  # §8.5: :authority, and neither :scheme nor :path
        if b":authority" not in pseudo or b":scheme" in pseudo or b":path" in pseudo:
            return "a CONNECT request needs :authority and no :scheme or :path"
    elif not method or b":scheme" not in pseudo or b":path" not in pseudo:
        return "a request needs :method, :scheme and :path"
    return None


Decoded = tuple[list[tuple[bytes, bytes]], str | None]
"""A header block's header list, and why it is malformed as a request (or None)."""
Opener = Callable[["Stream", list[tuple[bytes, bytes]]], StreamHandler]
"""Called with each new stream and its request headers (well-formed: ``malformed``); returns
its handler."""


class Stream:
    """One request/response exchange: what the application writes, and the windows it needs."""

    __slots__ = (
        "id", "connection", "handler", "send_window", "recv_window", "closed_remote", "closed_local",
        "_pending", "_pending_end", "_flushed", "ended", "_consumed",
    )  # fmt: skip

    def __init__(self, stream_id: int, connection: Http2Connection, send_window: int) -> None:
        self.id = stream_id
        self.connection = connection
        self.handler: StreamHandler | None = None
        self.send_window = send_window
        self.recv_window = STREAM_WINDOW
        self._consumed = 0  # read and passed on, not yet granted back to the client
        self.closed_remote = False
        self.closed_local = False
        self.ended = False
        """Set once the stream has left the connection (answered, reset or lost)."""
        self._pending: deque[memoryview] = deque()  # what the windows held back, in order
        self._pending_end: bytes | None = None  # a trailers block waiting behind pending data
        self._flushed: asyncio.Event | None = None

    # ---------------------------------------------------------------- writing
    def send_headers(self, block: bytes, end_stream: bool = False) -> None:
        """Response headers (or, with ``end_stream``, trailers) as an encoded block."""
        if self.closed_local:
            return
        if end_stream and self._pending:
            self._pending_end = block
            return
        self.connection.write_headers(self.id, block, end_stream)
        if end_stream:
            self.closed_local = True
            self.connection.stream_done(self)

    def send_data(self, data: bytes) -> None:
        """Body bytes: written at once as far as both windows allow, the rest when they open."""
        if self.closed_local:
            return
        if self._pending:
            self._pending.append(memoryview(data))
            return
        sent = self.connection.write_data(self, data)
        if sent < len(data):
            self._pending.append(memoryview(data)[sent:])
            self.connection.blocked.add(self)

    def send_response(self, headers: bytes, data: bytes, trailers: bytes) -> None:
        """A whole answer: in one write when the windows and frame size allow (a unary call)."""
        connection = self.connection
        size = len(data)
        if (
            self.closed_local or self._pending or size > self.send_window or size > connection.send_window
            or size > connection.peer_max_frame or len(headers) > connection.peer_max_frame
        ):  # fmt: skip
            self.send_headers(headers)
            self.send_data(data)
            self.send_headers(trailers, end_stream=True)
            return
        self.send_window -= size
        connection.send_window -= size
        answer = (
            frame(HEADERS, END_HEADERS, self.id, headers)
            + frame(DATA, 0, self.id, data)
            + frame(HEADERS, END_HEADERS | END_STREAM, self.id, trailers)
        )
        if len(connection.streams) == 1:
            connection.write_now(answer)  # no other stream here to share the send with
        else:
            connection.write(answer)
        self.closed_local = True
        connection.stream_done(self)

    def grant(self, size: int) -> None:
        """``size`` more bytes consumed: the client may send them again. Granted once half the
        window is used, so a small unary request costs no WINDOW_UPDATE at all."""
        if size <= 0 or self.closed_remote or self.ended:
            return
        self._consumed += size
        if self.recv_window < STREAM_WINDOW // 2:
            self.recv_window += self._consumed
            self.connection.write(frame(WINDOW_UPDATE, 0, self.id, self._consumed.to_bytes(4, "big")))
            self._consumed = 0

    def reset_stream(self, code: int) -> None:
        """End the stream with RST_STREAM (a request that cannot be read, a refusal)."""
        if not self.ended:
            self.connection.write_reset(self.id, code)
            self.closed_local = self.closed_remote = True
            self.connection.stream_done(self)

    async def flushed(self) -> None:
        """Wait until what was written has gone to the socket (flow control let it)."""
        if not self._pending or self.ended:
            return
        if self._flushed is None:
            self._flushed = asyncio.Event()
        await self._flushed.wait()

    def _flush(self) -> None:
        """Write what the windows now allow (after a WINDOW_UPDATE or SETTINGS)."""
        pending = self._pending
        while pending:
            head = pending[0]
            sent = self.connection.write_data(self, head)
            if sent < len(head):
                pending[0] = head[sent:]
                break
            pending.popleft()
        if not pending:
            self.connection.blocked.discard(self)
            if self._pending_end is not None:
                block, self._pending_end = self._pending_end, None
                self.send_headers(block, end_stream=True)
            self._wake()

    def _wake(self) -> None:
        if self._flushed is not None:
            self._flushed.set()
            self._flushed = None


class Http2Connection(asyncio.Protocol):
    """One client connection: parses frames, keeps the windows, hands streams to ``opener``."""

    def __init__(self, opener: Opener, on_close: Callable[[Http2Connection], None] | None = None) -> None:
        self._opener = opener
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._buffer = bytearray()
        self._preface_seen = False
        self._settings_seen = False
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._decoded: dict[bytes, tuple[int, Decoded]] = {}
        self._table_generation = 0
        self._last_stream_id = 0
        self._block_stream = 0  # a header block still open (CONTINUATIONs to come) on this stream
        self._block = bytearray()
        self._block_flags = 0
        self._continuations = 0  # CONTINUATION frames of the open header block so far
        self._reset_ids: dict[int, None] = {}
        """Streams we sent RST_STREAM on, oldest first (``RESET_MEMORY`` of them): ignored."""
        self.send_window = DEFAULT_WINDOW
        self.blocked: set[Stream] = set()
        """Streams with data the windows held back: flushed on WINDOW_UPDATE and SETTINGS."""
        self._peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self._recv_window = CONNECTION_WINDOW
        self._recv_consumed = 0
        self._out: list[bytes] = []
        self.going_away = False
        self.idle = asyncio.Event()
        """Set while no stream is open: a graceful close waits for it."""
        self.idle.set()

    # ------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass
        settings = b"".join(
            key.to_bytes(2, "big") + value.to_bytes(4, "big")
            for key, value in (
                (SETTINGS_ENABLE_PUSH, 0),
                (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_CONCURRENT_STREAMS),
                (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME),
                (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
            )
        )
        increment = CONNECTION_WINDOW - DEFAULT_WINDOW
        self.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    if not PREFACE.startswith(bytes(buffer)):
                        raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buffer[: len(PREFACE)]
                self._preface_seen = True
            view = memoryview(buffer)
            pos, end = 0, len(buffer)
            try:
                while end - pos >= 9:
                    length = int.from_bytes(view[pos : pos + 3], "big")
                    if length > MAX_FRAME:
                        raise Http2Error(FRAME_SIZE_ERROR, f"a frame of {length} bytes is over the {MAX_FRAME}-byte limit")
                    if end - pos - 9 < length:
                        break
                    kind, flags = view[pos + 3], view[pos + 4]
                    stream_id = int.from_bytes(view[pos + 5 : pos + 9], "big") & MAX_WINDOW
                    payload = bytes(view[pos + 9 : pos + 9 + length])
                    pos += 9 + length
                    self._frame(kind, flags, stream_id, payload)
                    if self.transport is None:
                        return
            finally:
                view.release()
            del buffer[:pos]
        except Http2Error as exc:
            self.close_with(exc.code, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for stream in list(self.streams.values()):
            self._drop(stream)
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        # The client does not read what we write: stop reading what it sends, so that pings,
        # settings and requests cannot queue answers without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -------------------------------------------------------------------- frames
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block_stream and (kind != CONTINUATION or stream_id != self._block_stream):
            raise Http2Error(PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if not self._settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise Http2Error(PROTOCOL_ERROR, "the connection must start with SETTINGS")
            self._settings_seen = True
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            if stream_id or len(payload) != 8:
                raise Http2Error(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR, "malformed PING")
            if not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            if not stream_id or len(payload) != 4:
                raise Http2Error(PROTOCOL_ERROR if not stream_id else FRAME_SIZE_ERROR, "malformed RST_STREAM")
            if self._idle(stream_id):
                raise Http2Error(PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.closed_remote = stream.closed_local = True
                self._drop(stream)
        elif kind == PRIORITY:
            if not stream_id or len(payload) != 5:
                raise Http2Error(PROTOCOL_ERROR if not stream_id else FRAME_SIZE_ERROR, "malformed PRIORITY")
        elif kind == GOAWAY:
            self.going_away = True  # the client opens no more streams; answer the open ones
            if not self.streams:
                self.close()
        elif kind == PUSH_PROMISE:
            raise Http2Error(PROTOCOL_ERROR, "a client cannot push")
        # Unknown frame types are ignored (RFC 9113 §5.5).

    def _idle(self, stream_id: int) -> bool:
        """A stream never opened (RFC 9113 §5.1): above every one the client opened, or even
        (ours, and we push nothing). Any frame but HEADERS and PRIORITY on it is a connection error."""
        return stream_id > self._last_stream_id or not stream_id % 2

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise Http2Error(PROTOCOL_ERROR, "padding is longer than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise Http2Error(PROTOCOL_ERROR, "DATA on stream 0")
        if self._idle(stream_id):
            raise Http2Error(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise Http2Error(FLOW_CONTROL_ERROR, "the client sent past the connection's window")
        self._recv_consumed += size
        if self._recv_consumed >= CONNECTION_WINDOW // 2:
            self._recv_window += self._recv_consumed
            self.write(frame(WINDOW_UPDATE, 0, 0, self._recv_consumed.to_bytes(4, "big")))
            self._recv_consumed = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed_remote:
            # Reset by us or by the client in the meantime (or already half-closed): not an error
            # of the connection. In flight when we reset it: counted above (§6.9), else ignored.
            if stream is None:
                if stream_id not in self._reset_ids:  # not remembered: would push out one we reset
                    self.write(frame(RST_STREAM, 0, stream_id, STREAM_CLOSED.to_bytes(4, "big")))
            else:
                self._reset(stream, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        data = self._unpad(flags, payload)
        handler = stream.handler
        end_stream = bool(flags & END_STREAM)
        # Half-closed (remote) before the handler reads the frame: an answer it ends the stream
        # with now (a refused message) is the stream's last frame, no RST_STREAM after it.
        stream.closed_remote = end_stream
        if data and handler is not None:
            handler.data_received(data)
        if end_stream and not stream.ended and handler is not None:
            handler.end_received()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise Http2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise Http2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        self._block_flags = flags
        if flags & END_HEADERS:
            self._header_block(stream_id, payload)
        else:
            self._block_stream = stream_id
            self._block = bytearray(payload)
            self._continuations = 0

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._block_stream:
            raise Http2Error(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        self._block += payload
        if len(self._block) > MAX_HEADER_BLOCK:
            raise Http2Error(ENHANCE_YOUR_CALM, f"a header block is over {MAX_HEADER_BLOCK} bytes")
        self._continuations += 1
        if self._continuations > MAX_CONTINUATIONS:
            raise Http2Error(ENHANCE_YOUR_CALM, f"a header block is in over {MAX_CONTINUATIONS} CONTINUATION frames")
        if flags & END_HEADERS:
            block = bytes(self._block)
            self._block_stream, self._block = 0, bytearray()
            self._header_block(stream_id, block)

    def _header_block(self, stream_id: int, block: bytes) -> None:
        if len(block) > MAX_HEADER_BLOCK:
            raise Http2Error(ENHANCE_YOUR_CALM, f"a header block is over {MAX_HEADER_BLOCK} bytes")
        headers, problem = self._decode(block)
        end_stream = bool(self._block_flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: they must end the stream
            if not end_stream or stream.closed_remote:
                raise Http2Error(PROTOCOL_ERROR, f"a second header block on stream {stream_id} without END_STREAM")
            problem = malformed(headers, trailers=True)
            if problem is not None:
                log.debug("HTTP/2 stream %d reset: %s", stream_id, problem)
                self._reset(stream, PROTOCOL_ERROR)
                return
            stream.closed_remote = True
            if stream.handler is not None:
                stream.handler.end_received()
            return
        if stream_id in self._reset_ids:
            return  # trailers in flight when we reset the stream: decoded above (the table), ignored
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise Http2Error(PROTOCOL_ERROR, f"stream {stream_id} cannot be opened by the client now")
        self._last_stream_id = stream_id
        if self.going_away:
            return  # past our GOAWAY: ignored, the client retries elsewhere
        stream = Stream(stream_id, self, self._peer_initial_window)
        if problem is not None:  # a malformed request: a stream error (§8.1.1); its DATA is ignored
            log.debug("HTTP/2 stream %d reset: %s", stream_id, problem)
            stream.reset_stream(PROTOCOL_ERROR)
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            stream.reset_stream(REFUSED_STREAM)
            return
        self.streams[stream_id] = stream
        self.idle.clear()
        # A request whole in its headers is half-closed (remote) before the opener sees it: an
        # answer it gives at once (a refusal) closes the stream, no RST_STREAM after it (§5.1).
        stream.closed_remote = end_stream
        stream.handler = self._opener(stream, headers)
        if end_stream and not stream.ended:
            stream.handler.end_received()

    def _decode(self, block: bytes) -> Decoded:
        """The header list of ``block``, and why it is malformed as a request (``malformed``)
        or None; decoded even for a stream we refuse (the table is the connection's). A client
        repeats the same block for the same call once its headers are in the dynamic table, so
        a block that left the table as it was is remembered, with its verdict, keyed by the
        table's generation (any change to the table makes every cached entry stale)."""
        cached = self._decoded.get(block)
        if cached is not None and cached[0] == self._table_generation:
            return cached[1]
        table = self._decoder.header_table
        entries = table.dynamic_entries
        # Held, not copied: a new entry is a new object (``is`` below), even after an eviction.
        size, newest, maxsize = len(entries), entries[0] if entries else None, table.maxsize
        try:
            headers = [(bytes(k), bytes(v)) for k, v in self._decoder.decode(block, raw=True)]
        except hpack.OversizedHeaderListError:
            raise Http2Error(ENHANCE_YOUR_CALM, f"a header list is over {MAX_HEADER_BLOCK} bytes") from None
        except hpack.HPACKError as exc:
            raise Http2Error(COMPRESSION_ERROR, f"undecodable header block: {exc}") from None
        decoded = headers, malformed(headers)
        if len(entries) != size or table.maxsize != maxsize or (entries[0] if entries else None) is not newest:
            self._table_generation += 1
        elif len(block) <= 1024:
            if len(self._decoded) >= 256:
                self._decoded.clear()
            self._decoded[block] = (self._table_generation, decoded)
        return decoded

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise Http2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Http2Error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta, self._peer_initial_window = value - self._peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= (1 << 24) - 1:
                    raise Http2Error(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} is out of range")
                self.peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise Http2Error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            # HEADER_TABLE_SIZE: our blocks never use the dynamic table. The rest: advisory.
        self.write(frame(SETTINGS, ACK, 0))
        self._flush_blocked()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if not stream_id:
            if not increment:
                raise Http2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise Http2Error(FLOW_CONTROL_ERROR, "the connection's window is over 2^31-1")
            self._flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise Http2Error(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a stream that just ended
        if not increment:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        stream._flush()

    # ---------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the socket: everything written in one turn of the event loop
        goes out in one send (a finished batch answers dozens of streams at once)."""
        if self.transport is None:
            return
        self._out.append(data)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def write_now(self, data: bytes) -> None:
        """Send ``data`` at once when nothing waits to go before it: a lone stream's answer
        has nothing to share a send with, and waiting for the loop's next turn costs a c=1
        call that turn."""
        if self._out:
            self.write(data)
        elif self.transport is not None:
            self.transport.write(data)

    def write_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """A header block in one HEADERS frame, with CONTINUATIONs past the peer's frame size."""
        limit = self.peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            self.write(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
        out = [frame(HEADERS, flags, stream_id, chunks[0])]
        out += [frame(CONTINUATION, 0, stream_id, c) for c in chunks[1:-1]]
        out.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        self.write(b"".join(out))

    def write_reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM, the stream remembered so that what the client still sends on it is ignored."""
        self.write(frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))
        reset = self._reset_ids
        reset[stream_id] = None
        if len(reset) > RESET_MEMORY:
            del reset[next(iter(reset))]

    def write_data(self, stream: Stream, data: bytes | memoryview) -> int:
        """DATA frames for as much of ``data`` as the windows and frame size allow; the count written."""
        allowed = min(len(data), stream.send_window, self.send_window)
        if allowed <= 0:
            return 0
        limit = self.peer_max_frame
        if allowed <= limit:
            self.write(frame(DATA, 0, stream.id, bytes(data[:allowed])))
        else:
            self.write(b"".join(frame(DATA, 0, stream.id, bytes(data[i : min(i + limit, allowed)])) for i in range(0, allowed, limit)))
        stream.send_window -= allowed
        self.send_window -= allowed
        return allowed

    def _flush_blocked(self) -> None:
        for stream in list(self.blocked):
            if self.send_window <= 0:
                break
            stream._flush()

    # ---------------------------------------------------------------- lifetime
    def stream_done(self, stream: Stream) -> None:
        """The stream has sent its end: forget it. A client still sending is asked to stop
        without an error (RFC 9113 §8.1: a complete response before the whole request)."""
        if not stream.closed_remote:
            stream.closed_remote = True
            self.write_reset(stream.id, NO_ERROR)
        self._forget(stream)

    def _reset(self, stream: Stream, code: int) -> None:
        stream.reset_stream(code)
        self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        """The stream is gone: tell its handler, forget it."""
        handler = stream.handler
        self._forget(stream)
        if handler is not None:
            handler.reset()

    def _forget(self, stream: Stream) -> None:
        if stream.ended:
            return
        stream.ended = True
        stream._wake()
        self.blocked.discard(stream)
        self.streams.pop(stream.id, None)
        if not self.streams:
            self.idle.set()
            if self.going_away:
                self.close()

    def goaway(self) -> None:
        """A graceful end: no new streams; the open ones are answered, then the connection closes."""
        if self.transport is None or self.going_away:
            return
        self.going_away = True
        self.write(frame(GOAWAY, 0, 0, self._last_stream_id.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big")))
        if not self.streams:
            self.close()

    def close_with(self, code: int, message: str) -> None:
        """A connection error: GOAWAY naming it, then close."""
        log.debug("HTTP/2 connection error %d: %s", code, message)
        if self.transport is not None:
            self.write(frame(GOAWAY, 0, 0, self._last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + message.encode()[:256]))
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send()
            self.transport.close()
