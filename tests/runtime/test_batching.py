"""Dynamic batching seen from outside: batches form, results stay exact, padding stays
invisible, queues are bounded, deadlines are honoured, and the batcher survives abuse.

Determinism comes from a gated model double (tests/doubles/gated.py): while it blocks,
requests pile up in the queue, and the test decides when the batch completes. The tests
that go through HTTP run on each REST transport (``--http-server``).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from servegraph.runtime.config import HttpServer
from tests.conftest import DOUBLES, Gate, add_model, eventually, fp32_model_config, grpc_url, http_url, serve


def _input(module, x: np.ndarray, name: str = "INPUT"):  # type: ignore[no-untyped-def]
    inp = module.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def gated_repo(repo: Path, tmp_path: Path, **batching: object) -> Gate:
    gate = Gate(tmp_path)
    config = fp32_model_config(
        max_batch_size=batching.pop("max_batch_size", 8),
        warmup=False,
        parameters=gate.parameters(),
        dynamic_batching={"max_queue_delay_microseconds": 1000, **batching},
    )
    add_model(repo, "gated", config, DOUBLES / "gated.py")
    return gate


async def test_batches_form_while_the_model_is_busy(repo: Path, tmp_path: Path) -> None:
    gate = gated_repo(repo, tmp_path)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        try:
            first = asyncio.ensure_future(client.infer("gated", [_input(grpcaio, np.zeros((1, 4), np.float32))]))
            await eventually(lambda: len(gate.entered()) == 1, what="first batch to start")
            rest = [
                asyncio.ensure_future(
                    client.infer("gated", [_input(grpcaio, np.full((1, 4), i, np.float32))])
                )
                for i in range(1, 9)
            ]
            await eventually(lambda: batcher.depth == 8, what="8 queued requests")
            gate.open()
            results = await asyncio.gather(first, *rest)
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), i + 1, np.float32))
            assert [rows for rows, _ in gate.entered()] == [1, 8]
            stats = (await client.get_inference_statistics("gated", as_json=True))["model_stats"][0]
            assert int(stats["execution_count"]) == 2
            assert int(stats["inference_stats"]["success"]["count"]) == 9
            assert {int(b["batch_size"]) for b in stats["batch_stats"]} == {1, 8}
        finally:
            await client.close()


async def test_batched_results_equal_unbatched(repo: Path, http_server: HttpServer) -> None:
    """Many concurrent requests of 1-3 rows: each gets exactly its own rows back."""
    add_model(repo, "add_sub", {
        "backend": "python",
        "max_batch_size": 16,
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [16]},
                  {"name": "INPUT1", "data_type": "FP32", "dims": [16]}],
        "output": [{"name": "OUTPUT0", "data_type": "FP32", "dims": [16]},
                   {"name": "OUTPUT1", "data_type": "FP32", "dims": [16]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 2000, "scheduler": "fixed_delay"},
    }, Path(__file__).resolve().parents[2] / "examples/models/add_sub/1/model.py")  # fmt: skip
    rng = np.random.default_rng(7)
    async with serve(repo, http_server=http_server) as server:
        client = httpaio.InferenceServerClient(http_url(server.ports))
        try:
            pairs = [
                (rng.standard_normal((n, 16)).astype(np.float32), rng.standard_normal((n, 16)).astype(np.float32))
                for n in rng.integers(1, 4, size=64)
            ]
            results = await asyncio.gather(*(
                client.infer("add_sub", [_input(httpaio, x, "INPUT0"), _input(httpaio, y, "INPUT1")])
                for x, y in pairs
            ))  # fmt: skip
            for (x, y), result in zip(pairs, results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + y)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x - y)
            stats = (await client.get_inference_statistics("add_sub"))["model_stats"][0]
            assert stats["execution_count"] < 64, "no batch was formed"
            assert max(b["batch_size"] for b in stats["batch_stats"]) > 1
        finally:
            await client.close()


async def test_padding_never_reaches_the_caller(repo: Path) -> None:
    add_model(repo, "echo", {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [-1]},
                   {"name": "ROWSUM", "data_type": "FP32", "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 5000, "scheduler": "fixed_delay"},
        "shape_buckets": {
            "batch_sizes": [4, 8],
            "dims": {"INPUT": {1: [4, 8]}},
            "output_follows": {"OUTPUT": [{"output_axis": 1, "input": "INPUT", "input_axis": 1}]},
        },
    }, DOUBLES / "echo.py")  # fmt: skip
    rng = np.random.default_rng(3)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            inputs = [rng.standard_normal((1, int(n))).astype(np.float32) for n in rng.integers(1, 9, size=6)]
            results = await asyncio.gather(*(client.infer("echo", [_input(grpcaio, x)]) for x in inputs))
            for x, result in zip(inputs, results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x)
                np.testing.assert_allclose(result.as_numpy("ROWSUM"), x.sum(axis=1, keepdims=True), rtol=1e-5)
            stats = (await client.get_inference_statistics("echo", as_json=True))["model_stats"][0]
            assert {int(b["batch_size"]) for b in stats["batch_stats"]} <= {4, 8}
            with pytest.raises(InferenceServerException, match="larger than the largest shape bucket 8"):
                await client.infer("echo", [_input(grpcaio, np.ones((1, 9), np.float32))])
        finally:
            await client.close()


async def test_full_queue_rejects_exactly_the_overflow(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    gate = gated_repo(repo, tmp_path, max_batch_size=1, max_queue_size=4)
    async with serve(repo, http_server=http_server) as server:
        url = f"http://{http_url(server.ports)}/v2/models/gated/infer"
        body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        async with aiohttp.ClientSession() as session:
            running = asyncio.ensure_future(session.post(url, json=body))
            await eventually(lambda: len(gate.entered()) == 1, what="the first request to run")
            queued = [asyncio.ensure_future(session.post(url, json=body)) for _ in range(4)]
            await eventually(lambda: batcher.depth == 4, what="a full queue")
            overflow = [await session.post(url, json=body) for _ in range(3)]
            for response in overflow:
                assert response.status == 503
                assert "is full (4 requests)" in (await response.json())["error"]
                assert int(response.headers["Retry-After"]) >= 1
                assert int(response.headers["X-Retry-After-Ms"]) >= 1
            gate.open()
            for response in await asyncio.gather(running, *queued):
                assert response.status == 200
        grpc_client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            result = await grpc_client.infer("gated", [_input(grpcaio, np.ones((1, 4), np.float32))])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), np.full((1, 4), 2, np.float32))
        finally:
            await grpc_client.close()


async def test_grpc_queue_full_is_unavailable(repo: Path, tmp_path: Path) -> None:
    gate = gated_repo(repo, tmp_path, max_batch_size=1, max_queue_size=1)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        try:
            x = np.ones((1, 4), np.float32)
            running = asyncio.ensure_future(client.infer("gated", [_input(grpcaio, x)]))
            await eventually(lambda: len(gate.entered()) == 1, what="the first request to run")
            queued = asyncio.ensure_future(client.infer("gated", [_input(grpcaio, x)]))
            await eventually(lambda: batcher.depth == 1, what="a full queue")
            with pytest.raises(InferenceServerException) as info:
                await client.infer("gated", [_input(grpcaio, x)])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "is full" in info.value.message()
            gate.open()
            await asyncio.gather(running, queued)
        finally:
            await client.close()


async def test_expired_requests_are_never_run(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    gate = gated_repo(repo, tmp_path, max_batch_size=1)
    async with serve(repo, http_server=http_server) as server:
        base = f"http://{http_url(server.ports)}/v2/models/gated/infer"
        batcher = server.repository.get("gated").batcher
        assert batcher is not None

        def body(value: float) -> dict[str, object]:
            return {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}

        grpc_client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        async with aiohttp.ClientSession() as session:
            running = asyncio.ensure_future(session.post(base, json=body(1)))
            await eventually(lambda: len(gate.entered()) == 1, what="the first request to run")
            # HTTP header deadline, Triton's timeout parameter, and a gRPC deadline.
            late = await session.post(base, json=body(2), headers={"X-Request-Timeout-Ms": "30"})
            assert late.status == 504
            assert "timed out" in (await late.json())["error"]
            with_param = dict(body(3), parameters={"timeout": 30_000})
            late = await session.post(base, json=with_param)
            assert late.status == 504
            with pytest.raises(InferenceServerException) as info:
                await grpc_client.infer("gated", [_input(grpcaio, np.full((1, 4), 4, np.float32))], client_timeout=0.05)
            assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            await eventually(lambda: batcher.depth == 0, what="the expired gRPC request to leave the queue")
            gate.open()
            assert (await running).status == 200
            ok = await session.post(base, json=body(5))
            assert ok.status == 200
        await grpc_client.close()
        first_values = [values[0] for _, values in gate.entered()]
        assert first_values == [1.0, 5.0], "an expired request reached the model"
        stats = server.dataplane.model_statistics("gated", "1")[0]
        assert stats["inference_stats"]["fail"]["count"] == 3


async def test_queue_policy_default_timeout(repo: Path, tmp_path: Path, http_server: HttpServer) -> None:
    gate = gated_repo(
        repo, tmp_path, max_batch_size=1, default_queue_policy={"default_timeout_microseconds": 20_000}
    )
    async with serve(repo, http_server=http_server) as server:
        client = httpaio.InferenceServerClient(http_url(server.ports))
        try:
            x = np.ones((1, 4), np.float32)
            running = asyncio.ensure_future(client.infer("gated", [_input(httpaio, x)]))
            await eventually(lambda: len(gate.entered()) == 1, what="the first request to run")
            with pytest.raises(InferenceServerException, match="timed out"):
                await client.infer("gated", [_input(httpaio, x)])
            gate.open()
            await running
        finally:
            await client.close()


async def test_instances_run_batches_concurrently(repo: Path, tmp_path: Path) -> None:
    gate = gated_repo(repo, tmp_path, max_batch_size=1)
    config_file = repo / "gated" / "config.yaml"
    config_file.write_text(config_file.read_text() + "instance_group:\n- count: 2\n")
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            x = np.ones((1, 4), np.float32)
            calls = [asyncio.ensure_future(client.infer("gated", [_input(grpcaio, x)])) for _ in range(3)]
            batcher = server.repository.get("gated").batcher
            assert batcher is not None
            # The third request may still be on the wire when the first two enter: wait for it
            # to queue. A third instance (or none busy) would make this never hold.
            await eventually(
                lambda: len(gate.entered()) == 2 and batcher.depth == 1,
                what="two batches in flight at once and the third queued behind them",
            )
            gate.open()
            await asyncio.gather(*calls)
        finally:
            await client.close()


async def test_random_cancellations_leave_the_batcher_clean(repo: Path) -> None:
    """Ray #50046 / #41057: cancelled callers must never break the loop or leak queue slots."""
    add_model(repo, "echo", {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT", "data_type": "FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [4]},
                   {"name": "ROWSUM", "data_type": "FP32", "dims": [1]}],
        "dynamic_batching": {"max_queue_delay_microseconds": 200},
    }, DOUBLES / "echo.py")  # fmt: skip
    async with serve(repo) as server:
        model = server.repository.get("echo")
        batcher = model.batcher
        assert batcher is not None
        chooser = random.Random(11)
        for round_ in range(50):
            calls = [
                asyncio.ensure_future(batcher.infer({"INPUT": np.full((1, 4), i, np.float32)}, None))
                for i in range(20)
            ]
            await asyncio.sleep(0)  # let some of them queue before the cancellations land
            for call in calls:
                if chooser.random() < 0.5:
                    call.cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            for i, outcome in enumerate(done):
                if not isinstance(outcome, BaseException):
                    np.testing.assert_array_equal(outcome["OUTPUT"], np.full((1, 4), i, np.float32))
        await eventually(lambda: batcher.depth == 0, what="an empty queue")
        assert batcher.alive
        result = await batcher.infer({"INPUT": np.ones((1, 4), np.float32)}, None)
        np.testing.assert_array_equal(result["OUTPUT"], np.ones((1, 4), np.float32))


