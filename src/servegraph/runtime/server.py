"""One ``servegraph serve`` process: REST, gRPC and metrics listeners over one data plane.

Listeners open first (live, not ready), then the repository loads and warms up, then the
server reports ready. SIGTERM (what a pod gets on a rolling update) flips readiness off at
once, refuses new work, finishes what is queued and running, and exits.

With ``frontend_workers`` > 0 the public HTTP and gRPC ports belong to that many worker
processes (``runtime.frontend``); this process keeps the batcher and the models, serves the
workers' inference through shared memory, and answers their other routes on private unix
sockets. The metrics port stays here: batching, queue and latency metrics are this process's
(latency from arrival here, the workers' decoding and encoding not included), plus each
worker's forwarded requests (``servegraph_frontend_requests_total{worker}``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from servegraph.runtime.config import ServerSettings
from servegraph.runtime.dataplane import DataPlane
from servegraph.runtime.frontend.pool import FrontendPool
from servegraph.runtime.graph.config import NodeConfig
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.repository.manager import ModelRepository
from servegraph.runtime.servable import ModelSource
from servegraph.runtime.servers import grpc as grpc_server
from servegraph.runtime.servers import grpc_h2
from servegraph.runtime.servers import rest
from servegraph.runtime.servers.rest_listeners import RestListener, open_rest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ports:
    http: int
    grpc: int
    metrics: int


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, protobuf descriptors, models) out of the
    garbage collector's reach, as Instagram's servers do: a full collection no longer walks it.
    Measured on the bench MLP at c=64 over gRPC: full collections paused the event loop for
    21-71 ms mid-load, which made the p99 2.5x the p50."""
    gc.collect()
    gc.freeze()


