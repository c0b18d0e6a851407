"""What a graph hop costs: 0-3 Transformer nodes, or a Router, in front of a model, via ``servegraph run``.

Each hop is a Transformer node (an identity StandardScaler on 16 floats) in front of a tiny
model (FP32 [n, 16] -> the same, no batching), chained on loopback as ``servegraph run``
wires them (nodes call their children over HTTP/1.1 binary tensors): 0 hops is the model
alone. ``--model mlp`` puts the bench MLP (FP32 [n, 512] -> 16, dynamic batching as in
``make bench``) there instead, so the hops' cost shows against a real model's rather than
against the echo model's, the worst case. A router case puts a Weighted Router in front of
two copies of the model, all traffic to one (``router-1``; a router needs two children, the
other stays idle) or half to each (``router-2``). Every process of the graph runs on core 0 (``taskset``), the client
(tritonclient ``grpc.aio`` on uvloop calling the entrypoint over gRPC, or with ``--protocol
http`` tritonclient ``http.aio`` with binary tensors) on core 1. Every graph runs from the
start; each cell sends a fixed number of requests in a closed loop, the cases interleaved
round by round, and the medians are reported: requests/s, p50 and p99, the p50 each hop
adds, requests/s as a share of the model alone's (the issue's target for a router: at
least 80 %), and the graph's CPU per request from /proc (what each hop adds), which a busy
machine disturbs far less than requests/s.

    python bench/hops.py                          # 0-3 hops, routers, c=1 and c=16, 3 rounds of 2000 requests per cell
    python bench/hops.py --hops 0,1 --routers "" --concurrency 1 --requests 500
    python bench/hops.py --hops 0 --routers 1 --protocol http   # the router behind an HTTP entry
    python bench/hops.py --hops 0 --routers 1 --server-cores 3  # a bigger machine: router and model a core each
    python bench/hops.py --model mlp --hops 0,1 --routers 1      # the hops in front of the bench MLP
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from loadgen import tree_cpu_seconds  # noqa: E402

from servegraph.ports import free_port  # noqa: E402

WIDTH = 16
WARMUP = 50
MLP_EXAMPLE = ROOT / "examples" / "models" / "mlp"
MODEL_WIDTHS = {"echo": WIDTH, "mlp": 512}

MODEL_CONFIG = {
    "backend": "python",
    "max_batch_size": 16,
    "input": [{"name": "INPUT", "data_type": "FP32", "dims": [WIDTH]}],
    "output": [{"name": "OUTPUT", "data_type": "FP32", "dims": [WIDTH]}],
}
MODEL_CODE = textwrap.dedent('''\
    import numpy as np


    class Echo:
        def predict(self, inputs):
            return {"OUTPUT": np.asarray(inputs["INPUT"], dtype=np.float32).copy()}
''')


def write_model(folder: Path, model: str) -> str:
    """Lay out the model behind the hops (``echo``, or ``mlp``: the bench MLP, batching on);
    return its storageUri."""
    model_dir = folder / "models" / model
    if model == "mlp":
        if not model_dir.exists():
            shutil.copytree(MLP_EXAMPLE, model_dir)
        return f"models/{model}"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(MODEL_CONFIG, sort_keys=False))
    (model_dir / "1" / "model.py").write_text(MODEL_CODE)
    return f"models/{model}"


def write_manifest(folder: Path, name: str, entrypoint: str, nodes: list[dict[str, object]]) -> Path:
    manifest = {
        "apiVersion": "servegraph.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"entrypoint": entrypoint, "nodes": nodes},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def write_router_graph(folder: Path, served_by: int, model: str = "echo") -> Path:
    """A ModelDeployment with a Weighted Router over two copies of the model, sending all
    traffic to the first (``served_by`` 1: a router needs two children, the second stays idle)
    or half to each (2)."""
    uri = write_model(folder, model)
    names = ["model1", "model2"]
    weights = [100, 0] if served_by == 1 else [50, 50]
    nodes: list[dict[str, object]] = [{
        "name": "router",
        "type": "Router",
        "children": names,
        "router": {"strategy": "Weighted", "weights": [{"child": n, "weight": w} for n, w in zip(names, weights)]},
    }]
    nodes += [{"name": n, "type": "Model", "model": {"storageUri": uri}} for n in names]
    return write_manifest(folder, f"router-{served_by}", "router", nodes)


def write_graph(folder: Path, hops: int, model: str = "echo") -> Path:
    """A ModelDeployment with ``hops`` identity Transformers in front of the model."""
    uri = write_model(folder, model)
    width = MODEL_WIDTHS[model]
    nodes: list[dict[str, object]] = []
    for i in range(hops):
        nodes.append({
            "name": f"hop{i + 1}",
            "type": "Transformer",
            "children": [f"hop{i + 2}" if i + 1 < hops else "model"],
            "transformer": {"input": [{
                "kind": "StandardScaler", "tensors": ["INPUT"], "mean": [0.0] * width, "scale": [1.0] * width,
            }]},
        })
    nodes.append({"name": "model", "type": "Model", "model": {"storageUri": uri}})
    return write_manifest(folder, f"hops-{hops}", "hop1" if hops else "model", nodes)


CLIENT = textwrap.dedent('''\
    import asyncio, json, sys, time
    import numpy as np
    if sys.argv[5] == "http":
        import tritonclient.http.aio as triton  # the same calls, with binary tensors
        BINARY = {"binary_data": True}
    else:
        import tritonclient.grpc.aio as triton
        BINARY = {}

    async def main(port, model, concurrency, requests, width, echo):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.arange(width, dtype=np.float32).reshape(1, width) / width
        inp = triton.InferInput("INPUT", [1, width], "FP32")
        inp.set_data_from_numpy(x, **BINARY)
        out = [triton.InferRequestedOutput("OUTPUT", **BINARY)]
        got = (await client.infer(model, [inp], outputs=out)).as_numpy("OUTPUT")
        assert got is not None and got.shape[0] == 1 and (not echo or np.allclose(got, x)), got
        for _ in range(%(warmup)d):
            await client.infer(model, [inp], outputs=out)
        latencies, issued = [], 0

        async def worker():
            nonlocal issued
            while issued < requests:
                issued += 1
                t0 = time.perf_counter()
                await client.infer(model, [inp], outputs=out)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        await client.close()
        lat = np.array(latencies) * 1e3
        print(json.dumps({"rps": len(latencies) / wall, "p50": float(np.percentile(lat, 50)),
                          "p99": float(np.percentile(lat, 99))}))

    import uvloop
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6]), sys.argv[7] == "echo"))
''') % {"warmup": WARMUP}


def entrypoint_model(http_port: int) -> str:
    """The name the entrypoint serves (a model node: its model; a graph node: the deployment)."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(json.loads(resp.read())[0]["name"])