async def test_a_timed_out_close_cancels_the_running_batch(repo: Path, tmp_path: Path) -> None:
    """The batcher keeps a reference to every running batch: a drain that times out fails
    its callers and cancels the batch's task instead of leaving it waiting on the model."""
    gate = gated_repo(repo, tmp_path)
    async with serve(repo) as server:
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        before = set(asyncio.all_tasks())
        call = asyncio.ensure_future(batcher.infer({"INPUT": np.zeros((1, 4), np.float32)}, None))
        await eventually(lambda: len(gate.entered()) == 1, what="the batch to start")
        try:
            assert await batcher.close(timeout=0.05) is False
            with pytest.raises(Exception, match="unloaded before it answered"):
                await call
            await eventually(
                lambda: not [t for t in asyncio.all_tasks() - before if not t.done()],
                what="every task the request started to end",
            )
        finally:
            gate.open()


async def test_a_stream_keeps_a_bounded_window_of_requests_in_flight(repo: Path, tmp_path: Path) -> None:
    """A client that streams faster than the model answers is held back by the server's
    stream window (then HTTP/2 flow control), not queued without bound; every request is
    still answered once the model moves."""
    from servegraph.runtime.servers.grpc import STREAM_WINDOW

    sent = 3 * STREAM_WINDOW
    gate = gated_repo(repo, tmp_path, max_queue_size=10 * sent)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        batcher = server.repository.get("gated").batcher
        assert batcher is not None
        peak = 0

        async def requests():  # type: ignore[no-untyped-def]
            for i in range(sent):
                yield {"model_name": "gated", "inputs": [_input(grpcaio, np.full((1, 4), i, np.float32))],
                       "request_id": str(i)}  # fmt: skip

        async def answers() -> dict[str, float]:
            seen = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                seen[result.get_response().id] = float(result.as_numpy("OUTPUT")[0, 0])
            return seen

        try:
            stream = asyncio.ensure_future(answers())
            def in_flight() -> int:  # queued, plus the batch the gate holds
                return batcher.depth + sum(rows for rows, _ in gate.entered())

            await eventually(lambda: in_flight() == STREAM_WINDOW, what="a full window in flight")
            # Proving a negative: give an unbounded reader time to queue the remaining requests.
            for _ in range(50):
                await asyncio.sleep(0.005)
                peak = max(peak, in_flight())
            assert peak == STREAM_WINDOW
            gate.open()
            seen = await asyncio.wait_for(stream, 30)
            assert seen == {str(i): i + 1.0 for i in range(sent)}  # the double adds 1
        finally:
            gate.open()
            await client.close()


