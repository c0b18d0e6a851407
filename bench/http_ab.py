"""The REST transports side by side: server CPU per request, interleaved rounds.

On a contended machine one server measured after another sees different neighbours, so
this starts one ``servegraph serve`` per ``--http-server`` choice on the bench MLP (both
pinned to the server core, one BLAS thread) and drives them in alternating rounds with the
same load generator over HTTP binary at one concurrency; it prints each transport's
median server CPU µs per request (all threads, model included), its mean batch, rows/s and
p99 per round.

    python bench/http_ab.py                       # aiohttp vs uvicorn, c=64, 6 rounds of 2000
    python bench/http_ab.py --rounds 4 --requests 3000 --concurrency 16
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from targets import Ports, prepare_servegraph  # noqa: E402

from servegraph.ports import free_port  # noqa: E402


def _bench_profile() -> ModuleType:
    """bench/profile.py by path: ``import profile`` may find the standard library's."""
    spec = importlib.util.spec_from_file_location("bench_profile", BENCH / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_profile = _bench_profile()
model_counts, run_loadgen, thread_ticks = _profile.model_counts, _profile.run_loadgen, _profile.thread_ticks


def cpu_seconds(pid: int) -> float:
    return sum(thread_ticks(pid).values()) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="aiohttp,uvicorn", help="comma list of --http-server choices")
    p.add_argument("--protocol", default="http", help="http (binary tensors) or json")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000, help="requests per transport per round")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k]
    servers = {}
    results: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="servegraph-http-ab-") as tmp:
        try:
            for kind in kinds:
                workdir = Path(tmp) / kind
                workdir.mkdir()
                ports = Ports(free_port(), free_port(), free_port())
                launch = prepare_servegraph(workdir, ports)
                server = procs.start_server(
                    f"servegraph-{kind}", [*launch.cmd, "--http-server", kind], workdir / "server.log", env=launch.env
                )
                servers[kind] = (server, ports)
                procs.wait_ready(server, ports.http, 120.0)
                run_loadgen(args.protocol, ports, server.pid, args.concurrency, args.requests // 2)  # warm-up
            for round_ in range(args.rounds):
                for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                    server, ports = servers[kind]
                    e0, n0 = model_counts(ports.http)
                    c0 = cpu_seconds(server.pid)
                    cell = run_loadgen(args.protocol, ports, server.pid, args.concurrency, args.requests)
                    c1 = cpu_seconds(server.pid)
                    e1, n1 = model_counts(ports.http)
                    row = ((c1 - c0) / cell["requests"] * 1e6, (n1 - n0) / max(e1 - e0, 1), cell["rows_per_s"], cell["p99_ms"])
                    results[kind].append(row)
                    print(f"round {round_ + 1} {kind}: {row[0]:.0f} µs/request, batch {row[1]:.1f}, "
                          f"{row[2]:.0f} rows/s, p99 {row[3]:.1f} ms", file=sys.stderr, flush=True)
        finally:
            for server, _ in servers.values():
                server.stop()
    print(f"| {args.protocol}, c={args.concurrency}, {args.rounds} rounds of {args.requests} | "
          "server CPU µs/request | mean batch | rows/s | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for kind, rows in results.items():
        cols = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"| {kind} (median) | {cols[0]:.0f} | {cols[1]:.1f} | {cols[2]:.0f} | {cols[3]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
