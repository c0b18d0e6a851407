"""Bare transport ceilings: request/response servers with no model, one core, same client.

Each candidate answers ``ModelInfer`` / ``POST /v2/models/mlp/infer`` for the bench MLP with
the answer computed once at start (every loadgen request carries the same row), so
bench/loadgen.py's correctness check passes and the server does nothing but its transport
and a zero-copy read of the input tensor. Servers run on core 0, the client (tritonclient
aio, c=64 by default) on core 1; candidates are interleaved over ``--rounds`` rounds and the
medians reported, with the server's CPU µs per request from /proc (robust to a contended
machine) next to requests/s (not robust).

    python bench/transport_ceiling.py                      # every candidate that is installed
    python bench/transport_ceiling.py --candidates grpc-pb,grpc-raw --requests 5000

Candidates:
  grpc-pb        grpc.aio, protobuf-deserialising servicer (servegraph before this change)
  grpc-raw       grpc.aio generic handler with request_deserializer=None: the handler parses
                 raw_input_contents zero-copy and answers pre-serialised bytes
  grpc-http2     servegraph's own HTTP/2 connection (servers/http2.py, the default gRPC
                 transport) with a bare unary handler answering pre-serialised bytes
  grpc-h2        the same over the pure-Python ``h2`` state machine (pip install h2)
  http-aiohttp   aiohttp (uvloop), servegraph's REST transport
  http-granian   granian (Rust, RSGI interface), one worker
  http-uvicorn   uvicorn + httptools (uvloop), a bare ASGI app
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from mlp_model import INPUT_NAME, MLP, MODEL_NAME, OUTPUT_NAME, sample_input  # noqa: E402

CANDIDATES = ("grpc-pb", "grpc-raw", "grpc-http2", "grpc-h2", "http-aiohttp", "http-granian", "http-uvicorn")
SERVICE = "inference.GRPCInferenceService"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer() -> bytes:
    return MLP()(sample_input(1)).astype("<f4").tobytes()


# --- the bare servers (run in the child process) ------------------------------------------


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def raw_inputs(data: bytes) -> list[memoryview]:
    """raw_input_contents (field 7) of a serialised ModelInferRequest, zero-copy."""
    view = memoryview(data)
    pos, end, out = 0, len(view), []
    while pos < end:
        key, pos = _read_varint(view, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _read_varint(view, pos)
            if key >> 3 == 7:
                out.append(view[pos : pos + length])
            pos += length
        elif wire == 0:
            _, pos = _read_varint(view, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def serve_grpc(port: int, raw: bool) -> None:
    import asyncio

    import grpc
    import numpy as np
    import uvloop
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version="1")
    response.outputs.add(name=OUTPUT_NAME, datatype="FP32", shape=[1, 16])
    response.raw_output_contents.append(answer())
    response_bytes = response.SerializeToString()

    class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request, context):  # noqa: N802
            np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
            return response

    async def model_infer_raw(request: bytes, context: object) -> bytes:
        np.frombuffer(raw_inputs(request)[0], dtype=np.float32)
        return response_bytes

    async def main() -> None:
        extra = json.loads(os.environ.get("CEILING_GRPC_OPTIONS", "[]"))
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), *map(tuple, extra)])
        if raw:
            handler = grpc.unary_unary_rpc_method_handler(model_infer_raw)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
        else:
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _grpc_answer() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    response = pb.ModelInferResponse(model_name=MODEL_NAME, model_version="1")
    response.outputs.add(name=OUTPUT_NAME, datatype="FP32", shape=[1, 16])
    response.raw_output_contents.append(answer())
    message = response.SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def serve_grpc_http2(port: int) -> None:
    """servegraph's HTTP/2 connection, a task per call as the real server runs one."""
    import asyncio

    import numpy as np
    import uvloop

    from servegraph.runtime.servers import http2

    framed = _grpc_answer()
    headers = http2.encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
    trailers = http2.encode_headers([(b"grpc-status", b"0")])

    class Call:
        def __init__(self, stream: http2.Stream) -> None:
            self.stream, self.chunks = stream, []

        def data_received(self, data: bytes) -> None:
            self.chunks.append(data)
            self.stream.grant(len(data))

        def end_received(self) -> None:
            asyncio.get_running_loop().create_task(self.answer(b"".join(self.chunks)))

        def reset(self) -> None:
            pass

        async def answer(self, body: bytes) -> None:
            np.frombuffer(raw_inputs(body[5:])[0], dtype=np.float32)
            self.stream.send_response(headers, framed, trailers)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: http2.Http2Connection(lambda s, h: Call(s)), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def serve_grpc_h2(port: int) -> None:
    """The same over python-hyper's h2 state machine."""
    import asyncio

    import numpy as np
    import uvloop
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, RequestReceived, StreamEnded

    framed = _grpc_answer()
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    trailers = [(b"grpc-status", b"0")]

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport, self.bodies = transport, {}
            self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
            self.h2.initiate_connection()
            transport.write(self.h2.data_to_send())

        def data_received(self, data: bytes) -> None:
            for event in self.h2.receive_data(data):
                if isinstance(event, RequestReceived):
                    self.bodies[event.stream_id] = []
                elif isinstance(event, DataReceived):
                    self.bodies[event.stream_id].append(event.data)
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    body = b"".join(self.bodies.pop(event.stream_id))
                    asyncio.get_running_loop().create_task(self.answer(event.stream_id, body))
            self.transport.write(self.h2.data_to_send())

        async def answer(self, stream_id: int, body: bytes) -> None:
            np.frombuffer(raw_inputs(body[5:])[0], dtype=np.float32)
            self.h2.send_headers(stream_id, headers)
            self.h2.send_data(stream_id, framed)
            self.h2.send_headers(stream_id, trailers, end_stream=True)
            self.transport.write(self.h2.data_to_send())

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def _http_body() -> tuple[bytes, bytes]:
    blob = answer()
    header = json.dumps({
        "model_name": MODEL_NAME, "model_version": "1",
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [1, 16],
                     "parameters": {"binary_data_size": len(blob)}}],
    }, separators=(",", ":")).encode()
    return header + blob, str(len(header)).encode()


