"""servegraph with 0, 1, 2... front-end workers (``serve --frontend-workers N``), same MLP.

The server (model process and workers together) is pinned to the first ``--server-cores``
cores, the load generator to the rest, so a bigger machine shows how throughput grows with
cores; on 2 cores the server gets one and the question is only whether workers cost more
than they give. Rounds are interleaved (every N once per round) and each cell reports the
median of its rounds. Reuses run.py's target runner, the load generator and the report.

    python bench/frontend_workers.py                                  # N=0,1,2, gRPC + HTTP binary
    python bench/frontend_workers.py --workers 0,4,8 --server-cores 8 --rounds 3
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
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
import run  # noqa: E402
from report import Measured, RunResult, render  # noqa: E402
from targets import Launch, Ports, Target, prepare_servegraph  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="0,1,2", help="comma list of --frontend-workers values")
    p.add_argument("--protocols", default="grpc,http", help="comma list from grpc, http (binary), json")
    p.add_argument("--concurrency", default="1,16,64", help="comma list")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; cells show medians")
    p.add_argument("--server-cores", type=int, default=1, help="cores for the server; the client gets the rest")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "frontend_workers.md")
    args = p.parse_args(argv)
    args.workers = [int(n) for n in args.workers.split(",")]
    args.protocols = [x for x in args.protocols.split(",") if x]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    cores = os.cpu_count() or 1
    if not 1 <= args.server_cores < cores:
        p.error(f"--server-cores must leave the client at least one of the {cores} cores, got {args.server_cores}")
    return args


def pin(server_cores: int) -> None:
    """Server on cores 0..K-1, client on K..: procs reads these when it starts a process."""
    last = (os.cpu_count() or 1) - 1
    procs.SERVER_CORE = "0" if server_cores == 1 else f"0-{server_cores - 1}"
    procs.CLIENT_CORE = str(server_cores) if server_cores == last else f"{server_cores}-{last}"


def target(workers: int) -> Target:
    def prepare(workdir: Path, ports: Ports) -> Launch:
        launch = prepare_servegraph(workdir, ports)
        return dataclasses.replace(launch, cmd=[*launch.cmd, "--frontend-workers", str(workers)])

    return Target(f"servegraph-fw{workers}", f"servegraph, --frontend-workers {workers}", prepare)


def medians(rounds: list[RunResult], settings: str) -> RunResult:
    """One result whose every cell is the median of its rounds (problems of any round kept)."""
    result = RunResult(settings=settings)
    cells: dict[tuple[str, str, int], list[Measured]] = defaultdict(list)
    for one in rounds:
        result.problems.update(one.problems)
        result.checks.update(one.checks)
        result.descriptions.update(one.descriptions)
        for cell in one.cells:
            cells[(cell.target, cell.protocol, cell.concurrency)].append(cell)
    for (name, protocol, concurrency), measured in cells.items():
        numbers = {
            f.name: statistics.median(getattr(m, f.name) for m in measured)
            for f in dataclasses.fields(Measured)
            if f.type in ("float", "int") and f.name != "concurrency"
        }
        result.cells.append(
            Measured(target=name, protocol=protocol, concurrency=concurrency, first_error=measured[0].first_error, **numbers)
        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run finally blocks and atexit
    pin(args.server_cores)
    started = time.monotonic()
    rounds: list[RunResult] = []
    try:
        for number in range(args.rounds):
            result = RunResult(settings="")
            order = args.workers[number % len(args.workers) :] + args.workers[: number % len(args.workers)]
            for workers in order:
                run.bench_target(target(workers), args, result)
            rounds.append(result)
    finally:
        procs.stop_all()
    settings = run.settings_line(args) + f" · server on {args.server_cores} core(s) · median of {args.rounds} round(s)."
    text = render(medians(rounds, settings), args.concurrency)
    text += f"\nWhole run: {time.monotonic() - started:.0f} s.\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    run.log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
