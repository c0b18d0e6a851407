"""`make demo`: serve the example graph on this machine and exercise it.

Starts examples/graphs/demo.yaml with `servegraph run`'s engine (a scaler and outlier
detector in front of a 70/30 A/B router over two scorers: four processes on 127.0.0.1),
sends 400 concurrent requests through the entrypoint with tritonclient's gRPC client,
and prints a sample answer, the split the router made, the outliers it flagged, and the
batching the model nodes did; then stops every process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcclient

from servegraph.local.runner import LocalGraph

MANIFEST = Path(__file__).resolve().parent / "graphs" / "demo.yaml"
REQUESTS = 400
CONCURRENCY = 32


async def exercise(graph: LocalGraph) -> None:
    entry = f"127.0.0.1:{graph.entry.grpc}"
    model = graph.graph.entry_model
    client = grpcclient.InferenceServerClient(entry)
    rng = np.random.default_rng(0)
    rows = rng.normal([5.0, -2.0, 0.5, 10.0], [2.0, 1.0, 0.5, 3.0], size=(REQUESTS, 4)).astype(np.float32)
    planted = set(range(0, REQUESTS, 50))
    rows[sorted(planted)] += 40.0  # far outside the reference data
    routes: Counter[str] = Counter()
    flagged: set[int] = set()
    sample = None
    pending = list(range(REQUESTS))

    async def caller() -> None:
        nonlocal sample
        while pending:
            i = pending.pop()
            inp = grpcclient.InferInput("INPUT", [1, 4], "FP32")
            inp.set_data_from_numpy(rows[i : i + 1])
            result = await client.infer(model, [inp], request_id=f"demo-{i}")
            routes[result.get_response().parameters["servegraph.route"].string_param] += 1
            if bool(result.as_numpy("IS_OUTLIER")[0, 0]):
                flagged.add(i)
            if i == 1:
                sample = {name: result.as_numpy(name) for name in ("PROBS", "OUTLIER_SCORE", "IS_OUTLIER")}

    try:
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - start
        print(f"\nsample answer for request demo-1: {sample}")
        print(f"routes: {dict(sorted(routes.items()))}  (configured 70/30)")
        print(f"outliers flagged: {sorted(flagged)}; planted: {sorted(planted)}")
        print(f"throughput: {REQUESTS / elapsed:,.0f} requests/s at concurrency {CONCURRENCY} through 3 hops")
        for node in ("scorer-a", "scorer-b"):
            stats_client = grpcclient.InferenceServerClient(f"127.0.0.1:{graph.ports[node].grpc}")
            stats = (await stats_client.get_inference_statistics("scorer", as_json=True))["model_stats"][0]
            await stats_client.close()
            executions = int(stats.get("execution_count", 0))
            requests = int(stats["inference_stats"]["success"]["count"])
            print(f"{node}: {requests} requests in {executions} model executions")
    finally:
        await client.close()


def main() -> int:
    graph = LocalGraph(MANIFEST, http_port=0, grpc_port=0, metrics_port=0)
    print(f"$ servegraph run {MANIFEST.relative_to(Path.cwd()) if MANIFEST.is_relative_to(Path.cwd()) else MANIFEST}")
    try:
        graph.start()
        print(graph.summary())
        asyncio.run(exercise(graph))
    finally:
        graph.stop()
        print("every node stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