def _input_view(body: bytes, header_length: bytes | str | None) -> memoryview:
    n = int(header_length) if header_length is not None else len(body)
    json.loads(body[:n])  # the JSON header is parsed, as a real server must
    return memoryview(body)[n:]


def serve_aiohttp(port: int) -> None:
    import numpy as np
    import uvloop
    from aiohttp import web

    body, length = _http_body()
    headers = {"Inference-Header-Content-Length": length.decode()}

    async def infer(request: web.Request) -> web.Response:
        data = await request.read()
        np.frombuffer(_input_view(data, request.headers.get("Inference-Header-Content-Length")), dtype=np.float32)
        return web.Response(body=body, content_type="application/octet-stream", headers=headers)

    app = web.Application()
    app.router.add_post(f"/v2/models/{MODEL_NAME}/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, loop=uvloop.new_event_loop())


def _asgi_app(body: bytes, length: bytes):  # type: ignore[no-untyped-def]
    import numpy as np

    start = {
        "type": "http.response.start", "status": 200,
        "headers": [(b"content-type", b"application/octet-stream"),
                    (b"inference-header-content-length", length),
                    (b"content-length", str(len(body)).encode())],
    }
    done = {"type": "http.response.body", "body": body}

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = b"".join(chunks)
        header_length = dict(scope["headers"]).get(b"inference-header-content-length")
        np.frombuffer(_input_view(data, header_length), dtype=np.float32)
        await send(start)
        await send(done)

    return app


def serve_uvicorn(port: int) -> None:
    import uvicorn

    app = _asgi_app(*_http_body())
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False, lifespan="off")


