"""Closed-loop load generator on tritonclient's asyncio clients (gRPC, HTTP binary, HTTP JSON).

Run as a script on the client core; it reads a JSON ``LoadSpec`` from argv[1] and prints a
JSON result: the correctness check, then one cell per concurrency. Each of ``c`` workers
sends one [1, 512] FP32 request, waits for the answer, and sends the next. Requests that
finish inside the measuring window (after the warm-up) count; latency is per request.
Client and server CPU shares are sampled at the window's edges.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlp_model import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, MLP, sample_input  # noqa: E402

PROTOCOLS = ("grpc", "http", "json")
RTOL, ATOL = 1e-3, 1e-4
DRAIN_TIMEOUT_S = 30.0


@dataclass
class LoadSpec:
    """What to drive: one target, one protocol, several concurrencies."""

    protocol: str
    http_port: int
    grpc_port: int
    concurrencies: list[int]
    seconds: float
    warmup: float
    server_pid: int = 0
    http_headers: dict[str, str] = field(default_factory=dict)
    model: str = MODEL_NAME
    requests: int = 0
    """When > 0: each concurrency sends exactly this many requests (no warm-up, no clock)."""
    connections: int = 1
    """Clients (gRPC channels: one HTTP/2 connection each) the workers share round-robin; a
    server whose front-end workers share a port (SO_REUSEPORT) spreads connections, not calls."""
    start_at: float = 0.0
    """When > 0: the wall-clock time (``time.time()``) the first cell's warm-up starts, so
    several load generators started together measure the same window."""


@dataclass
class Cell:
    """One measured concurrency level."""

    concurrency: int
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    client_cpu: float
    server_cpu: float
    loop_cpu: float = 0.0
    """CPU share of the server's main thread: its event loop (with front-end workers, the
    model process's), whose CPU per request bounds what one Python process serves."""
    first_error: str = ""


@dataclass
class Check:
    ok: bool
    detail: str


class Client:
    """One protocol's client with its request prepared once."""

    def __init__(self, spec: LoadSpec, payload: np.ndarray) -> None:
        self.spec = spec
        if spec.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            # Channels to one address share one connection unless each keeps its own subchannels.
            separate = [
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.use_local_subchannel_pool", 1),
            ]
            self._client: Any = grpcclient.InferenceServerClient(
                f"127.0.0.1:{spec.grpc_port}", channel_args=separate if spec.connections > 1 else None
            )
            inp = grpcclient.InferInput(INPUT_NAME, list(payload.shape), "FP32")
            inp.set_data_from_numpy(payload)
            self._inputs = [inp]
            self._outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
            self._headers: dict[str, str] | None = None
        elif spec.protocol in ("http", "json"):
            import tritonclient.http.aio as httpclient

            binary = spec.protocol == "http"
            self._client = httpclient.InferenceServerClient(f"127.0.0.1:{spec.http_port}", conn_limit=256)
            inp = httpclient.InferInput(INPUT_NAME, list(payload.shape), "FP32")
            inp.set_data_from_numpy(payload, binary_data=binary)
            self._inputs = [inp]
            self._outputs = [httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=binary)]
            self._headers = dict(spec.http_headers) or None
        else:
            raise ValueError(f"unknown protocol {spec.protocol!r}; choose from {PROTOCOLS}")

    async def infer(self) -> np.ndarray:
        result = await self._client.infer(
            self.spec.model, self._inputs, outputs=self._outputs, headers=self._headers
        )
        out = result.as_numpy(OUTPUT_NAME)
        if out is None:
            raise RuntimeError("response has no OUTPUT")
        return out

    async def close(self) -> None:
        await self._client.close()


def _stat_fields(stat: str) -> list[str]:
    """A /proc stat line's fields after the command name (field 3 on: state, ppid, ...)."""
    return stat[stat.rfind(")") + 2 :].split()