def test_a_batch_is_priced_by_what_it_cost_not_by_its_waits() -> None:
    """A CPU-bound model is priced by its thread's CPU time, so time spent waiting for the GIL
    while another thread runs Python does not count; a model that sleeps (a GPU wait) is priced
    by its wall time."""
    import threading
    import time

    from servegraph.runtime.batching.batcher import _timed_predict

    def spin(_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:  # 50 ms of this thread's CPU, whoever holds the GIL
            pass
        return {}

    def sleep(_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.05)
        return {}

    stop = threading.Event()

    def hog() -> None:  # pure Python: takes the GIL whenever the switch interval hands it over
        while not stop.is_set():
            sum(range(1000))

    other = threading.Thread(target=hog)
    other.start()
    try:
        wall = time.perf_counter()
        _, spun, spun_on_cpu = _timed_predict(spin, {})
        wall = time.perf_counter() - wall
    finally:
        stop.set()
        other.join()
    assert wall > 0.08, "the competing thread should have taken turns with the model"
    assert 0.045 <= spun / 1e9 < 0.07
    assert spun_on_cpu
    _, slept, slept_on_cpu = _timed_predict(sleep, {})
    assert slept / 1e9 >= 0.045
    assert not slept_on_cpu


TAGGED = '''
import threading, time
import numpy as np


class Tagged:
    """OUTPUT is 1 where the batch ran on the main thread (the in-process server's event loop);
    a negative first input makes the batch slow (5 ms, over every inline budget), and one over
    1 makes it take a millisecond (within a lone caller's budget, over a cheap model's)."""

    def predict(self, inputs):
        x = inputs["INPUT"]
        if float(x[0, 0]) < 0:
            time.sleep(0.005)
        elif float(x[0, 0]) > 1:
            time.sleep(0.001)
        return {"OUTPUT": np.full_like(x, float(threading.get_ident() == threading.main_thread().ident))}
'''


async def _ran_inline(client: grpcaio.InferenceServerClient, value: float = 1.0) -> bool:
    result = await client.infer("tagged", [_input(grpcaio, np.full((1, 4), value, np.float32))])
    return bool(result.as_numpy("OUTPUT")[0, 0] == 1.0)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "inline-off"])
