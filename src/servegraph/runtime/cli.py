"""``servegraph serve``: the runtime's command line (Triton's flags and default ports)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.process import exit_now
from servegraph.runtime.server import Server


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "serve", help="serve every model in a model repository (or one graph node) over v2 HTTP and gRPC"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-repository", help="directory of <model>/<version>/ folders")
    source.add_argument(
        "--node-config", help="a graph node's config (YAML or JSON NodeConfig): serve a router, combiner or transformer"
    )
    p.add_argument("--child-poll-secs", type=float, default=1.0, help="node mode: how often children's readiness is checked")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--ports-file", default="",
        help="write the bound ports as JSON {http, grpc, metrics} here once listening (use with port 0)",
    )
    p.add_argument("--repository-poll-secs", type=float, default=5.0, help="rescan period; 0 turns polling off")
    p.add_argument("--max-request-bytes", type=int, default=64 << 20)
    p.add_argument("--default-max-queue-size", type=int, default=1024)
    p.add_argument("--strict-readiness", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--exit-timeout-secs", type=float, default=30.0)
    p.add_argument(
        "--exit-on-error", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
        help="exit 1 naming the model when one fails to load at start (Triton's flag; the operator sets it)",
    )
    p.add_argument(
        "--http-server", choices=["aiohttp", "uvicorn"], default=None,
        help=f"the HTTP server under the REST API (default {ServerSettings.model_fields['http_server'].default};"
        " aiohttp with --frontend-workers); both answer alike",
    )
    p.add_argument(
        "--grpc-server", choices=["http2", "grpcio"], default=None,
        help=f"the server under the gRPC API (default {ServerSettings.model_fields['grpc_server'].default};"
        " workers use it too); both answer alike",
    )
    p.add_argument(
        "--frontend-workers", type=int, default=0,
        help="front-end processes sharing the HTTP and gRPC ports, feeding this process's batcher"
        " through shared memory (0: one process serves everything)",
    )
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    chosen = {key: getattr(args, key) for key in ("http_server", "grpc_server") if getattr(args, key)}
    try:
        settings = _settings(args, chosen)
    except ValueError as exc:  # settings that cannot work together: say why, no traceback
        print(f"servegraph serve: {exc}", file=sys.stderr)
        return 2
    runner: Callable[[Coroutine[Any, Any, bool]], bool]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is optional (not on Windows)
        runner = asyncio.run
    try:
        server = Server(settings)
    except ValueError as exc:  # a node config that cannot work: say why, no traceback
        print(f"servegraph serve: {exc}", file=sys.stderr)
        return 2
    drained = runner(server.serve())
    sys.stdout.flush()
    if server.failure:
        # The last line: Kubernetes' FallbackToLogsOnError makes it the termination message.
        print(f"servegraph serve: {server.failure}", file=sys.stderr, flush=True)
        exit_now(1)
    exit_now(0 if drained else 1)


def _settings(args: argparse.Namespace, chosen: dict[str, Any]) -> ServerSettings:
    return ServerSettings(
        model_repository=args.model_repository or "",
        node_config=args.node_config or "",
        child_poll_secs=args.child_poll_secs,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        ports_file=args.ports_file,
        repository_poll_secs=args.repository_poll_secs,
        max_request_bytes=args.max_request_bytes,
        default_max_queue_size=args.default_max_queue_size,
        strict_readiness=args.strict_readiness,
        exit_timeout_secs=args.exit_timeout_secs,
        exit_on_error=args.exit_on_error,
        **chosen,
        frontend_workers=args.frontend_workers,
    )
