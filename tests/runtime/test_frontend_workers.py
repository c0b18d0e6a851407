"""``servegraph serve --frontend-workers N``: what the workers add beyond the conformance
tests (which run in both modes through ``frontend_modes``): spreading, proxying, shared
memory, and the workers' life and death. Real servers on 127.0.0.1, tritonclient, no mocks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncio
import gzip
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servegraph.runtime.frontend import groups
from servegraph.runtime.protocol.types import InferRequest, RequestedOutput
from tests.conftest import DOUBLES, EXAMPLES, Gate, ServerProcess, add_model, eventually, fp32_model_config, http_request, wait_until


def _metric(server: ServerProcess, name: str) -> dict[str, float]:
    """Samples of one metric on the server's metrics port, by their label text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{[^}}]*\}})? (\S+)", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def _workers(server: ServerProcess) -> set[int]:
    """The server's child processes: its front-end workers."""
    pid = server.process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:  # the server has gone
        return set()
    return {int(child) for child in children}


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # a zombie has exited; only its entry waits to be reaped


def _add_sub(client: httpclient.InferenceServerClient, value: float, rows: int = 1) -> np.ndarray:
    x = np.full((rows, 16), value, np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [rows, 16], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        inputs.append(tensor)
    result = client.infer("add_sub", inputs)
    return result.as_numpy("OUTPUT0")


@pytest.fixture
def workers_server(repo: Path) -> ServerProcess:
    """A server of its own with two workers (tests here kill its processes): add_sub, and an
    echo model whose tensors may be of any width."""
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    config = {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": [-1]}],
        "output": [
            {"name": "OUTPUT", "data_type": "FP32", "dims": [-1]},
            {"name": "ROWSUM", "data_type": "FP32", "dims": [1]},
        ],
    }
    add_model(repo, "echo", config, DOUBLES / "echo.py")
    server = ServerProcess(repo, "--repository-poll-secs", "0", "--frontend-workers", "2").wait_ready()
    yield server  # type: ignore[misc]
    server.stop()


def test_connections_land_on_more_than_one_worker(example_server_workers: ServerProcess) -> None:
    before = _metric(example_server_workers, "servegraph_frontend_requests_total")
    assert set(before) == {'{worker="0"}', '{worker="1"}'}

    def calls(value: float) -> None:  # one connection per thread: the kernel spreads connections
        client = httpclient.InferenceServerClient(example_server_workers.http_url)
        for _ in range(5):
            np.testing.assert_array_equal(_add_sub(client, value), np.full((1, 16), 2 * value))
        client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(calls, range(16)))
    after = _metric(example_server_workers, "servegraph_frontend_requests_total")
    grew = {label: after[label] - before[label] for label in after}
    assert sum(grew.values()) == 80
    assert all(count > 0 for count in grew.values()), grew