def thread_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid``'s main thread (0 when there is none)."""
    if pid <= 0:
        return 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = _stat_fields(f.read())
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU seconds of ``root`` and all its descendants (from /proc)."""
    if root <= 0:
        return 0.0
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = _stat_fields(stat)
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total / os.sysconf("SC_CLK_TCK")


async def check(client: Client, payload: np.ndarray, expected: np.ndarray) -> Check:
    """One request; its output must match the in-process model's."""
    try:
        got = await client.infer()
    except Exception as exc:
        return Check(False, f"request failed: {type(exc).__name__}: {exc}"[:300])
    if got.shape != expected.shape:
        return Check(False, f"output shape {got.shape}, expected {expected.shape}")
    err = float(np.max(np.abs(got.astype(np.float32) - expected)))
    if not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
        return Check(False, f"output mismatch: max abs error {err:.3g}")
    return Check(True, f"max abs error {err:.2g}")


async def measure(clients: list[Client], spec: LoadSpec, concurrency: int) -> Cell:
    """Closed loop at ``concurrency`` for warm-up + ``spec.seconds``."""
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
    now = time.perf_counter
    if spec.start_at:
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    start = now() + spec.warmup
    end = start + spec.seconds
    latencies: list[float] = []
    errors = 0
    first_error = ""

    async def worker(client: Client) -> None:
        nonlocal errors, first_error
        while (t0 := now()) < end:
            try:
                await client.infer()
            except Exception as exc:
                t1 = now()
                if start <= t1 <= end:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
                continue
            t1 = now()
            if start <= t1 <= end:
                latencies.append(t1 - t0)

    async def sample_cpu() -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, start - now()))
        c0, s0, l0, w0 = time.process_time(), tree_cpu_seconds(spec.server_pid), thread_cpu_seconds(spec.server_pid), now()
        await asyncio.sleep(max(0.0, end - now()))
        c1, s1, l1, w1 = time.process_time(), tree_cpu_seconds(spec.server_pid), thread_cpu_seconds(spec.server_pid), now()
        wall = max(w1 - w0, 1e-9)
        return (c1 - c0) / wall, (s1 - s0) / wall, (l1 - l0) / wall

    sampler = asyncio.create_task(sample_cpu())
    workers = [asyncio.create_task(worker(clients[i % len(clients)])) for i in range(concurrency)]
    client_cpu, server_cpu, loop_cpu = await sampler
    _, pending = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return Cell(
        concurrency=concurrency,
        rows_per_s=len(latencies) / spec.seconds,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        requests=len(latencies),
        errors=errors,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        loop_cpu=loop_cpu,
        first_error=first_error,
    )


async def measure_count(clients: list[Client], spec: LoadSpec, concurrency: int) -> Cell:
    """Closed loop at ``concurrency`` until ``spec.requests`` requests have been answered."""
    now = time.perf_counter
    latencies: list[float] = []
    errors = 0
    first_error = ""
    issued = 0

    async def worker(client: Client) -> None:
        nonlocal errors, first_error, issued
        while issued < spec.requests:
            issued += 1
            t0 = now()
            try:
                await client.infer()
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
                continue
            latencies.append(now() - t0)

    c0, s0, l0, w0 = time.process_time(), tree_cpu_seconds(spec.server_pid), thread_cpu_seconds(spec.server_pid), now()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    c1, s1, l1, w1 = time.process_time(), tree_cpu_seconds(spec.server_pid), thread_cpu_seconds(spec.server_pid), now()
    wall = max(w1 - w0, 1e-9)
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return Cell(
        concurrency=concurrency,
        rows_per_s=len(latencies) / wall,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        requests=len(latencies),
        errors=errors,
        client_cpu=(c1 - c0) / wall,
        server_cpu=(s1 - s0) / wall,
        loop_cpu=(l1 - l0) / wall,
        first_error=first_error,
    )


async def run(spec: LoadSpec) -> dict[str, Any]:
    """Check once, then measure each concurrency."""
    payload = sample_input(1)
    expected = MLP()(payload)
    clients = [Client(spec, payload) for _ in range(max(spec.connections, 1))]
    try:
        result = await check(clients[0], payload, expected)
        cells: list[Cell] = []
        if result.ok:
            for c in spec.concurrencies:
                if spec.requests > 0:
                    cells.append(await measure_count(clients, spec, c))
                else:
                    cells.append(await measure(clients, spec, c))
        return {"check": asdict(result), "cells": [asdict(c) for c in cells]}
    finally:
        for client in clients:
            await client.close()


def main() -> None:
    spec = LoadSpec(**json.loads(sys.argv[1]))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(run(spec))))


if __name__ == "__main__":
    main()
