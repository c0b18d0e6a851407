"""`make demo-batching`: serve examples/models, send a burst of concurrent requests, show the batching.

Starts `servegraph serve` on free 127.0.0.1 ports, waits until it is ready, sends 512
single-row requests to the `mlp` model from 64 concurrent tritonclient gRPC callers,
prints an answer's shape, the server's statistics (requests vs model executions and the
batch sizes formed) and the throughput, then stops the server with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient


REPOSITORY = Path(__file__).resolve().parent / "models"
REQUESTS = 512
CONCURRENCY = 64


def wait_ready(ports_file: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, int]:
    """The ports the server bound (it reports them in its ports file), once it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("servegraph serve exited before it was ready")
        try:
            ports: dict[str, int] = json.loads(ports_file.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return ports
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"servegraph serve was not ready after {timeout} s")


async def burst(grpc_port: int) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((REQUESTS, 512)).astype(np.float32)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(REQUESTS):
        queue.put_nowait(i)
    answers: dict[int, np.ndarray] = {}

    async def caller() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            inp = grpcclient.InferInput("INPUT", [1, 512], "FP32")
            inp.set_data_from_numpy(rows[i : i + 1])
            result = await client.infer("mlp", [inp])
            answers[i] = result.as_numpy("OUTPUT")

    try:
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
        stats = (await client.get_inference_statistics("mlp", as_json=True))["model_stats"][0]
    finally:
        await client.close()
    print(f"answers: {len(answers)} x {answers[0].shape} {answers[0].dtype}")
    requests = int(stats["inference_stats"]["success"]["count"])
    executions = int(stats["execution_count"])
    print(f"requests: {requests}, model executions: {executions} "
          f"(mean batch {int(stats['inference_count']) / max(executions, 1):.1f} rows)")  # fmt: skip
    print("batch size  executions")
    for batch in stats["batch_stats"]:
        print(f"{int(batch['batch_size']):>10}  {int(batch['compute_infer']['count']):>10}")
    print(f"throughput: {REQUESTS / elapsed:,.0f} requests/s at concurrency {CONCURRENCY} "
          f"({elapsed:.2f} s for {REQUESTS} requests)")  # fmt: skip


def main() -> None:
    ports_file = Path(tempfile.mkdtemp(prefix="servegraph-demo-")) / "ports.json"
    command = [
        sys.executable, "-m", "servegraph", "serve",
        "--model-repository", str(REPOSITORY),
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--ports-file", str(ports_file), "--repository-poll-secs", "0",
        "--log-level", "WARNING",
    ]  # fmt: skip
    print("$", " ".join(command[2:]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env)
    try:
        ports = wait_ready(ports_file, process)
        print(f"ready: HTTP 127.0.0.1:{ports['http']}, gRPC 127.0.0.1:{ports['grpc']}, metrics 127.0.0.1:{ports['metrics']}")
        asyncio.run(burst(ports["grpc"]))
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        print(f"server stopped (exit code {code})")
        ports_file.unlink(missing_ok=True)
        ports_file.parent.rmdir()


if __name__ == "__main__":
    main()