def test_tensors_of_every_size_travel_and_come_back_right(workers_server: ServerProcess) -> None:
    """Up to 16 KiB a tensor travels as raw bytes in the descriptor, up to a slot's size
    (1 MiB) through shared memory, and over it inline: each way the same answer."""
    client = httpclient.InferenceServerClient(workers_server.http_url, network_timeout=60)
    for columns in (16, 4096, 300_000):  # 128 bytes, 32 KiB, 2.4 MB
        x = np.arange(2 * columns, dtype=np.float32).reshape(2, columns)
        tensor = httpclient.InferInput("INPUT", [2, columns], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("echo", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x)
        np.testing.assert_array_equal(result.as_numpy("ROWSUM"), x.sum(axis=1, keepdims=True))


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        ("POST", "/v2/repository/index", b"not gzip", {"Content-Encoding": "gzip"}),
        ("GET", "/v2/models/add_sub/infer", b"", {}),
        ("GET", "/v2/no/such/route", b"", {}),
        ("POST", "/v2/repository/models/add_sub/load", b"", {}),
        ("GET", "/v2/models/nope/stats", b"", {}),
        ("POST", "/v2/models/add_sub/feedback", b'{"id": "x", "reward": 1}', {}),
        ("POST", "/v2/models/nope/infer", b'{"inputs": []}', {}),
        ("POST", "/v2/models/add_sub/infer", b"{not json", {}),
    ],
    ids=["misencoded", "wrong-method", "unknown-route", "model-control", "unknown-stats", "feedback", "unknown-model", "bad-json"],
)
@pytest.mark.parametrize(
    ("one_process", "workers"),
    [("example_server", "example_server_workers"), ("example_server_aiohttp", "example_server_workers_aiohttp")],
    ids=["uvicorn", "aiohttp"],
)
def test_workers_answer_what_one_process_answers(
    request: pytest.FixtureRequest,
    one_process: str,
    workers: str,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """Byte for byte, against one process on the same REST transport."""
    one = http_request(request.getfixturevalue(one_process).http_url, method, path, body, headers)
    two = http_request(request.getfixturevalue(workers).http_url, method, path, body, headers)
    assert (two.status, two.body, two.headers.get("allow")) == (one.status, one.body, one.headers.get("allow"))


def test_statistics_through_a_worker_are_the_model_processs(example_server_workers: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(example_server_workers.http_url)
    grpc = grpcclient.InferenceServerClient(example_server_workers.grpc_url)

    def count() -> int:
        stats = grpc.get_inference_statistics("add_sub", as_json=True)["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = count()
    _add_sub(client, 1.0)
    assert count() == before + 1  # read right after the answer: proxied, never a stale mirror


def test_a_killed_worker_is_restarted_and_the_server_serves_on(workers_server: ServerProcess) -> None:
    first = _workers(workers_server)
    assert len(first) == 2
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: _metric(workers_server, "servegraph_frontend_restarts_total") == {"": 1.0}, what="a restart")
    wait_until(lambda: _metric(workers_server, "servegraph_frontend_workers") == {"": 2.0}, what="two workers again")
    assert victim not in _workers(workers_server)
    assert workers_server.ready()
    client = httpclient.InferenceServerClient(workers_server.http_url)
    for _ in range(8):
        np.testing.assert_array_equal(_add_sub(client, 3.0), np.full((1, 16), 6.0))
    assert workers_server.stop() == 0


def test_a_crash_loop_fails_the_server_loudly(workers_server: ServerProcess) -> None:
    """Never a silent half-server: workers that keep dying end the server, exit 1, saying why."""

    def exited() -> bool:
        return workers_server.process.poll() is not None

    def settled(restarts: int) -> bool:  # the last death seen, its replacement listening
        try:
            return _metric(workers_server, "servegraph_frontend_restarts_total") == {"": float(restarts)} and (
                _metric(workers_server, "servegraph_frontend_workers") == {"": 2.0}
            )
        except OSError:  # exiting: the metrics port has closed
            return False

    for restarts in range(6):
        wait_until(lambda: exited() or settled(restarts), what=f"{restarts} restarts")
        if exited():
            break
        os.kill(min(pid for pid in _workers(workers_server) if not _gone(pid)), signal.SIGKILL)
    wait_until(lambda: workers_server.process.poll() is not None, what="the server's exit")
    assert workers_server.process.returncode == 1
    last = workers_server.output().strip().splitlines()[-1]
    assert last.startswith("servegraph serve: front-end worker") and "6th death within 60 s: giving up" in last


def test_workers_die_with_the_server_and_leave_no_shared_memory(workers_server: ServerProcess) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    workers = _workers(workers_server)
    for pid in workers:  # tensors do travel in shared memory: an anonymous memfd, no name
        assert "/memfd:servegraph-frontend-" in Path(f"/proc/{pid}/maps").read_text()
    workers_server.process.kill()
    workers_server.process.wait()
    wait_until(lambda: all(_gone(pid) for pid in workers), what="the workers to die with the server")
    assert set(os.listdir("/dev/shm")) == shm_before


def test_sigterm_stops_the_workers_and_cleans_up(workers_server: ServerProcess) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    workers = _workers(workers_server)
    private = list(Path(tempfile.gettempdir()).glob(f"servegraph-frontend-{workers_server.process.pid}-*"))
    assert len(private) == 1  # the model process's unix sockets for the workers' proxied routes
    assert workers_server.stop() == 0
    assert all(_gone(pid) for pid in workers)
    assert set(os.listdir("/dev/shm")) == shm_before
    assert not private[0].exists()


@pytest.mark.parametrize("grpc_server", ["http2", "grpcio"])
def test_workers_serve_grpc_on_either_grpc_server(repo: Path, grpc_server: str) -> None:
    """``--grpc-server`` applies to the workers too: inference runs through a worker, every
    other RPC is the model process's answer, its errors relayed with their status."""
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    server = ServerProcess(
        repo, "--repository-poll-secs", "0", "--frontend-workers", "2", "--grpc-server", grpc_server
    ).wait_ready()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(x)
            inputs.append(tensor)
        for _ in range(8):  # new channels: the kernel spreads them over both workers
            result = grpcclient.InferenceServerClient(server.grpc_url).infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
        assert client.get_model_metadata("add_sub").name == "add_sub"
        assert client.is_server_ready()
        with pytest.raises(Exception) as raised:
            client.get_model_metadata("nope")
        assert raised.value.status() == "StatusCode.NOT_FOUND"  # type: ignore[attr-defined]
        assert "unknown model: 'nope'" in str(raised.value)
        assert sum(_metric(server, "servegraph_frontend_requests_total").values()) >= 8
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("server_name", ["example_server_workers", "example_server_workers_aiohttp"], ids=["uvicorn", "aiohttp"])
def test_workers_serve_rest_on_either_http_server(request: pytest.FixtureRequest, server_name: str) -> None:
    """``--http-server`` applies to the workers too: inference runs through a worker (its
    count grows), every other route is the model process's answer, query, decoded body and
    errors included."""
    server: ServerProcess = request.getfixturevalue(server_name)
    before = sum(_metric(server, "servegraph_frontend_requests_total").values())
    for value in range(4):  # new connections: the kernel spreads them over both workers
        client = httpclient.InferenceServerClient(server.http_url)
        np.testing.assert_array_equal(_add_sub(client, float(value)), np.full((1, 16), 2.0 * value))
        client.close()
    assert sum(_metric(server, "servegraph_frontend_requests_total").values()) == before + 4
    metadata = http_request(server.http_url, "GET", "/v2/models/add_sub")
    assert metadata.status == 200 and json.loads(metadata.body)["name"] == "add_sub"
    index = http_request(server.http_url, "POST", "/v2/repository/index", gzip.compress(b'{"ready": true}'), {"Content-Encoding": "gzip"})
    assert index.status == 200 and "add_sub" in {entry["name"] for entry in json.loads(index.body)}
    missing = http_request(server.http_url, "GET", "/v2/models/nope/config?x=%2F")
    assert missing.status == 404 and "unknown model: 'nope'" in json.loads(missing.body)["error"]


def test_slots_are_reused_last_in_first_out_and_views_are_read_only() -> None:
    """A request's tensors in shared memory are read-only views (as a request's own bytes are
    in one process): a model call that outlives its cancelled request cannot write into the
    slot the next request takes. Slots are reused last in, first out, so the pages touched
    follow peak concurrency, not the whole arena."""
    from servegraph.runtime.frontend.arena import SlotArena

    from servegraph.runtime.frontend.arena import SMALL_TENSOR, RawTensor, TensorRef

    arena = SlotArena.create("servegraph-test", slots=8, slot_bytes=4 * SMALL_TENSOR)
    try:
        first = arena.acquire()
        assert first is not None
        big = np.arange(2 * SMALL_TENSOR // 4, dtype=np.float32)  # over SMALL_TENSOR: a slot
        carried = arena.put(first, False, {"X": big, "Y": np.arange(4, dtype=np.float32)})
        assert isinstance(carried["X"], TensorRef) and isinstance(carried["Y"], RawTensor)
        arrays = arena.view(carried)
        np.testing.assert_array_equal(arrays["X"], big)
        np.testing.assert_array_equal(arrays["Y"], np.arange(4, dtype=np.float32))
        for name in ("X", "Y"):
            with pytest.raises(ValueError, match="read-only"):
                arrays[name] += 1
        arena.release(first)
        assert arena.acquire() == first
    finally:
        del arrays
        arena.close()


# ------------------------------------------------------------ alike requests as one


def _request(x: np.ndarray, **fields: object) -> InferRequest:
    return InferRequest("m", "", {"X": x}, {"X": "FP32"}, **fields)  # type: ignore[arg-type]


def test_only_requests_that_differ_in_their_rows_share_a_group_key() -> None:
    one = groups.group_key(_request(np.zeros((1, 4), np.float32)))
    assert one is not None and one[1] == 1
    three = groups.group_key(_request(np.ones((3, 4), np.float32), id="other caller"))
    assert three is not None and (three[0], three[1]) == (one[0], 3)
    differ = [
        _request(np.zeros((1, 5), np.float32)),  # another inner shape
        _request(np.zeros((1, 4), np.float64)),  # another dtype
        _request(np.zeros((1, 4), np.float32), outputs=[RequestedOutput("Y")]),
        InferRequest("m", "2", {"X": np.zeros((1, 4), np.float32)}, {"X": "FP32"}),
        _request(np.zeros((1, 4), np.float32), binary_output_default=True, parameters={"binary_data_output": True}),
    ]
    assert all((key := groups.group_key(r)) is not None and key[0] != one[0] for r in differ)
    alone = [
        _request(np.zeros((1, 4), np.float32), deadline=1.0),  # a deadline of its own
        _request(np.zeros((1, 4), np.float32), parameters={"priority": 1}),  # read by the model process
        _request(np.zeros((1, 4), np.float32), input_parameters={"X": {"shared_memory_region": "r"}}),
        _request(np.zeros((1, 4), np.float32), outputs=[RequestedOutput("Y", parameters={"classification": [1]})]),
        _request(np.array(["a"], dtype=object)),  # BYTES: no fixed size
        _request(np.float32(1.0).reshape(())),  # no batch dimension
        _request(np.zeros((0, 4), np.float32)),  # no rows
        InferRequest("m", "", {"A": np.zeros((1, 4), np.float32), "B": np.zeros((2, 4), np.float32)}, {}),
    ]
    assert [groups.group_key(r) for r in alone] == [None] * len(alone)


def test_a_groups_answer_splits_back_into_each_members_rows() -> None:
    members = [_request(np.full((rows, 2), rows, np.float32)) for rows in (1, 3, 2)]
    merged = groups.merge(members)
    assert merged["X"].shape == (6, 2)
    shares = groups.split({"Y": merged["X"] * 10}, (1, 3, 2))
    assert [share["Y"][:, 0].tolist() for share in shares] == [[10], [30, 30, 30], [20, 20]]
    with pytest.raises(ValueError, match="not 6 rows"):
        groups.split({"Y": np.zeros((5, 2))}, (1, 3, 2))


TILED = 150_000
TILER = f'''
import numpy as np


class Tiler:
    """OUTPUT: each row's first value repeated {TILED} times (600 KB a row from 16 bytes)."""

    def predict(self, inputs):
        x = inputs["INPUT"]
        return {{"OUTPUT": np.repeat(x[:, :1], {TILED}, axis=1)}}
'''


@pytest.fixture
def grouping_server(repo: Path) -> ServerProcess:
    """One worker (so every connection meets it): add_sub (dynamic batching, up to 8 rows),
    an echo that takes 2 rows a batch, and an echo without dynamic batching."""
    shutil.copytree(EXAMPLES / "add_sub", repo / "add_sub")
    config = {
        "backend": "python",
        "max_batch_size": 2,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [4]}, {"name": "ROWSUM", "data_type": "FP32", "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 500},
    }
    add_model(repo, "echo2", config, DOUBLES / "echo.py")
    add_model(repo, "echo_unbatched", {**config, "max_batch_size": 8, "dynamic_batching": None}, DOUBLES / "echo.py")
    wide = {"input": [{"name": "INPUT", "data_type": "FP32", "dims": [-1]}], "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [-1]}, {"name": "ROWSUM", "data_type": "FP32", "dims": [1]}]}
    add_model(repo, "echo_wide", {**config, **wide, "max_batch_size": 8}, DOUBLES / "echo.py")
    tiles = {
        **config, "max_batch_size": 8, "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [TILED]}],
    }  # fmt: skip
    add_model(repo, "tiler", tiles, TILER)
    server = ServerProcess(repo, "--repository-poll-secs", "0", "--frontend-workers", "1").wait_ready()
    yield server  # type: ignore[misc]
    server.stop()


def _stats(server: ServerProcess, model: str) -> tuple[int, int]:
    """The model's (success, fail) request counts."""
    stats = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(model, as_json=True)
    inference = stats["model_stats"][0]["inference_stats"]
    return int(inference["success"].get("count", 0)), int(inference["fail"].get("count", 0))


def _grouped(server: ServerProcess) -> float:
    return sum(_metric(server, "servegraph_frontend_grouped_requests_total").values())


def _forwarded(server: ServerProcess) -> float:
    return sum(_metric(server, "servegraph_frontend_requests_total").values())


async def _burst(server: ServerProcess, model: str, inputs_of: list[list[grpcaio.InferInput]]) -> list[object]:
    """Every request at once on one connection: a result or the exception, in order."""
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        calls = [client.infer(model, inputs, request_id=f"r{i}") for i, inputs in enumerate(inputs_of)]
        return list(await asyncio.gather(*calls, return_exceptions=True))
    finally:
        await client.close()


def _add_sub_inputs(value: float, datatype: str = "FP32") -> list[grpcaio.InferInput]:
    x = np.full((1, 16), value, np.float32 if datatype == "FP32" else np.int32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcaio.InferInput(name, [1, 16], datatype)
        tensor.set_data_from_numpy(x)
        inputs.append(tensor)
    return inputs


async def test_alike_requests_run_as_one_and_each_caller_gets_its_own_answer(grouping_server: ServerProcess) -> None:
    """Requests that reach a worker together cross to the model process as one; each caller
    still gets its own rows and id, and the statistics count every request."""
    success, fail = _stats(grouping_server, "add_sub")
    grouped, sent = _grouped(grouping_server), 0
    for _ in range(20):  # until some arrive in one loop turn (the first in a few bursts at most)
        results = await _burst(grouping_server, "add_sub", [_add_sub_inputs(v) for v in range(32)])
        sent += 32
        for value, result in enumerate(results):
            assert isinstance(result, grpcaio.InferResult), result
            assert result.get_response().id == f"r{value}"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * value, np.float32))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.float32))
        if _grouped(grouping_server) > grouped:
            break
    assert _grouped(grouping_server) > grouped
    assert _stats(grouping_server, "add_sub") == (success + sent, fail)


@pytest.mark.parametrize("model", ["echo2", "echo_unbatched"])
async def test_a_group_the_model_does_not_take_goes_one_by_one(grouping_server: ServerProcess, model: str) -> None:
    """echo2 takes 2 rows where a worker first groups up to 4 (a group of 2 may run);
    echo_unbatched does not batch dynamically, so its requests must never run together."""
    success, fail = _stats(grouping_server, model)
    grouped, forwarded = _grouped(grouping_server), _forwarded(grouping_server)
    bursts = []
    for value in range(32):
        tensor = grpcaio.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        bursts.append([tensor])
    for _ in range(3):
        results = await _burst(grouping_server, model, bursts)
        for value, result in enumerate(results):
            assert isinstance(result, grpcaio.InferResult), result
            assert result.get_response().id == f"r{value}"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), value, np.float32))
    assert _stats(grouping_server, model) == (success + 96, fail)
    assert _forwarded(grouping_server) == forwarded + 96  # a group sent back is not counted twice
    if model == "echo_unbatched":
        assert _grouped(grouping_server) == grouped


