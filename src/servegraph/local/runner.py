"""``servegraph run``: serve a whole ModelDeployment on one machine, no cluster.

The control plane's second target. It renders the same per-node configs the operator puts
into ConfigMaps, and starts one local ``servegraph serve`` process per node where the
operator would create a Deployment: model nodes on a one-model repository, the others with
``--node-config``. Remote model URIs (http(s)://, s3://, gs://) are fetched into the workdir
first, once per URI and afresh on every start. Each node gets free 127.0.0.1 ports (the
entrypoint gets the ports asked for), its log lines are prefixed with its name, and
stopping stops every process started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import yaml

from servegraph.local.repository import write_model_repository
from servegraph.operator.manifest import load_manifest
from servegraph.operator.render import (
    Endpoint,
    RenderedGraph,
    RenderError,
    render_graph,
)
from servegraph.ports import free_port
from servegraph.runtime.storage import StorageError, cache_target, fetch_model


class GraphStartError(RuntimeError):
    """A node failed to start; the message carries its log tail."""


@dataclass
class NodePorts:
    http: int
    grpc: int
    metrics: int


@dataclass
class NodeProcess:
    """One started node: its process, ports and the tail of its log."""

    name: str
    kind: str
    ports: NodePorts
    process: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    pump: threading.Thread | None = None

    def ready(self, host: str) -> bool:
        try:
            url = f"http://{host}:{self.ports.http}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False


def _pump(node: NodeProcess, stream: IO[bytes], out: IO[str], width: int) -> None:
    """Copy a node's output line by line, prefixed with its name (runs in a thread)."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        node.tail.append(line)
        print(f"{node.name:>{width}} | {line}", file=out, flush=True)
    stream.close()