async def test_a_cheap_model_runs_on_the_event_loop_until_a_batch_is_slow(repo: Path, tmp_path: Path, inline: bool) -> None:
    """A model measured to cost a few microseconds skips the executor thread's hand-off; one
    slow batch sends it back to its thread; the config can keep it there for good."""
    source = tmp_path / "tagged.py"
    source.write_text(TAGGED)
    add_model(repo, "tagged", fp32_model_config(inline_predict=inline), source)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            assert not await _ran_inline(client), "the first batch is measured on the model's thread"
            runs = [await _ran_inline(client) for _ in range(20)]
            if not inline:
                assert not any(runs)
                return
            assert runs[-1], f"a cheap model should run inline once measured: {runs}"
            await _ran_inline(client, -1.0)  # a slow batch
            assert not await _ran_inline(client), "after a slow batch, batches go back to the thread"
        finally:
            await client.close()


async def test_a_lone_callers_request_runs_on_the_event_loop_and_overlapping_ones_do_not(repo: Path, tmp_path: Path) -> None:
    """A millisecond model (over the cheap-model budget) runs on the loop's thread for a lone
    caller, once a few of its requests came alone: the hand-off to the executor thread would
    only add latency. When a second caller's requests overlap, a probe batch on the thread
    shows it, and batches stay on the executor thread, so the loop reads one caller's request
    while the model runs the other's."""
    source = tmp_path / "tagged.py"
    source.write_text(TAGGED)
    add_model(repo, "tagged", fp32_model_config(), source)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            lone = [await _ran_inline(client, 2.0) for _ in range(12)]
            assert not any(lone[:3]), f"a lone caller is known after a few requests on the thread: {lone}"
            assert all(lone[4:]), f"a lone caller's millisecond batches should run inline: {lone}"

            async def caller() -> list[bool]:
                return [await _ran_inline(client, 2.0) for _ in range(20)]

            both = await asyncio.gather(caller(), caller())
            assert not any(both[0][-10:] + both[1][-10:]), f"overlapping callers should go back to the thread: {both}"
        finally:
            await client.close()