def granian_app():  # type: ignore[no-untyped-def]
    """The RSGI app granian imports (``transport_ceiling:granian_app()``)."""
    import numpy as np

    body, length = _http_body()
    headers = [("content-type", "application/octet-stream"), ("inference-header-content-length", length.decode())]

    async def app(scope, proto):  # type: ignore[no-untyped-def]
        data = await proto()
        np.frombuffer(_input_view(data, scope.headers.get("inference-header-content-length")), dtype=np.float32)
        proto.response_bytes(200, headers, body)

    return app


def serve_granian(port: int) -> None:
    os.execvp(sys.executable, [
        sys.executable, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
        "--factory", "transport_ceiling:granian_app",
    ])


SERVE = {
    "grpc-pb": lambda port: serve_grpc(port, raw=False),
    "grpc-raw": lambda port: serve_grpc(port, raw=True),
    "grpc-http2": serve_grpc_http2,
    "grpc-h2": serve_grpc_h2,
    "http-aiohttp": serve_aiohttp,
    "http-granian": serve_granian,
    "http-uvicorn": serve_uvicorn,
}
REQUIRES = {"grpc-h2": "h2", "http-granian": "granian", "http-uvicorn": "uvicorn"}


# --- the driver ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[ceiling] {message}", file=sys.stderr, flush=True)


def wait_port(port: int, proc: procs.ServerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port}")


def drive(candidate: str, port: int, pid: int, concurrency: int, requests: int) -> dict:
    protocol = "grpc" if candidate.startswith("grpc") else "http"
    spec = {
        "protocol": protocol, "http_port": port, "grpc_port": port, "concurrencies": [concurrency],
        "seconds": 0.0, "warmup": 0.0, "server_pid": pid, "requests": requests,
    }
    return procs.counted_cell(spec, candidate)


def measure(candidate: str, args: argparse.Namespace, workdir: Path) -> tuple[float, float, float]:
    """(requests/s, server CPU µs per request, client CPU share) of one round."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", candidate, str(port)]
    env = {"PYTHONPATH": f"{BENCH}:{BENCH.parent / 'src'}"}
    server = procs.start_server(candidate, cmd, workdir / f"{candidate}.log", env=env, cwd=BENCH)
    try:
        wait_port(port, server)
        drive(candidate, port, server.pid, args.concurrency, args.warmup_requests)
        cell = drive(candidate, port, server.pid, args.concurrency, args.requests)
    finally:
        server.stop()
    rate = cell["rows_per_s"]
    return rate, cell["server_cpu"] / max(rate, 1e-9) * 1e6, cell["client_cpu"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--warmup-requests", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve", nargs=2, metavar=("CANDIDATE", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        SERVE[args.serve[0]](int(args.serve[1]))
        return 0
    import importlib.util
    import tempfile

    candidates = []
    for c in args.candidates.split(","):
        if c not in SERVE:
            p.error(f"unknown candidate {c}; choose from {CANDIDATES}")
        if (mod := REQUIRES.get(c)) and importlib.util.find_spec(mod) is None:
            log(f"{c}: {mod} is not installed; skipped")
            continue
        candidates.append(c)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in candidates}
    with tempfile.TemporaryDirectory(prefix="servegraph-ceiling-") as tmp:
        for r in range(args.rounds):
            for c in candidates:
                log(f"round {r + 1}/{args.rounds}: {c}")
                try:
                    results[c].append(measure(c, args, Path(tmp)))
                except Exception as exc:  # one broken candidate does not end the run
                    log(f"{c} failed: {exc}")
    print(f"Bare transport ceilings, c={args.concurrency}, {args.requests} requests, median of "
          f"{args.rounds} interleaved rounds (server on core {procs.SERVER_CORE}, client on core "
          f"{procs.CLIENT_CORE}; load average at start {load})\n")
    print("| candidate | requests/s | server CPU µs/request | client CPU share |")
    print("|---|---:|---:|---:|")
    for c, rows in results.items():
        if not rows:
            print(f"| {c} | failed | | |")
            continue
        print(f"| {c} | {statistics.median(r[0] for r in rows):.0f} | {statistics.median(r[1] for r in rows):.0f} "
              f"| {statistics.median(r[2] for r in rows):.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
