"""Benchmark servegraph against its peers on this machine; prints a markdown report.

Every server runs on core 0 (``taskset -c 0``, one BLAS thread); the closed-loop load
generator (bench/loadgen.py, tritonclient aio) runs on core 1. For each target: lay out
its repository in a temp dir, start it, wait for /v2/health/ready, check one answer
against the in-process model, then time each protocol at each concurrency. The report
goes to stdout and bench/results/latest.md.

    python bench/run.py                      # every target, 3 protocols, c=1,4,16,64, 5 s cells
    python bench/run.py --quick --targets servegraph,servegraph-nobatch
    python bench/run.py --setup              # build the peers' venvs first (idempotent)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from servegraph.ports import free_port

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from report import Measured, RunResult, medians, render  # noqa: E402
from targets import ALL_PROTOCOLS, TARGETS, Ports, Target, peer_venv  # noqa: E402

DEFAULT_CONCURRENCY = (1, 4, 16, 64)
QUICK_CONCURRENCY = (1, 16)
LOADGEN_SLACK_S = 90.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma list from {', '.join(TARGETS)}")
    p.add_argument("--protocols", default=",".join(ALL_PROTOCOLS),
                   help="comma list from grpc, http (binary tensors), json (HTTP JSON)")
    p.add_argument("--concurrency", default=None, help="comma list (default 1,4,16,64)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per cell (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds (each target once per round, order rotated); cells show medians")
    p.add_argument("--quick", action="store_true", help="c=1,16, 2 s cells, 0.5 s warm-up")
    p.add_argument("--setup", action="store_true", help="run bench/setup_peers.sh first")
    p.add_argument("--no-ceiling", action="store_true", help="skip the model-alone measurement")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "latest.md")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown targets {unknown}; choose from {list(TARGETS)}")
    args.protocols = [x for x in args.protocols.split(",") if x]
    if bad := [x for x in args.protocols if x not in ALL_PROTOCOLS]:
        p.error(f"unknown protocols {bad}; choose from {list(ALL_PROTOCOLS)}")
    default_c = QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY
    args.concurrency = [int(c) for c in args.concurrency.split(",")] if args.concurrency else list(default_c)
    args.seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    return args


def setup_peers(targets: list[str]) -> None:
    """Run bench/setup_peers.sh for the peers these targets need (failures are recorded)."""
    peers = sorted({peer for t in targets if (peer := TARGETS[t].peer)})
    if peers:
        log(f"setting up peers: {', '.join(peers)}")
        subprocess.run(["bash", str(BENCH / "setup_peers.sh"), *peers], stdout=sys.stderr, timeout=1800)


def ceiling_pythons(targets: list[str]) -> dict[str, Path]:
    """The interpreters the chosen targets run their model with: the bench's and each peer's."""
    pythons = {"bench venv (servegraph targets)": Path(sys.executable)}
    for name in targets:
        peer = TARGETS[name].peer
        if peer and TARGETS[name].unavailable() is None:
            pythons[f"{peer} venv"] = peer_venv(peer) / "bin" / "python"
    return pythons


def measure_ceiling(python: Path, seconds: float) -> tuple[str, dict[int, float]]:
    """Model-alone rows/s per batch size, in a subprocess pinned like a server."""
    out = subprocess.run(
        ["taskset", "-c", procs.SERVER_CORE, str(python), str(BENCH / "ceiling.py"), str(seconds)],
        env=procs.pinned_env(), check=True, capture_output=True, text=True, timeout=300,
        cwd=BENCH,
    )
    data = json.loads(out.stdout)
    return data["numpy"], {int(k): float(v) for k, v in data["rows_per_s"].items()}


def drive(target: Target, protocol: str, ports: Ports, server_pid: int, args: argparse.Namespace) -> dict:
    """Run the load generator on the client core for one target and protocol."""
    spec = {
        "protocol": protocol,
        "http_port": ports.http,
        "grpc_port": ports.grpc,
        "concurrencies": args.concurrency,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "server_pid": server_pid,
        "http_headers": target.http_headers,
    }
    budget = len(args.concurrency) * (args.seconds + args.warmup + 30) + LOADGEN_SLACK_S
    return procs.run_loadgen(spec, timeout=budget)


def bench_target(
    target: Target, args: argparse.Namespace, result: RunResult, driver: Callable[..., dict] | None = None
) -> None:
    """Start one target, check and time each of its protocols, always stop it (``driver``:
    how to load it, ``drive`` by default)."""
    protocols = [p for p in args.protocols if p in target.protocols]
    for protocol in args.protocols:
        if protocol in target.unsupported:
            result.skipped[f"{target.name}/{protocol}"] = target.unsupported[protocol]
    if not protocols:
        return
    if reason := target.unavailable():
        result.problems[target.name] = reason
        log(f"{target.name}: unavailable: {reason}")
        return
    result.descriptions[target.name] = target.description
    with tempfile.TemporaryDirectory(prefix=f"bench-{target.name}-") as tmp:
        workdir = Path(tmp)
        ports = Ports(free_port(), free_port(), free_port())
        proc = None
        try:
            launch = target.prepare(workdir, ports)
            proc = procs.start_server(
                target.name, launch.cmd, workdir / "server.log", launch.env, launch.cwd or workdir
            )
            started = time.monotonic()
            procs.wait_ready(proc, ports.http, target.startup_timeout_s)
            log(f"{target.name}: ready in {time.monotonic() - started:.1f} s")
            for protocol in protocols:
                key = f"{target.name}/{protocol}"
                try:
                    out = (driver or drive)(target, protocol, ports, proc.pid, args)
                except Exception as exc:  # one protocol failing must not stop the others
                    result.problems[key] = f"{type(exc).__name__}: {exc}"[:400]
                    log(f"{key}: {result.problems[key]}")
                    continue
                check = out["check"]
                if not check["ok"]:
                    result.problems[key] = f"output check failed: {check['detail']}"
                    log(f"{key}: {result.problems[key]}")
                    continue
                result.checks[(target.name, protocol)] = f"ok ({check['detail']})"
                for cell in out["cells"]:
                    m = Measured(target=target.name, protocol=protocol, **cell)
                    result.cells.append(m)
                    if m.errors:
                        result.problems[f"{key}/c={m.concurrency}"] = f"{m.errors} errors, first: {m.first_error}"
                    log(
                        f"{key} c={m.concurrency}: {m.rows_per_s:.0f} rows/s, p50 {m.p50_ms:.1f} ms, "
                        f"p99 {m.p99_ms:.1f} ms, client CPU {m.client_cpu:.0%}, server CPU {m.server_cpu:.0%}"
                    )
        except Exception as exc:
            detail = str(exc).strip().replace("\n", " | ")
            result.problems[target.name] = f"{type(exc).__name__}: {detail}"[:600]
            log(f"{target.name}: failed: {exc}")
        finally:
            if proc is not None:
                proc.stop()


def settings_line(args: argparse.Namespace) -> str:
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return (
        f"{now} · {platform.node()} · servers on core {procs.SERVER_CORE}, client on core "
        f"{procs.CLIENT_CORE}, one BLAS thread · one [1, 512] FP32 row per request · "
        f"{args.seconds:g} s per cell after {args.warmup:g} s warm-up · concurrency "
        f"{', '.join(map(str, args.concurrency))} · "
        + (f"median of {args.rounds} interleaved rounds · " if args.rounds > 1 else "")
        + "figures drift ±20 % between runs: compare within one run."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run finally blocks and atexit
    if args.setup:
        setup_peers(args.targets)
    result = RunResult(settings=settings_line(args))
    started = time.monotonic()
    rounds: list[RunResult] = []
    try:
        if not args.no_ceiling:
            for label, python in ceiling_pythons(args.targets).items():
                try:
                    version, rates = measure_ceiling(python, 0.25 if args.quick else 0.5)
                except Exception as exc:
                    result.problems[f"ceiling with {label}"] = f"{type(exc).__name__}: {exc}"
                    continue
                result.ceiling[f"{label}, numpy {version}"] = rates
                log(f"ceiling, {label}: " + ", ".join(f"{b}: {v:.0f}" for b, v in rates.items()))
        for number in range(args.rounds):
            one = RunResult(settings="")
            shift = number % len(args.targets)
            for name in args.targets[shift:] + args.targets[:shift]:
                bench_target(TARGETS[name], args, one)
            rounds.append(one)
    finally:
        procs.stop_all()
    measured = medians(rounds, result.settings)
    measured.ceiling = result.ceiling
    measured.problems.update(result.problems)
    result = measured
    text = render(result, args.concurrency)
    text += f"\nWhole run: {time.monotonic() - started:.0f} s.\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