SPIN = '''
import threading, time
import numpy as np


class Spin:
    """A CPU-bound model: a millisecond of its thread's CPU (within a lone caller's budget,
    over a cheap model's); OUTPUT is 1 where it ran on the main thread (the event loop)."""

    def predict(self, inputs):
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        x = inputs["INPUT"]
        return {"OUTPUT": np.full_like(x, float(threading.get_ident() == threading.main_thread().ident))}
'''


@pytest.mark.parametrize("one_core", [True, False], ids=["one-core", "all-cores"])
async def test_on_one_core_a_cpu_bound_model_runs_on_the_event_loop_for_overlapping_callers(
    repo: Path, tmp_path: Path, one_core: bool
) -> None:
    """On one core the executor thread cannot compute while the loop reads requests, so even
    overlapping callers' batches of a CPU-bound millisecond model run on the loop's thread;
    with cores to spare they keep the executor thread, so the model computes meanwhile."""
    cpus = os.sched_getaffinity(0)
    if not one_core and len(cpus) < 2:
        pytest.skip("needs two cores")
    source = tmp_path / "spin.py"
    source.write_text(SPIN)
    add_model(repo, "spin", fp32_model_config(), source)
    if one_core:
        os.sched_setaffinity(0, {min(cpus)})  # this thread: the event loop's, which the batcher reads
    try:
        async with serve(repo) as server:
            client = grpcaio.InferenceServerClient(grpc_url(server.ports))

            async def caller() -> list[bool]:
                results = []
                for _ in range(20):
                    result = await client.infer("spin", [_input(grpcaio, np.ones((1, 4), np.float32))])
                    results.append(bool(result.as_numpy("OUTPUT")[0, 0] == 1.0))
                return results

            try:
                both = await asyncio.gather(caller(), caller())
            finally:
                await client.close()
    finally:
        os.sched_setaffinity(0, cpus)
    tail = both[0][-10:] + both[1][-10:]
    assert all(tail) if one_core else not any(tail), both


WHERE = '''
import asyncio, threading, time
import numpy as np


class Where:
    """OUTPUT says where the batch ran: 0 on the model's thread, 1 on the event loop in the
    batcher's own task, 2 on the event loop in the caller's task; an input of 3 fails it."""

    def predict(self, inputs):
        x = inputs["INPUT"]
        if float(x[0, 0]) == 3:
            raise ValueError("three is refused")
        time.sleep(0.001)  # a millisecond: within a lone caller's budget, over a cheap model's
        where = 0.0
        if threading.get_ident() == threading.main_thread().ident:
            where = 1.0 if asyncio.current_task().get_name().startswith("batch-") else 2.0
        return {"OUTPUT": np.full_like(x, where)}
'''


async def test_a_lone_callers_request_runs_at_once_in_its_own_task(repo: Path, tmp_path: Path) -> None:
    """Nothing else queued or running: a lone caller's request skips the queue (no batcher
    wake-up, no batch task, no wait for its answer) and runs in its caller's task, counted in
    the statistics as a queued one would be; a failure is still that request's alone."""
    source = tmp_path / "where.py"
    source.write_text(WHERE)
    add_model(repo, "where", fp32_model_config(), source)
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))

        async def where(value: float = 1.0) -> float:
            result = await client.infer("where", [_input(grpcaio, np.full((1, 4), value, np.float32))])
            return float(result.as_numpy("OUTPUT")[0, 0])

        try:
            before = server.repository.get("where").stats.to_dict()
            ran = [await where() for _ in range(12)]
            assert ran[:3] == [0.0] * 3 and ran[5:] == [2.0] * 7, ran
            with pytest.raises(InferenceServerException, match="three is refused"):
                await where(3.0)
            assert await where() == 2.0
            after = server.repository.get("where").stats.to_dict()
            counts = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"] for k in ("success", "fail", "queue")}
            assert counts == {"success": 13, "fail": 1, "queue": 13}
            assert after["execution_count"] - before["execution_count"] == 13
        finally:
            await client.close()
