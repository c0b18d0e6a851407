"""Where the server's CPU goes, per request: one command, one table.

Starts ``servegraph serve`` on the bench MLP (examples/models/mlp: max batch 32, 1 ms) pinned
to core 0 with one BLAS thread, and this worktree's ``src`` first on PYTHONPATH. For each
protocol it warms up, then drives a fixed number of requests at concurrency ``c`` with
bench/loadgen.py on core 1 while py-spy samples the server (``--nonblocking``, so the server
is never paused). The server's CPU time over the window comes from /proc, per thread:

* the model executor thread's CPU is the ``model`` bucket;
* the event-loop (main) thread's CPU is split into buckets by py-spy's samples of that
  thread (each sample goes to the first rule that matches, leaf to root; see ``RULES``);
* every other thread (grpc's C-core pollers and the like) counts as ``transport``.

CPU seconds per thread do not depend on how busy the rest of the machine is (beyond
caches and frequency), so the per-request figures survive a contended machine better than
throughput does. Prints one table of server CPU µs per request by bucket and protocol.

    python bench/profile.py                          # gRPC + HTTP binary, c=64, 20000 requests
    python bench/profile.py --requests 5000 --protocols grpc
    python bench/profile.py --no-spy                 # only the /proc totals (no py-spy)
    python bench/profile.py --keep                   # keep the raw py-spy stacks (bench/results/)

Buckets: ``transport`` (the event loop, aiohttp's or uvicorn's HTTP parsing, grpc's Cython server and
its protobuf (de)serialisation, which py-spy cannot see into), ``decode`` (wire format to
numpy), ``validation`` (request against the model's signature), ``queueing`` (batcher: queue,
plan, wake-ups, futures), ``merge``, ``model`` (the executor thread, and batches run inline
on the event loop's thread), ``split``, ``encode``
(numpy to wire format), ``answer`` (shaping the response, writing it), ``stats`` (Triton
statistics and Prometheus metrics), ``other`` (main-thread samples matching no rule).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from targets import Ports, prepare_servegraph  # noqa: E402

from servegraph.ports import free_port  # noqa: E402

BUCKETS = (
    "transport", "decode", "validation", "queueing", "merge", "model", "split", "encode",
    "answer", "stats", "other",
)

# (bucket, path fragment, function names or None for any): first match from the leaf wins.
RULES: list[tuple[str, str, frozenset[str] | None]] = [
    ("model", "batching/batcher.py", frozenset({"_timed_predict"})),  # a batch run on the loop's thread
    ("merge", "batching/padding.py", frozenset({"merge", "padded_shape"})),
    ("split", "batching/padding.py", frozenset({"split"})),
    ("stats", "runtime/stats.py", None),
    ("stats", "runtime/metrics.py", None),
    ("stats", "prometheus_client/", None),
    ("decode", "protocol/grpc_codec.py", frozenset({"decode_request", "parameters_to_dict", "_typed_contents",
                                                    "decode_raw_request", "_parse_request", "_infer_tensor",
                                                    "_parameters"})),
    ("decode", "protocol/rest_codec.py", frozenset({"decode_request", "_json_tensor", "_parse_json", "_expect"})),
    ("decode", "protocol/datatypes.py", frozenset({"tensor_from_buffer", "deserialize_bytes", "element_count",
                                                  "numpy_dtype", "describe_input"})),
    ("decode", "servers/grpc.py", frozenset({"_metadata", "_deadline"})),
    ("decode", "servers/rest_api.py", frozenset({"integer_header", "timeout_header"})),
    ("encode", "protocol/grpc_codec.py", frozenset({"encode_response", "fill_parameters", "encode_raw_response"})),
    ("encode", "protocol/rest_codec.py", frozenset({"encode_response", "_json_data"})),
    ("encode", "protocol/datatypes.py", frozenset({"tensor_to_bytes", "serialize_bytes"})),
    ("validation", "runtime/model.py", frozenset({"check_request", "signature_shape"})),
    ("validation", "runtime/dataplane.py", frozenset({"_apply_timeout_parameter", "model_for"})),
    ("validation", "repository/", None),
    ("queueing", "batching/", None),
    ("answer", "aiohttp/web_response.py", None),
    ("answer", "aiohttp/http_writer.py", None),
    ("answer", "aiohttp/web_protocol.py", frozenset({"finish_response"})),
    ("transport", "aiohttp/", None),
    ("answer", "uvicorn/protocols/http/httptools_impl.py", frozenset({"send"})),
    ("transport", "uvicorn/", None),
    ("transport", "httptools/", None),
    ("answer", "runtime/model.py", None),
    ("answer", "runtime/dataplane.py", None),
    ("answer", "servers/grpc.py", None),
    ("answer", "servers/rest.py", None),
    ("answer", "servers/rest_api.py", None),
    ("transport", "servers/rest_uvicorn.py", frozenset({"body", "_decompress", "__init__"})),
    ("answer", "servers/rest_uvicorn.py", None),
    ("transport", "asyncio/", None),
    ("transport", "uvloop/", None),
    ("transport", "grpc/", None),
]


def classify(frames: list[str]) -> str:
    """The bucket of one main-thread stack (frames root first, as py-spy writes them)."""
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        for bucket, fragment, names in RULES:
            if fragment in path and (names is None or name in names):
                return bucket
    return "other" if len(frames) > 3 else "transport"  # bare loop frames: Cython/C under the loop


@dataclass
class Window:
    """One protocol's measured window."""

    protocol: str
    requests: int
    wall_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # bucket -> CPU seconds
    total_cpu_s: float = 0.0
    batches: int = 0
    rows: int = 0
    samples: int = 0