class LocalGraph:
    """Start, watch and stop every node of one ModelDeployment on this machine."""

    def __init__(
        self,
        manifest: Path,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        workdir: Path | None = None,
        log: IO[str] = sys.stderr,
    ) -> None:
        self.manifest = Path(manifest)
        self.host = host
        self.deployment = load_manifest(self.manifest)
        self._workdir_owned = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"servegraph-{self.deployment.metadata.name}-"))
        self.log = log
        self.ports: dict[str, NodePorts] = {}
        for node in self.deployment.spec.nodes:
            if node.name == self.deployment.spec.entrypoint:
                ports = NodePorts(http_port or free_port(host), grpc_port or free_port(host), metrics_port or free_port(host))
            else:
                ports = NodePorts(free_port(host), free_port(host), free_port(host))
            self.ports[node.name] = ports
        self.graph: RenderedGraph = render_graph(
            self.deployment,
            lambda name: Endpoint(http=f"{host}:{self.ports[name].http}", grpc=f"{host}:{self.ports[name].grpc}"),
            manifest_dir=self.manifest.resolve().parent,
            state_dir=str(self.workdir / "state"),
        )
        self.processes: list[NodeProcess] = []

    @property
    def entry(self) -> NodePorts:
        return self.ports[self.graph.entrypoint]

    def _command(self, name: str) -> tuple[str, list[str]]:
        ports = self.ports[name]
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "servegraph", "serve",
            "--host", self.host,
            "--http-port", str(ports.http),
            "--grpc-port", str(ports.grpc),
            "--metrics-port", str(ports.metrics),
        ]  # fmt: skip
        if name in self.graph.models:
            repository = folder / "repository"
            write_model_repository(self.graph.models[name], repository)
            return "model", [*command, "--model-repository", str(repository)]
        config = self.graph.nodes[name]
        path = folder / "node.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return config.role, [*command, "--node-config", str(path)]

    def fetch_models(self) -> None:
        """Fetch every remote model source into ``{workdir}/fetched``, once per URI.

        Afterwards every model of the graph is local. Nodes sharing a URI share the fetched
        folder; a URI that cannot be fetched raises a RenderError naming the node.
        """
        fetched: dict[str, Path] = {}
        for name, model in list(self.graph.models.items()):
            files: dict[str, str | Path] = {}
            for path, source in model.repository_files.items():
                if isinstance(source, str):
                    if source not in fetched:
                        try:
                            fetched[source] = fetch_model(source, cache_target(source, self.workdir / "fetched"))
                        except StorageError as error:
                            raise RenderError(f"node '{name}': {error}") from None
                    source = fetched[source]
                files[path] = source
            self.graph.models[name] = replace(model, repository_files=files)

    def start(self, timeout: float = 120.0) -> None:
        """Fetch remote models, start every node (children first), wait until all are ready.

        On any failure, every process started is stopped and the error raised.
        """
        (self.workdir / "state").mkdir(parents=True, exist_ok=True)
        width = max(len(name) for name in self.ports)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            self.fetch_models()
            for name in self.graph.order:
                kind, command = self._command(name)
                process = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                node = NodeProcess(name, kind, self.ports[name], process)
                self.processes.append(node)
                assert process.stdout is not None
                node.pump = threading.Thread(target=_pump, args=(node, process.stdout, self.log, width), daemon=True)
                node.pump.start()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.processes)
        while waiting:
            for node in list(waiting):
                code = node.process.poll()
                if code is not None:
                    if node.pump is not None:
                        node.pump.join(timeout=5)  # the log's last lines explain the exit
                    raise GraphStartError(
                        f"node '{node.name}' ({node.kind}) exited with code {code} before it was ready; "
                        "last lines of its log:\n" + "\n".join(node.tail)
                    )
                if node.ready(self.host):
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(n.name for n in waiting)
                tails = "\n".join(f"--- {n.name}\n" + "\n".join(list(n.tail)[-10:]) for n in waiting)
                raise GraphStartError(f"nodes not ready after {timeout:.0f} s: {names}\n{tails}")
            if waiting:
                time.sleep(0.1)

    def summary(self) -> str:
        """The entry URLs and one line per node, as ``servegraph run`` prints them."""
        entry = self.entry
        lines = [
            f"ModelDeployment '{self.deployment.metadata.name}' is ready; call model '{self.graph.entry_model}' at",
            f"  HTTP  http://{self.host}:{entry.http}/v2/models/{self.graph.entry_model}/infer",
            f"  gRPC  {self.host}:{entry.grpc}",
        ]
        for node in self.processes:
            detail = (
                f"model '{self.graph.models[node.name].model_name}'"
                if node.name in self.graph.models
                else f"{node.kind} -> {', '.join(c.name for c in self.graph.nodes[node.name].children)}"
            )
            lines.append(
                f"  {node.name:<16} {detail:<40} http :{node.ports.http}  grpc :{node.ports.grpc}  metrics :{node.ports.metrics}"
            )
        return "\n".join(lines)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node, parents first (they drain into their children), then wait."""
        for node in reversed(self.processes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in reversed(self.processes):
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        self.processes.clear()
        if self._workdir_owned:
            shutil.rmtree(self.workdir, ignore_errors=True)


def run(manifest: Path, host: str, http_port: int, grpc_port: int, metrics_port: int) -> int:
    """The ``servegraph run`` command: start, print, serve until Ctrl-C/SIGTERM, stop."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    graph = LocalGraph(manifest, host, http_port, grpc_port, metrics_port)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        graph.start()
        print(graph.summary(), flush=True)
        while not stop.is_set():
            exited = [n for n in graph.processes if n.process.poll() is not None]
            if exited:
                print(
                    f"node '{exited[0].name}' exited with code {exited[0].process.returncode}; "
                    "stopping the graph",
                    file=sys.stderr,
                )
                return 1
            stop.wait(0.5)
        return 0
    except (GraphStartError, RenderError) as exc:
        print(f"servegraph run: {exc}", file=sys.stderr)
        return 1
    finally:
        graph.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