def write_ports_file(path: Path, ports: Ports) -> None:
    """Write ``ports`` as JSON, atomically: a reader polling the file sees all of it or nothing."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"http": ports.http, "grpc": ports.grpc, "metrics": ports.metrics}))
    os.replace(partial, path)


class Server:
    def __init__(self, settings: ServerSettings, node: NodeConfig | None = None) -> None:
        """Model mode (``settings.model_repository``) or node mode (``node``, else the
        ``settings.node_config`` file): one graph node served under its model name."""
        self.settings = settings
        self.metrics = ServerMetrics()
        self.repository = self._model_source(settings, node)
        self.dataplane = DataPlane(self.repository, settings, self.metrics.inflight)
        self.ports: Ports | None = None
        self._listeners: list[RestListener] = []
        self._grpc: object | None = None
        self._poller: asyncio.Task[None] | None = None
        self.frontend: FrontendPool | None = None
        self._private_dir = ""
        self._private_runners: list[web.AppRunner] = []
        self.stopping = asyncio.Event()
        self.failure = ""
        """Why the server gave up at start (exit_on_error); empty when it did not."""

    def _model_source(self, settings: ServerSettings, node: NodeConfig | None) -> ModelSource:
        if node is None and not settings.node_config:
            if not settings.model_repository:
                raise ValueError("servegraph serve needs a model repository or a node config")
            return ModelRepository(
                Path(settings.model_repository),
                self.metrics,
                settings.default_max_queue_size,
                drain_timeout=settings.exit_timeout_secs,
            )
        if settings.model_repository:
            raise ValueError("servegraph serve takes a model repository or a node config, not both")
        # Imported here: the graph roles pull in scipy and tritonclient's aio client, which a
        # model server never needs.
        from servegraph.runtime.graph.hosting import NodeHost, build_node, load_node_config

        base_dir = None
        if node is None:
            path = Path(settings.node_config)
            node, base_dir = load_node_config(path), path.resolve().parent
        return NodeHost(build_node(node, self.metrics, base_dir=base_dir, poll_interval=settings.child_poll_secs))

    async def _listen(self, app: web.Application, port: int) -> int:
        listener = await rest.AiohttpListener.open(app, self.settings.host, port)
        self._listeners.append(listener)
        return listener.port

    async def _listen_private(self, app: web.Application, path: str) -> None:
        """The workers' way in for every route but inference (a unix socket, never public)."""
        runner = rest.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        self._private_runners.append(runner)  # not a listener: workers need it until they are gone

    async def _start_frontend(self) -> tuple[int, int]:
        """Private listeners for the workers, then the workers on the public ports."""
        _remove_orphaned_private_dirs()
        self._private_dir = tempfile.mkdtemp(prefix=f"servegraph-frontend-{os.getpid()}-")
        await self._listen_private(rest.create_app(self.dataplane), f"{self._private_dir}/http.sock")
        grpc_address = f"unix:{self._private_dir}/grpc.sock"
        server, _ = grpc_server.create_server(self.dataplane, grpc_address)
        await server.start()
        self._grpc = server
        self.frontend = FrontendPool(
            self.dataplane,
            self.settings,
            self.metrics,
            self._fail,
            forward_headers=not isinstance(self.repository, ModelRepository),
        )
        return await self.frontend.start(f"{self._private_dir}/http.sock", grpc_address)

    def _fail(self, reason: str) -> None:
        """Give up loudly (a front-end worker that keeps dying): the CLI exits 1 with ``reason``."""
        log.error("%s", reason)
        if not self.failure:
            self.failure = reason
        self.stopping.set()

    async def start(self) -> Ports:
        """Open the listeners, load and warm up every model, then become ready."""
        s = self.settings
        if s.frontend_workers > 0:
            http_port, grpc_port = await self._start_frontend()
        else:
            api = await open_rest(s.http_server, self.dataplane, s.host, s.http_port)
            self._listeners.append(api)
            http_port = api.port
            create = grpc_h2.create_server if s.grpc_server == "http2" else grpc_server.create_server
            server, grpc_port = create(self.dataplane, f"{s.host}:{s.grpc_port}")
            await server.start()
            self._grpc = server
        metrics_port = await self._listen(rest.create_metrics_app(self.metrics.render), s.metrics_port)
        self.ports = Ports(http_port, grpc_port, metrics_port)
        log.info(
            "listening: HTTP %s:%d, gRPC %s:%d, metrics %s:%d",
            s.host, http_port, s.host, grpc_port, s.host, metrics_port,
        )  # fmt: skip
        if s.ports_file:
            write_ports_file(Path(s.ports_file), self.ports)
        await self.repository.sync()
        failed = [r for r in self.repository.index() if r["state"] == "UNAVAILABLE"]
        if failed and s.exit_on_error:
            self.failure = "; ".join(
                f"model '{r['name']}'" + (f" version {r['version']}" if r.get("version") else "")
                + f" failed to load: {r.get('reason') or 'unknown error'}"
                for r in failed
            )
            log.error("%s (exit on error)", self.failure)
            self.stopping.set()
            return self.ports
        self.dataplane.started = True
        freeze_startup_objects()
        if s.repository_poll_secs > 0:
            self._poller = asyncio.get_running_loop().create_task(
                self.repository.poll(s.repository_poll_secs)
            )
        log.info("ready: %s", ", ".join(f"{r['name']}/{r.get('version', '-')}={r['state']}" for r in self.repository.index()))
        return self.ports

    async def stop(self) -> bool:
        """Drain and close. Returns False when the exit timeout cut the drain short."""
        self.dataplane.draining = True
        timeout = self.settings.exit_timeout_secs
        log.info("draining (up to %.0f s)", timeout)
        if self._poller is not None:
            self._poller.cancel()
        if self.frontend is not None:
            self.frontend.begin_stop()  # workers close their ports and wait for their answers
        for listener in self._listeners:
            await listener.stop_accepting()  # open connections get 503 from the data plane
        try:
            drained = await asyncio.wait_for(self.repository.close(timeout), timeout + 1)
        except asyncio.TimeoutError:
            drained = False
        if self.frontend is not None:
            await self.frontend.close(timeout=5.0)
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)  # type: ignore[attr-defined]
        for listener in self._listeners:
            await listener.close()
        for runner in self._private_runners:
            await runner.cleanup()
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        log.info("stopped%s", "" if drained else " (exit timeout hit with work still running)")
        return drained

    async def serve(self) -> bool:
        """Run until SIGTERM/SIGINT, then drain. The CLI's main coroutine."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        starting = loop.create_task(self.start())
        stop_wait = loop.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            await stop_wait
        else:
            starting.cancel()
        return await self.stop()


def _remove_orphaned_private_dirs() -> None:
    """Remove the socket folders of killed servers (SIGKILL leaves them; they hold no data)."""
    for folder in Path(tempfile.gettempdir()).glob("servegraph-frontend-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass
