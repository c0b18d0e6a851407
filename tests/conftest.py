"""Shared fixtures: model repositories built in temporary folders, and servers on 127.0.0.1.

Two ways to run a server, both real: ``serve()`` runs one in the test's own event loop on
ephemeral ports (fast; async tests with tritonclient's aio clients), and
``ServerProcess`` runs ``servegraph serve`` as a subprocess (signals, sync clients).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.server import Ports, Server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
DOUBLES = Path(__file__).resolve().parent / "doubles"


def add_model(
    repo: Path,
    name: str,
    config: dict[str, Any],
    source: str | Path,
    versions: tuple[int, ...] = (1,),
) -> Path:
    """Write ``repo/name/config.yaml`` and ``model.py`` (a double's file or inline code)."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    for version in versions:
        add_version(repo, name, version, source)
    return model_dir


def add_version(repo: Path, name: str, version: int, source: str | Path) -> Path:
    target = repo / name / str(version)
    target.mkdir(parents=True, exist_ok=True)
    if isinstance(source, Path):
        shutil.copy(source, target / "model.py")
    else:
        (target / "model.py").write_text(source)
    return target


def fp32_model_config(max_batch_size: int = 8, dims: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    dims = dims or [4]
    return {
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": dims}],
        "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": dims}],
        **extra,
    }


@contextlib.asynccontextmanager
async def serve(repo: Path, **settings: Any) -> AsyncIterator[Server]:
    """A started in-process server on ephemeral 127.0.0.1 ports; drained on exit."""
    options: dict[str, Any] = {
        "model_repository": str(repo),
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "repository_poll_secs": 0,
        "exit_timeout_secs": 10,
    }
    options.update(settings)
    server = Server(ServerSettings(**options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def http_url(ports: Ports) -> str:
    return f"127.0.0.1:{ports.http}"


def grpc_url(ports: Ports) -> str:
    return f"127.0.0.1:{ports.grpc}"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class ServerProcess:
    """``servegraph serve`` as a child process (for signal tests and sync clients), on ports
    the kernel picks: it binds port 0 and reports them in its ``--ports-file``."""

    def __init__(self, repo: Path, *args: str) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="servegraph-test-"))
        self._ports_file = self._folder / "ports.json"
        self._ports: Ports | None = None
        command = [
            sys.executable, "-m", "servegraph", "serve",
            "--model-repository", str(repo),
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
            "--ports-file", str(self._ports_file),
            *args,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._output: str | None = None

    @property
    def ports(self) -> Ports:
        """The ports it bound, once it has reported them (waits up to 60 s)."""
        deadline = time.monotonic() + 60
        while self._ports is None:
            if self._ports_file.exists():
                self._ports = Ports(**json.loads(self._ports_file.read_text()))
            elif self.process.poll() is not None:
                raise AssertionError(f"server exited before it listened:\n{self.output()}")
            elif time.monotonic() > deadline:
                raise AssertionError("server did not report its ports within 60 s")
            else:
                time.sleep(0.02)
        return self._ports

    @property
    def http(self) -> int:
        return self.ports.http

    @property
    def grpc(self) -> int:
        return self.ports.grpc

    @property
    def metrics(self) -> int:
        return self.ports.metrics

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def ready(self) -> bool:
        return http_status(f"http://{self.http_url}/v2/health/ready") == 200

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            if self.ready():
                return self
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        if self._output is None:
            assert self.process.stdout is not None
            self._output = self.process.stdout.read().decode(errors="replace")[-4000:]
            self.process.stdout.close()
        return self._output

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.output()
        shutil.rmtree(self._folder, ignore_errors=True)
        return code


@pytest.fixture(scope="session")
def example_server_one_process() -> Iterator[ServerProcess]:
    """The examples/ repository served by a real ``servegraph serve`` process, defaults only."""
    server = ServerProcess(EXAMPLES, "--repository-poll-secs", "0").wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def example_server(example_server_one_process: ServerProcess) -> ServerProcess:
    """The examples' server (a module may override it to run its tests in more modes:
    tests/runtime/frontend_modes.py)."""
    return example_server_one_process


HTTP_SERVERS = ("aiohttp", "uvicorn")
"""Every REST transport (``--http-server``): the HTTP suites run against each."""

DEFAULT_HTTP_SERVER: str = ServerSettings.model_fields["http_server"].default


@pytest.fixture(params=HTTP_SERVERS)
def http_server(request: pytest.FixtureRequest) -> str:
    """Each REST transport in turn, for in-process servers: ``serve(repo, http_server=...)``."""
    return str(request.param)


@pytest.fixture(scope="session")
def example_server_aiohttp() -> Iterator[ServerProcess]:
    """The examples/ repository on the REST transport that is not the default."""
    other = next(name for name in HTTP_SERVERS if name != DEFAULT_HTTP_SERVER)
    server = ServerProcess(EXAMPLES, "--repository-poll-secs", "0", "--http-server", other).wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=HTTP_SERVERS)