async def test_a_failing_group_gives_each_caller_its_own_verdict(grouping_server: ServerProcess) -> None:
    """Alike bad requests (INT32 where add_sub takes FP32) fail the group; each is then sent
    alone and gets its own INVALID_ARGUMENT, counted once; good ones among them succeed."""
    success, fail = _stats(grouping_server, "add_sub")
    forwarded = _forwarded(grouping_server)
    inputs = [_add_sub_inputs(v, "INT32" if v % 4 else "FP32") for v in range(32)]
    for _ in range(3):
        results = await _burst(grouping_server, "add_sub", inputs)
        for value, result in enumerate(results):
            if value % 4:
                assert isinstance(result, InferenceServerException), result
                assert result.status() == "StatusCode.INVALID_ARGUMENT"
                assert "INPUT0" in str(result) and "FP32" in str(result), str(result)
            else:
                assert isinstance(result, grpcaio.InferResult), result
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 16), 2 * value, np.float32))
    assert _stats(grouping_server, "add_sub") == (success + 3 * 8, fail + 3 * 24)
    assert _forwarded(grouping_server) == forwarded + 96


async def test_callers_that_give_up_leave_their_group_and_the_rest_are_answered(repo: Path, tmp_path: Path) -> None:
    """Calls cancelled (RST_STREAM) while their group waits behind a blocked model: whoever
    still waits gets their own rows, and the server stops with nothing left in flight."""
    gate = Gate(tmp_path)
    config = fp32_model_config(
        max_batch_size=8, warmup=False, parameters=gate.parameters(), dynamic_batching={"max_queue_delay_microseconds": 1000}
    )
    add_model(repo, "gated", config, DOUBLES / "gated.py")
    server = ServerProcess(repo, "--repository-poll-secs", "0", "--frontend-workers", "1").wait_ready()
    client = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        calls = []
        for value in range(24):
            tensor = grpcaio.InferInput("INPUT", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
            calls.append(asyncio.ensure_future(client.infer("gated", [tensor], request_id=f"r{value}")))
        await eventually(lambda: len(gate.entered()) >= 1, what="the first batch to block")

        def reached() -> bool:
            return sum(_metric(server, "servegraph_frontend_requests_total").values()) >= 24

        await eventually(reached, what="every request to reach the model process")
        for call in calls[::3]:
            call.cancel()
        gate.open()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        for value, result in enumerate(results):
            if value % 3:
                assert isinstance(result, grpcaio.InferResult), result
                assert result.get_response().id == f"r{value}"
                np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), value + 1, np.float32))
        assert _grouped(server) > 0  # some did travel in groups
    finally:
        await client.close()
        assert server.stop() == 0