def thread_ticks(pid: int) -> dict[int, int]:
    """utime+stime clock ticks of every thread of ``pid``."""
    out: dict[int, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def model_counts(http_port: int) -> tuple[int, int]:
    """(executions, inferences) of the model so far, from the statistics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/mlp/stats", timeout=5) as resp:
        stats = json.loads(resp.read())["model_stats"][0]
    return int(stats["execution_count"]), int(stats["inference_count"])


def run_loadgen(protocol: str, ports: Ports, pid: int, concurrency: int, requests: int) -> dict:
    spec = {
        "protocol": protocol, "http_port": ports.http, "grpc_port": ports.grpc,
        "concurrencies": [concurrency], "seconds": 0.0, "warmup": 0.0,
        "server_pid": pid, "requests": requests,
    }
    return procs.counted_cell(spec, protocol)


def spy_buckets(raw: Path, main_tid: int) -> tuple[Counter[str], Counter[int], set[int]]:
    """Main-thread samples by bucket, samples per thread, and the model threads' ids."""
    buckets: Counter[str] = Counter()
    per_thread: Counter[int] = Counter()
    model_tids: set[int] = set()
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        head = frames[0]  # "thread (1234): name"
        try:
            tid = int(head[head.index("(") + 1 : head.index(")")])
        except ValueError:
            continue
        count = int(count_s)
        per_thread[tid] += count
        if tid == main_tid:
            buckets[classify(frames[1:])] += count
        elif any("concurrent/futures/thread.py" in f for f in frames):
            model_tids.add(tid)
    return buckets, per_thread, model_tids


def profile_protocol(
    protocol: str, ports: Ports, pid: int, args: argparse.Namespace, workdir: Path
) -> Window:
    log(f"{protocol}: warm-up, {args.warmup_requests} requests")
    run_loadgen(protocol, ports, pid, args.concurrency, args.warmup_requests)
    raw = workdir / f"pyspy-{protocol}.txt"
    spy = None
    if not args.no_spy:
        spy = subprocess.Popen(
            ["taskset", "-c", procs.CLIENT_CORE, args.py_spy, "record", "--pid", str(pid), "--format", "raw",
             "--threads", "--nonblocking", "--rate", str(args.rate), "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # py-spy attaches
    e0, n0 = model_counts(ports.http)
    t0 = thread_ticks(pid)
    log(f"{protocol}: measuring {args.requests} requests at c={args.concurrency}")
    cell = run_loadgen(protocol, ports, pid, args.concurrency, args.requests)
    t1 = thread_ticks(pid)
    e1, n1 = model_counts(ports.http)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
    hz = os.sysconf("SC_CLK_TCK")
    delta = {tid: (t1.get(tid, 0) - t0.get(tid, 0)) / hz for tid in t1}
    window = Window(
        protocol=protocol, requests=cell["requests"], wall_s=cell["requests"] / max(cell["rows_per_s"], 1e-9),
        rows_per_s=cell["rows_per_s"], p50_ms=cell["p50_ms"], p99_ms=cell["p99_ms"],
        client_cpu=cell["client_cpu"], batches=e1 - e0, rows=n1 - n0,
    )
    window.total_cpu_s = sum(delta.values())
    main_cpu = delta.get(pid, 0.0)
    cpu = dict.fromkeys(BUCKETS, 0.0)
    if spy is not None and raw.is_file() and raw.stat().st_size:
        buckets, per_thread, model_tids = spy_buckets(raw, pid)
        window.samples = sum(buckets.values())
        for bucket, count in buckets.items():
            cpu[bucket] += main_cpu * count / max(window.samples, 1)
    else:
        model_tids = set()
        cpu["other"] += main_cpu
        if spy is not None:
            log(f"py-spy produced nothing: {spy.stderr.read().decode()[-500:] if spy.stderr else ''}")
    if not model_tids:  # no py-spy: the busiest non-main thread runs the model
        others = sorted(((d, tid) for tid, d in delta.items() if tid != pid), reverse=True)
        model_tids = {others[0][1]} if others else set()
    for tid, seconds in delta.items():
        if tid == pid:
            continue
        cpu["model" if tid in model_tids else "transport"] += seconds
    window.cpu_s = cpu
    if args.keep and raw.is_file():
        dest = BENCH / "results" / f"pyspy-{protocol}.txt"
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(raw, dest)
    return window


def render(windows: list[Window], args: argparse.Namespace, load: str) -> str:
    lines = [
        f"Server CPU µs per request, c={args.concurrency}, {args.requests} requests per protocol "
        f"(server on core {procs.SERVER_CORE}, client on core {procs.CLIENT_CORE}; load average at start {load})",
        "",
        "| bucket | " + " | ".join(w.protocol for w in windows) + " |",
        "|---|" + "---:|" * len(windows),
    ]
    for bucket in BUCKETS:
        lines.append(f"| {bucket} | " + " | ".join(f"{w.cpu_s[bucket] / max(w.requests, 1) * 1e6:.0f}" for w in windows) + " |")
    lines.append("| **total** | " + " | ".join(f"**{w.total_cpu_s / max(w.requests, 1) * 1e6:.0f}**" for w in windows) + " |")
    lines.append("| total without model | " + " | ".join(
        f"{(w.total_cpu_s - w.cpu_s['model']) / max(w.requests, 1) * 1e6:.0f}" for w in windows) + " |")
    lines.append("| mean batch (rows) | " + " | ".join(f"{w.rows / max(w.batches, 1):.1f}" for w in windows) + " |")
    lines.append("| requests/s (contended) | " + " | ".join(f"{w.rows_per_s:.0f}" for w in windows) + " |")
    lines.append("| p50 / p99 ms | " + " | ".join(f"{w.p50_ms:.1f} / {w.p99_ms:.1f}" for w in windows) + " |")
    lines.append("| server CPU share | " + " | ".join(f"{w.total_cpu_s / max(w.wall_s, 1e-9):.0%}" for w in windows) + " |")
    lines.append("| client CPU share | " + " | ".join(f"{w.client_cpu:.0%}" for w in windows) + " |")
    lines.append("| py-spy main-thread samples | " + " | ".join(str(w.samples) for w in windows) + " |")
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[profile] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocols", default="grpc,http", help="comma list from grpc, http, json")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=20000, help="measured requests per protocol")
    p.add_argument("--warmup-requests", type=int, default=2000)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--no-spy", action="store_true", help="only /proc CPU totals, no py-spy breakdown")
    p.add_argument("--keep", action="store_true", help="copy py-spy's raw stacks to bench/results/")
    p.add_argument("--src", type=Path, default=ROOT / "src",
                   help="the servegraph source tree to serve (A/B: a copy of another commit's src/)")
    p.add_argument("--config", type=Path, default=None, help="a config.yaml to use instead of the example's")
    p.add_argument("--http-server", default=None, help="serve's --http-server (aiohttp, uvicorn); default: serve's")
    args = p.parse_args(argv)
    args.protocols = [x for x in args.protocols.split(",") if x]
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.no_spy and not Path(args.py_spy).exists():
        p.error("py-spy not found: pip install py-spy (the bench extra), or pass --no-spy")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(prefix="servegraph-profile-") as tmp:
        workdir = Path(tmp)
        ports = Ports(free_port(), free_port(), free_port())
        launch = prepare_servegraph(workdir, ports)
        if args.config is not None:
            shutil.copy(args.config, workdir / "repo" / "mlp" / "config.yaml")
        # This checkout's code, not whatever servegraph the interpreter has installed.
        env = {**launch.env, "PYTHONPATH": str(args.src.resolve())}
        cmd = launch.cmd + (["--http-server", args.http_server] if args.http_server else [])
        server = procs.start_server("servegraph", cmd, workdir / "server.log", env=env)
        try:
            procs.wait_ready(server, ports.http, 120.0)
            log(f"server log: {workdir / 'server.log'}")
            windows = [profile_protocol(proto, ports, server.pid, args, workdir) for proto in args.protocols]
        finally:
            server.stop()
    print(render(windows, args, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