def example_http_server(request: pytest.FixtureRequest) -> ServerProcess:
    """The examples/ repository served with each REST transport in turn (the default one is
    ``example_server`` itself)."""
    name = "example_server_one_process" if request.param == DEFAULT_HTTP_SERVER else "example_server_aiohttp"
    server: ServerProcess = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="session")
def example_server_workers() -> Iterator[ServerProcess]:
    """The examples/ repository behind two front-end workers (``--frontend-workers 2``)."""
    server = ServerProcess(EXAMPLES, "--repository-poll-secs", "0", "--frontend-workers", "2").wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def example_server_workers_aiohttp() -> Iterator[ServerProcess]:
    """Two front-end workers serving REST on the transport that is not the default."""
    other = next(name for name in HTTP_SERVERS if name != DEFAULT_HTTP_SERVER)
    server = ServerProcess(
        EXAMPLES, "--repository-poll-secs", "0", "--frontend-workers", "2", "--http-server", other
    ).wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


async def eventually(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Async twin of ``wait_until``: poll without blocking the event loop the server runs in."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Gate:
    """Controls tests/doubles/gated.py: the model blocks until ``open()``; ``entered()`` lists
    the batches it started, as (rows, first values) pairs."""

    def __init__(self, folder: Path) -> None:
        self.gate = folder / "gate"
        self.log = folder / "entered"
        self.log.write_text("")

    def parameters(self) -> dict[str, str]:
        return {"gate": str(self.gate), "entered": str(self.log)}

    def open(self) -> None:
        self.gate.write_text("open")

    def entered(self) -> list[tuple[int, list[float]]]:
        import ast

        rows = []
        for line in self.log.read_text().splitlines():
            count, values = line.split(" ", 1)
            rows.append((int(count), ast.literal_eval(values)))
        return rows


# ------------------------------------------------------------- error-path helpers
# Shared by tests/runtime/test_errors.py and test_fuzz.py: raw HTTP (so bodies can be
# malformed on purpose) and the "then a valid request still succeeds" check of Triton's
# L0_large_payload pattern.

ADD_SUB_ONES = {
    "inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
        {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
    ]
}
"""A small valid add_sub request: OUTPUT0 = 2, OUTPUT1 = 0 everywhere."""


class HttpReply:
    """Status, lower-cased headers and body of one HTTP answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"HttpReply({self.status}, {self.body[:300]!r})"

    def error(self) -> str:
        """The message of an error reply, checking the body is exactly ``{"error": str}``."""
        import json

        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        payload = json.loads(self.body)
        assert isinstance(payload, dict) and set(payload) == {"error"}, payload
        assert isinstance(payload["error"], str), payload
        return payload["error"]


def http_request(
    address: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> HttpReply:
    """Send raw bytes with ``http.client`` (no client-side checks); a hang fails at 30 s."""
    import http.client

    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpReply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def assert_still_serves(server: ServerProcess) -> None:
    """A small valid add_sub request succeeds over HTTP and over gRPC (end of every negative test)."""
    import json

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    reply = http_request(server.http_url, "POST", "/v2/models/add_sub/infer", json.dumps(ADD_SUB_ONES).encode())
    assert reply.status == 200, reply
    outputs = {o["name"]: o["data"] for o in json.loads(reply.body)["outputs"]}
    assert outputs == {"OUTPUT0": [2.0] * 16, "OUTPUT1": [0.0] * 16}
    request = pb.ModelInferRequest(model_name="add_sub")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 16]).contents.fp32_contents.extend([1.0] * 16)
    with grpc.insecure_channel(server.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert response.raw_output_contents[0] == b"\x00\x00\x00\x40" * 16  # 2.0f little-endian


# ------------------------------------------------------------------ graph nodes


@contextlib.asynccontextmanager
async def serve_node(node: Any, **settings: Any) -> AsyncIterator[Server]:
    """A graph node (router, combiner or transformer) served in-process on ephemeral ports.

    ``node`` is a NodeConfig or its dict; children are polled every 50 ms so readiness
    follows them quickly.
    """
    from servegraph.runtime.graph.config import NodeConfig

    options: dict[str, Any] = {
        "http_port": 0,
        "grpc_port": 0,
        "metrics_port": 0,
        "repository_poll_secs": 0,
        "exit_timeout_secs": 10,
        "child_poll_secs": 0.05,
    }
    options.update(settings)
    config = node if isinstance(node, NodeConfig) else NodeConfig.model_validate(node)
    server = Server(ServerSettings(**options), node=config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
