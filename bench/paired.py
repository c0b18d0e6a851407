"""A lone caller's latency on two targets, paired: requests alternate between them.

At c=1 the difference between two servers is a few percent, while this machine's speed
drifts by ±20 % from minute to minute; cells measured one after the other (``run.py``) then
rank whichever ran in the faster minute. Here one client on the client core sends one
[1, 512] request to target A, one to target B, one to B, one to A, and so on, so a slow
phase hits both alike. Both servers sit on the server core (only one works at a time).

    python bench/paired.py                                   # servegraph vs triton-nobatch, gRPC
    python bench/paired.py --targets servegraph,servegraph-nobatch --protocol http --requests 3000
    python bench/paired.py --targets servegraph,servegraph --src /tmp/a/src,/tmp/b/src   # two commits
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import procs  # noqa: E402
from mlp_model import INPUT_NAME, MODEL_NAME, OUTPUT_NAME, sample_input  # noqa: E402
from targets import TARGETS, Ports  # noqa: E402

from servegraph.ports import free_port  # noqa: E402

WARMUP = 200


async def alternate(protocol: str, ports: list[int], requests: int) -> list[list[float]]:
    """Latencies in seconds per target: ``requests`` each, after WARMUP each, in ABBA order."""
    payload = sample_input(1)
    if protocol == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module  # type: ignore[no-redef]
    clients = [client_module.InferenceServerClient(f"127.0.0.1:{port}") for port in ports]
    tensor = client_module.InferInput(INPUT_NAME, [1, payload.shape[1]], "FP32")
    outputs = [client_module.InferRequestedOutput(OUTPUT_NAME)]
    if protocol == "grpc":
        tensor.set_data_from_numpy(payload)
    else:
        tensor.set_data_from_numpy(payload, binary_data=True)
        outputs = [client_module.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]
    latencies: list[list[float]] = [[], []]
    try:
        for i in range(requests + WARMUP):
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                start = time.perf_counter()
                await clients[k].infer(MODEL_NAME, [tensor], outputs=outputs)
                if i >= WARMUP:
                    latencies[k].append(time.perf_counter() - start)
    finally:
        for client in clients:
            await client.close()
    return latencies


def client_main(argv: list[str]) -> None:
    """The client core's side: alternate, print percentiles as JSON."""
    protocol, port_a, port_b, requests = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    latencies = asyncio.run(alternate(protocol, [port_a, port_b], requests))
    print(json.dumps([
        {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p90_ms": float(np.percentile(lat, 90) * 1e3),
         "mean_ms": float(np.mean(lat) * 1e3)}
        for lat in latencies
    ]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="servegraph,triton-nobatch", help="two targets from run.py's list")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="http = HTTP with binary tensors")
    p.add_argument("--requests", type=int, default=2000, help="measured requests per target")
    p.add_argument("--src", default="", help="A,B: the servegraph source trees the two targets serve (copies of commits' src/)")
    args = p.parse_args(argv)
    sources = args.src.split(",") if args.src else ["", ""]
    if len(sources) != 2:
        p.error("--src needs two source trees, comma-separated")
    names = args.targets.split(",")
    if len(names) != 2 or any(name not in TARGETS for name in names):
        p.error(f"--targets needs two of {', '.join(TARGETS)}")
    started, ports = [], []
    try:
        for name, source in zip(names, sources):
            target = TARGETS[name]
            if reason := target.unavailable():
                print(f"{name}: unavailable: {reason}", file=sys.stderr)
                return 1
            workdir = Path(tempfile.mkdtemp(prefix=f"paired-{name}-"))
            target_ports = Ports(free_port(), free_port(), free_port())
            launch = target.prepare(workdir, target_ports)
            env = {**launch.env, "PYTHONPATH": str(Path(source).resolve())} if source else launch.env
            server = procs.start_server(name, launch.cmd, workdir / "server.log", env, launch.cwd or workdir)
            started.append(server)
            procs.wait_ready(server, target_ports.http, target.startup_timeout_s)
            ports.append(target_ports.grpc if args.protocol == "grpc" else target_ports.http)
        out = subprocess.run(
            ["taskset", "-c", procs.CLIENT_CORE, sys.executable, __file__, "--client", args.protocol,
             str(ports[0]), str(ports[1]), str(args.requests)],
            env=procs.pinned_env(), capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
    finally:
        for server in started:
            server.stop()
    a, b = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"c=1, {args.protocol}, {args.requests} requests each, alternating (ms)")
    print("| target | p50 | p90 | mean |\n|---|---:|---:|---:|")
    for name, source, cell in zip(names, sources, (a, b)):
        label = f"{name} ({source})" if source else name
        print(f"| {label} | {cell['p50_ms']:.3f} | {cell['p90_ms']:.3f} | {cell['mean_ms']:.3f} |")
    print(f"\n{names[1]} / {names[0]} at p50: {b['p50_ms'] / a['p50_ms']:.3f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main(sys.argv[2:])
    else:
        raise SystemExit(main())