async def test_a_group_never_outgrows_a_shared_memory_slot(grouping_server: ServerProcess) -> None:
    """Requests whose tensors would make a group larger than a slot (1 MiB) go one by one:
    a group over a slot would cross the socket pickled. Narrow ones of the same model group."""

    def burst_of(columns: int) -> list[list[grpcaio.InferInput]]:
        bursts = []
        for value in range(16):
            tensor = grpcaio.InferInput("INPUT", [1, columns], "FP32")
            tensor.set_data_from_numpy(np.full((1, columns), value, np.float32))
            bursts.append([tensor])
        return bursts

    grouped = _grouped(grouping_server)
    for _ in range(3):
        results = await _burst(grouping_server, "echo_wide", burst_of(150_000))  # 600 KB each
        for value, result in enumerate(results):
            assert isinstance(result, grpcaio.InferResult), result
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 150_000), value, np.float32))
    assert _grouped(grouping_server) == grouped
    for _ in range(20):  # until some arrive in one loop turn
        results = await _burst(grouping_server, "echo_wide", burst_of(1_000))
        assert all(isinstance(result, grpcaio.InferResult) for result in results)
        if _grouped(grouping_server) > grouped:
            break
    assert _grouped(grouping_server) > grouped


async def test_a_group_stops_once_its_answer_would_outgrow_a_slot(grouping_server: ServerProcess) -> None:
    """A model whose answer is far larger than its request (600 KB a row from 16 bytes): once
    a worker has seen an answer, it sends no group whose answer would outgrow a slot."""
    bursts = []
    for value in range(16):
        tensor = grpcaio.InferInput("INPUT", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        bursts.append([tensor])
    grouped = -1.0
    for round_ in range(4):
        if round_ == 1:  # the first burst may group: nothing was known of the answers yet
            grouped = _grouped(grouping_server)
        results = await _burst(grouping_server, "tiler", bursts)
        for value, result in enumerate(results):
            assert isinstance(result, grpcaio.InferResult), result
            output = result.as_numpy("OUTPUT")
            assert output.shape == (1, TILED) and float(output.min()) == float(output.max()) == value
    assert _grouped(grouping_server) == grouped
