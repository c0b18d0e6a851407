"""servegraph with 0, 1, 2... front-end workers (``serve --frontend-workers N``), same MLP.

The server (model process and workers together) is pinned to the first ``--server-cores``
cores, the load generator to the rest, so a bigger machine shows how throughput grows with
cores; on 2 cores the server gets one and the question is only whether workers cost more
than they give. Rounds are interleaved (every N once per round) and each cell reports the
median of its rounds. Reuses run.py's target runner, the load generator and the report.

    python bench/frontend_workers.py                                  # N=0,1,2, gRPC + HTTP binary
    python bench/frontend_workers.py --workers 0,4,8 --server-cores 8 --rounds 3
    python bench/frontend_workers.py --model mlp-torch --workers 0,2,4,8 --server-cores 10 \
        --client-procs 6 --connections 8 --concurrency 64,256    # a GPU node: the front end is the limit

One load generator (tritonclient aio on one core, one gRPC connection) saturates long before
several workers do, and SO_REUSEPORT spreads connections, not calls: ``--client-procs K``
runs K load generators at once (each c/K callers over ``--connections`` connections, all
measuring the same window); a cell sums their rows/s, takes the median of their p50s, the
worst of their p99s and the busiest generator's CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
import run  # noqa: E402
from report import PROTOCOL_NAMES, Measured, RunResult, medians, render  # noqa: E402
from targets import Launch, Ports, Target, prepare_servegraph, prepare_servegraph_torch  # noqa: E402

MODELS = {"mlp": prepare_servegraph, "mlp-torch": prepare_servegraph_torch}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="0,1,2", help="comma list of --frontend-workers values")
    p.add_argument("--protocols", default="grpc,http", help="comma list from grpc, http (binary), json")
    p.add_argument("--concurrency", default="1,16,64", help="comma list")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; cells show medians")
    p.add_argument("--server-cores", type=int, default=1, help="cores for the server; the client gets the rest")
    p.add_argument("--model", choices=sorted(MODELS), default="mlp", help="mlp (numpy) or mlp-torch (PyTorch, the GPU if any)")
    p.add_argument("--client-procs", type=int, default=1, help="load generators run at once per cell")
    p.add_argument("--connections", type=int, default=1, help="connections per load generator")
    p.add_argument(
        "--src", default="",
        help="comma list of servegraph source trees to serve (copies of commits' src/), interleaved as targets -a, -b, ...; default this checkout's",
    )  # fmt: skip
    p.add_argument("--output", type=Path, default=BENCH / "results" / "frontend_workers.md")
    args = p.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    args.protocols = [x for x in args.protocols.split(",") if x]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.src = [Path(s) for s in args.src.split(",") if s] or [None]
    cores = os.cpu_count() or 1
    if not 1 <= args.server_cores < cores:
        p.error(f"--server-cores must leave the client at least one of the {cores} cores, got {args.server_cores}")
    return args


def target(workers: int, model: str = "mlp", src: Path | None = None, label: str = "") -> Target:
    """``--frontend-workers workers``; ``src``: another source tree, ``label`` its suffix."""

    def prepare(workdir: Path, ports: Ports) -> Launch:
        launch = MODELS[model](workdir, ports)
        env = launch.env if src is None else {**launch.env, "PYTHONPATH": str(src.resolve())}
        return dataclasses.replace(launch, cmd=[*launch.cmd, "--frontend-workers", str(workers)], env=env)

    served = f", {src}" if src is not None else ""
    return Target(f"servegraph-fw{workers}{label}", f"servegraph ({model}{served}), --frontend-workers {workers}", prepare)


def drive_many(target: Target, protocol: str, ports: Ports, server_pid: int, args: argparse.Namespace) -> dict:
    """``args.client_procs`` load generators at once, one concurrency at a time, the same
    measuring window (``start_at``); their cells merged into one."""
    cells = []
    check: dict = {"ok": True, "detail": ""}
    for concurrency in args.concurrency:
        share = [concurrency // args.client_procs + (i < concurrency % args.client_procs) for i in range(args.client_procs)]
        spec = {
            "protocol": protocol, "http_port": ports.http, "grpc_port": ports.grpc, "seconds": args.seconds,
            "warmup": args.warmup, "server_pid": server_pid, "http_headers": target.http_headers,
            "connections": args.connections, "start_at": time.time() + 3.0 + 0.2 * args.client_procs,
        }  # fmt: skip
        specs = [{**spec, "concurrencies": [c]} for c in share if c > 0]
        with ThreadPoolExecutor(len(specs)) as pool:
            outs = list(pool.map(lambda s: procs.run_loadgen(s, timeout=args.seconds + args.warmup + 60), specs))
        failed = [o["check"] for o in outs if not o["check"]["ok"]]
        if failed:
            return {"check": failed[0], "cells": []}
        check = outs[0]["check"]
        parts = [o["cells"][0] for o in outs]
        cells.append({
            "concurrency": concurrency,
            "rows_per_s": sum(p["rows_per_s"] for p in parts),
            "p50_ms": statistics.median(p["p50_ms"] for p in parts),
            "p99_ms": max(p["p99_ms"] for p in parts),
            "requests": sum(p["requests"] for p in parts),
            "errors": sum(p["errors"] for p in parts),
            "client_cpu": max(p["client_cpu"] for p in parts),  # the busiest generator: ⚠ when it saturates
            "server_cpu": statistics.median(p["server_cpu"] for p in parts),
            "loop_cpu": statistics.median(p["loop_cpu"] for p in parts),  # one model process: each sees the same
            "first_error": next((p["first_error"] for p in parts if p["first_error"]), ""),
        })  # fmt: skip
    return {"check": check, "cells": cells}


def loop_table(result: RunResult, concurrency: list[int]) -> str:
    """The model process's event loop, CPU µs per request: what bounds the workers' plateau
    on a many-core node (its one core full while the GPU idles), measurable on any machine."""
    lines = [
        "",
        "## Model process event loop: CPU µs per request",
        "",
        "| target | protocol | " + " | ".join(f"c={c}" for c in concurrency) + " |",
        "|---|---|" + "---:|" * len(concurrency),
    ]
    rows: dict[tuple[str, str], dict[int, Measured]] = defaultdict(dict)
    for cell in result.cells:
        rows[(cell.target, cell.protocol)][cell.concurrency] = cell
    for (name, protocol), cells in rows.items():
        shown = [
            f"{cells[c].loop_cpu / cells[c].rows_per_s * 1e6:.0f}" if c in cells and cells[c].rows_per_s else "—"
            for c in concurrency
        ]
        lines.append(f"| {name} | {PROTOCOL_NAMES.get(protocol, protocol)} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run finally blocks and atexit
    procs.pin(args.server_cores)
    started = time.monotonic()
    rounds: list[RunResult] = []
    try:
        for number in range(args.rounds):
            result = RunResult(settings="")
            labels = [f"-{chr(ord('a') + i)}" if len(args.src) > 1 else "" for i in range(len(args.src))]
            cases = [(w, src, label) for w in args.workers for src, label in zip(args.src, labels)]
            order = cases[number % len(cases) :] + cases[: number % len(cases)]
            for workers, src, label in order:
                driver = drive_many if args.client_procs > 1 or args.connections > 1 else run.drive
                run.bench_target(target(workers, args.model, src, label), args, result, driver)
            rounds.append(result)
    finally:
        procs.stop_all()
    settings = run.settings_line(args) + (
        f" · server on {args.server_cores} core(s) · model {args.model} · {args.client_procs} load generator(s)"
        f" × {args.connections} connection(s)."
    )
    result = medians(rounds, settings)
    text = render(result, args.concurrency) + loop_table(result, args.concurrency)
    text += f"\nWhole run: {time.monotonic() - started:.0f} s.\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    run.log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