@dataclass
class Graph:
    """One case's ``servegraph run``, started once and measured round after round."""

    label: str
    hops: int
    server: procs.ServerProcess
    http: int
    grpc: int
    model: str = ""
    cells: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def start(manifest: Path, label: str, hops: int, workdir: Path) -> Graph:
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "servegraph", "run", str(manifest), "--http-port", str(http),
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics)]
    name = label.replace(" ", "-")
    server = procs.start_server(name, cmd, workdir / f"{name}.log",
                                env={"PYTHONPATH": str(ROOT / "src")}, cwd=manifest.parent)
    return Graph(label, hops, server, http, grpc_port)


def node_cpu_seconds(runner: int) -> dict[str, float]:
    """CPU seconds of each node process ``servegraph run`` started, by node name (the folder
    of its ``--ports-file``)."""
    try:
        children = Path(f"/proc/{runner}/task/{runner}/children").read_text().split()
    except OSError:
        return {}
    nodes = {}
    for child in children:
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--ports-file" in args:
            name = Path(args[args.index("--ports-file") + 1]).parent.name
            nodes[name] = tree_cpu_seconds(int(child))
    return nodes


def measure(graph: Graph, c: int, requests: int, protocol: str, model: str = "echo") -> dict[str, float]:
    """One cell: ``requests`` closed-loop requests at concurrency ``c``, and the graph's CPU
    (``cpu_ms``) and each node's (``cpu_ms:NAME``) per request."""
    cpu_before = tree_cpu_seconds(graph.server.pid)
    nodes_before = node_cpu_seconds(graph.server.pid)
    proc = subprocess.run(
        ["taskset", "-c", procs.CLIENT_CORE, sys.executable, "-c", CLIENT,
         str(graph.http if protocol == "http" else graph.grpc), graph.model, str(c), str(requests), protocol,
         str(MODEL_WIDTHS[model]), model],
        capture_output=True, text=True, env=procs.pinned_env(), timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client failed for {graph.label}, c={c}:\n{proc.stderr[-1500:]}")
    cell: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    # The graph's CPU (every process of it, on core 0) per request, warm-up included: unlike
    # requests/s it hardly depends on what else the machine runs.
    sent = requests + WARMUP + 1
    cell["cpu_ms"] = (tree_cpu_seconds(graph.server.pid) - cpu_before) * 1e3 / sent
    for name, seconds in node_cpu_seconds(graph.server.pid).items():
        if name in nodes_before:
            cell[f"cpu_ms:{name}"] = (seconds - nodes_before[name]) * 1e3 / sent
    return cell


def median_cell(cells: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(cell[key] for cell in cells if key in cell) for key in cells[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hops", default="0,1,2,3")
    p.add_argument("--routers", default="1,2", help="router cases: models serving its traffic, 1 or 2 ('' for none)")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="how the client calls the entrypoint")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--model", choices=sorted(MODEL_WIDTHS), default="echo",
                   help="behind the hops: echo (16 floats, the worst case) or mlp (the bench MLP, batching on)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over every case; medians are printed")
    p.add_argument(
        "--server-cores", type=int, default=1,
        help="cores the graph's processes share (the client gets the rest): 3+ gives a router and its model a core each",
    )  # fmt: skip
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    if not 1 <= args.server_cores < cores:
        p.error(f"--server-cores must leave the client at least one of the {cores} cores, got {args.server_cores}")
    procs.pin(args.server_cores)
    hop_counts = [int(h) for h in args.hops.split(",") if h]
    router_children = [int(r) for r in args.routers.split(",") if r]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    graphs: list[Graph] = []
    with tempfile.TemporaryDirectory(prefix="servegraph-hops-") as tmp:
        folder = Path(tmp)
        try:
            # Every graph runs from the start (idle ones cost next to nothing), so rounds can
            # interleave the cases and a burst of load elsewhere hits them all alike. They start
            # one at a time: each picks free ports for its nodes, which must not race.
            cases = [(write_graph(folder, h, args.model), f"{h} hops", h) for h in hop_counts]
            cases += [(write_router_graph(folder, n, args.model), f"router-{n}", 1) for n in router_children]
            for manifest, label, hops in cases:
                graph = start(manifest, label, hops, folder)
                graphs.append(graph)
                procs.wait_ready(graph.server, graph.http, 180.0)
                graph.model = entrypoint_model(graph.http)
            for r in range(args.rounds):
                for graph in graphs:
                    print(f"[hops] round {r + 1}/{args.rounds}: {graph.label}", file=sys.stderr, flush=True)
                    for c in concurrencies:
                        graph.cells.setdefault(c, []).append(measure(graph, c, args.requests, args.protocol, args.model))
        finally:
            for graph in graphs:
                graph.server.stop()
    print(f"Graph hops in front of the {args.model} model, entrypoint over {args.protocol}, {args.requests} requests per cell, median of {args.rounds} "
          f"interleaved rounds (graph on core {procs.SERVER_CORE}, client on core {procs.CLIENT_CORE}; load average "
          f"at start {load})\n")
    header = " | ".join(
        f"c={c} req/s · p50 · p99 ms | c={c} p50 added per hop | c={c} req/s vs model | c={c} CPU ms/req (added per hop)"
        for c in concurrencies
    )
    print(f"| graph | {header} |")
    print("|---|" + "---:|---:|---:|---:|" * len(concurrencies))
    medians = {graph.label: {c: median_cell(cells) for c, cells in graph.cells.items()} for graph in graphs}
    base = medians.get("0 hops", {})
    for graph in graphs:
        row = []
        for c in concurrencies:
            cell = medians[graph.label][c]
            hops = graph.hops
            added = f"{(cell['p50'] - base[c]['p50']) / hops:.2f}" if hops and c in base else "–"
            share = f"{100 * cell['rps'] / base[c]['rps']:.0f} %" if hops and c in base else "–"
            cpu = f"{cell['cpu_ms']:.2f}"
            if hops and c in base:
                cpu += f" ({(cell['cpu_ms'] - base[c]['cpu_ms']) / hops:.2f})"
            row.append(f"{cell['rps']:.0f} · {cell['p50']:.2f} · {cell['p99']:.1f} | {added} | {share} | {cpu}")
        print(f"| {graph.label} | " + " | ".join(row) + " |")
    routers = [graph for graph in graphs if graph.label.startswith("router")]
    if routers:
        print("\nEach node's own CPU per request (ms), and the requests/s one core would serve at that"
              " cost: in a cluster, where each node is a pod with its own CPU, a router caps nothing"
              " while it can serve more than the model behind it.\n")
        print("| graph | c | " + " | ".join(["router", "model1", "model2"]) + " |\n|---|---:|---:|---:|---:|")
        for graph in routers:
            for c in concurrencies:
                cell = medians[graph.label][c]
                shown = []
                for name in ("router", "model1", "model2"):
                    ms = cell.get(f"cpu_ms:{name}")
                    shown.append("–" if ms is None else f"{ms:.3f} ({1e3 / ms:.0f}/s)" if ms > 0.001 else f"{ms:.3f}")
                print(f"| {graph.label} | {c} | " + " | ".join(shown) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
