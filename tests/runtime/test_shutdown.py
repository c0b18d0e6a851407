"""SIGTERM, as a pod gets on a rolling update: readiness drops at once, new work is refused,
queued and running requests all finish, and the process exits 0; a model stuck past the
exit timeout cannot keep the process alive."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import DOUBLES, Gate, ServerProcess, add_model, fp32_model_config, http_status, serve, wait_until


def _infer(server: ServerProcess, value: float) -> tuple[int, list[float]]:
    body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/gated/infer", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["outputs"][0]["data"]
    except urllib.error.HTTPError as exc:
        return exc.code, []


def _metric(server: ServerProcess, prefix: str) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5).read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return -1


def _queue_depth(server: ServerProcess) -> float:
    return _metric(server, "servegraph_queue_depth{")


MODES = [("--http-server", "uvicorn"), ("--http-server", "aiohttp"), ("--frontend-workers", "2", "--http-server", "aiohttp")]
"""Each way of serving HTTP: one process on either REST transport, and two front-end workers
(whose REST is aiohttp's)."""
MODE_IDS = ["uvicorn", "aiohttp", "frontend-workers-2"]


def _gated_server(repo: Path, tmp_path: Path, *args: str) -> tuple[ServerProcess, Gate]:
    gate = Gate(tmp_path)
    config = fp32_model_config(
        max_batch_size=1, warmup=False, parameters=gate.parameters(), dynamic_batching={}
    )
    add_model(repo, "gated", config, DOUBLES / "gated.py")
    return ServerProcess(repo, "--repository-poll-secs", "0", *args).wait_ready(), gate


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_sigterm_drains_every_request_in_flight(repo: Path, tmp_path: Path, mode: tuple[str, ...]) -> None:
    server, gate = _gated_server(repo, tmp_path, *mode)
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            calls = [pool.submit(_infer, server, float(i)) for i in range(6)]
            wait_until(lambda: len(gate.entered()) == 1, what="one running request")
            wait_until(lambda: _queue_depth(server) == 5, what="five queued requests")
            server.terminate()
            wait_until(lambda: http_status(f"http://{server.http_url}/v2/health/ready") != 200, what="not ready")
            assert server.process.poll() is None, "the server must wait for its queue"
            gate.open()
            results = [call.result(timeout=60) for call in calls]
        assert [status for status, _ in results] == [200] * 6
        assert [data[0] for _, data in results] == [i + 1.0 for i in range(6)]
        assert server.process.wait(timeout=30) == 0, server.output()
    finally:
        server.stop()


def test_inflight_requests_are_counted_for_autoscaling(repo: Path, tmp_path: Path, http_server: str) -> None:
    """The metric an HPA's targetConcurrency scales on: queued plus running, back to 0 after."""
    server, gate = _gated_server(repo, tmp_path, "--http-server", http_server)
    try:
        assert _metric(server, "servegraph_inflight_requests ") == 0
        with ThreadPoolExecutor(max_workers=3) as pool:
            calls = [pool.submit(_infer, server, float(i)) for i in range(3)]
            wait_until(lambda: _metric(server, "servegraph_inflight_requests ") == 3, what="three in flight")
            gate.open()
            assert [call.result(timeout=60)[0] for call in calls] == [200] * 3
        wait_until(lambda: _metric(server, "servegraph_inflight_requests ") == 0, what="none in flight")
    finally:
        gate.open()
        server.stop()


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_sigterm_exits_at_the_timeout_when_a_model_is_stuck(repo: Path, tmp_path: Path, mode: tuple[str, ...]) -> None:
    server, gate = _gated_server(repo, tmp_path, "--exit-timeout-secs", "1", *mode)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(_infer, server, 1.0)
            wait_until(lambda: len(gate.entered()) == 1, what="the stuck request")
            server.terminate()
            try:
                code = server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError("a stuck model kept the server alive past its exit timeout") from None
            assert code == 1
            status, _ = call.result(timeout=30)
            assert status != 200
    finally:
        gate.open()
        server.stop()


def test_exit_on_error_names_the_model_that_failed_to_load(repo: Path) -> None:
    """What a pod needs: a model that cannot load ends the process, its reason last on stderr."""
    add_model(repo, "broken", fp32_model_config(), DOUBLES / "broken.py")
    add_model(repo, "echo", fp32_model_config(), DOUBLES / "echo.py")
    done = subprocess.run(
        [sys.executable, "-m", "servegraph", "serve", "--model-repository", str(repo),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--exit-on-error", "true"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("servegraph serve: model 'broken'") and "weights are corrupt" in last
    assert "echo" not in last


async def test_start_up_objects_are_out_of_the_collectors_reach(repo: Path) -> None:
    """Modules, descriptors and models alive after start-up are frozen, so a full collection
    under load does not walk them (it paused the loop for up to 71 ms at c=64)."""
    add_model(repo, "echo", fp32_model_config(), DOUBLES / "echo.py")
    gc.unfreeze()
    try:
        async with serve(repo) as server:
            assert server.dataplane.started
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
