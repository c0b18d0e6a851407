"""``servegraph run``: serve a whole ModelDeployment on one machine, no cluster.

The control plane's second target. It renders the same per-node configs the operator puts
into ConfigMaps, and starts one local ``servegraph serve`` process per node where the
operator would create a Deployment: model nodes on a one-model repository, the others with
``--node-config``. Remote model URIs (http(s)://, s3://, gs://) are fetched into the workdir
first, once per URI and afresh on every start. Its log lines are prefixed with its name,
and stopping stops every process started.

No port is guessed: every node but the entrypoint (which gets the ports asked for) listens
on port 0, and reports the ports the kernel gave it in a ports file (``serve --ports-file``).
Nodes start children first, in waves: a node starts once its children have reported their
ports, which go into its config.

It heals as a kubelet does: a node that exits after the graph started is restarted on the
ports it had (its parents call them) with exponential backoff (``restartPolicy: Always`` and CrashLoopBackOff), while
the other nodes keep serving; the log says which node restarted, why, and when. Only a node
that never becomes ready at start fails the run, and a model whose load fails fails it at
once with the model's error. Nodes die with the runner even when it is killed (SIGKILL):
each asks the kernel for SIGTERM when its parent goes (``PR_SET_PDEATHSIG``), and a later
run removes the work folders a killed run left behind.
"""

from __future__ import annotations

import ctypes
import json
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
from collections.abc import Callable
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
from servegraph.runtime.storage import StorageError, cache_target, fetch_model


class GraphStartError(RuntimeError):
    """A node failed to start; the message carries its log tail."""


RESTART_BACKOFF_INITIAL = 1.0
"""Seconds before the first restart of a node that exited (then doubled per exit)."""
RESTART_BACKOFF_MAX = 60.0
"""The longest wait between restarts (the kubelet's CrashLoopBackOff caps at 5 minutes)."""
RESTART_BACKOFF_RESET = 60.0
"""A node that served this long since its last start begins its backoff afresh."""
SUPERVISE_INTERVAL = 0.2
"""How often the runner looks for nodes that exited."""
PORTS_TIMEOUT = 60.0
"""How long a starting node may take to open its listeners and report its ports."""

WORKDIR_PREFIX = "servegraph-"
OWNER_FILE = ".servegraph-run.pid"
"""Written into a run's own temporary work folder: the runner's pid, so a later run can tell
a folder whose runner died (killed) from one still in use."""

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process goes (Linux).

    The kernel sends it when the *thread* that started the child exits, so nodes are started
    from the main thread or from the supervisor thread, which lives until ``stop()``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # looked up before fork: no imports after it
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the runner died before prctl: go now
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dead_workdirs(root: Path | None = None) -> list[Path]:
    """Remove the temporary work folders of runs whose runner no longer lives; return them."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    for folder in base.glob(f"{WORKDIR_PREFIX}*"):
        owner = folder / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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
    """The ports asked for until the node reports the ones it bound (port 0: the kernel's pick)."""
    process: subprocess.Popen[bytes]
    command: list[str] = field(default_factory=list)
    """How to start it again: on the ports it reported, which its parents call."""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    pump: threading.Thread | None = None
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    """How many times the runner restarted this node."""
    last_exit: str = ""
    """Why the node last exited ("exit code 1", "signal SIGKILL"), for the log and summary."""
    backoff: float = RESTART_BACKOFF_INITIAL
    restart_at: float | None = None
    """When the node that exited is due to start again (monotonic), or None while it runs."""

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


def default_state_dir(namespace: str, name: str, env: dict[str, str] | None = None) -> Path:
    """Where ``servegraph run`` keeps what must outlive a run (bandit routers' learned state):
    ``$XDG_STATE_HOME/servegraph/<namespace>/<name>``, by default under ``~/.local/state``."""
    env = dict(os.environ) if env is None else env
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "servegraph" / namespace / name


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
        state_dir: Path | None = None,
    ) -> None:
        self.manifest = Path(manifest)
        self.host = host
        self.deployment = load_manifest(self.manifest)
        self._workdir_owned = workdir is None
        if workdir is None:
            clean_dead_workdirs()
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{self.deployment.metadata.name}-"))
            (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        else:
            self.workdir = workdir
        meta = self.deployment.metadata
        self.state_dir = state_dir if state_dir is not None else default_state_dir(meta.namespace, meta.name)
        """Outlives the run (the workdir does not): bandit state survives a restart of ``run``."""
        self.log = log
        self._asked = NodePorts(http_port, grpc_port, metrics_port)
        """The entrypoint's ports (0: any); the other nodes always take the kernel's pick."""
        self.ports: dict[str, NodePorts] = {}
        """The ports each started node reported."""
        self.graph: RenderedGraph = self._render()
        self.processes: list[NodeProcess] = []
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._width = max(len(node.name) for node in self.deployment.spec.nodes)
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def entry(self) -> NodePorts:
        return self.ports[self.graph.entrypoint]

    def _render(self) -> RenderedGraph:
        """Every node's config, with the addresses of the children started so far (the others
        are left empty: a node is rendered again when it starts, after its children)."""

        def endpoint(name: str) -> Endpoint:
            ports = self.ports.get(name)
            if ports is None:
                return Endpoint(http="", grpc="")
            return Endpoint(http=f"{self.host}:{ports.http}", grpc=f"{self.host}:{ports.grpc}")

        return render_graph(
            self.deployment, endpoint, manifest_dir=self.manifest.resolve().parent, state_dir=str(self.state_dir)
        )

    def _children(self, name: str) -> list[str]:
        return list(dict.fromkeys(self.deployment.node(name).children))

    def _ports_file(self, name: str) -> Path:
        return self.workdir / name / "ports.json"

    def _command(self, name: str, ports: NodePorts) -> tuple[str, list[str]]:
        """Write the node's repository or config into its folder; return its kind and command."""
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "servegraph", "serve",
            "--host", self.host,
            "--http-port", str(ports.http),
            "--grpc-port", str(ports.grpc),
            "--metrics-port", str(ports.metrics),
            "--ports-file", str(self._ports_file(name)),
        ]  # fmt: skip
        if name in self.graph.models:
            repository = folder / "repository"
            write_model_repository(self.graph.models[name], repository)
            return "model", [*command, "--model-repository", str(repository)]
        config = self._render().nodes[name]  # its children have reported their ports by now
        self.graph.nodes[name] = config
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

    def start(self, timeout: float = 120.0, supervise: bool = True) -> None:
        """Fetch remote models, start every node (children first), wait until all are ready,
        then (``supervise``) restart any node that exits, with backoff, until ``stop()``.

        On any failure, every process started is stopped and the error raised.
        """
        if self._keeps_state:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.fetch_models()
            self._start_nodes()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="servegraph-supervisor", daemon=True)
            self._supervisor.start()

    def _start_nodes(self) -> None:
        """Start the nodes in waves, children first: each wave is every node whose children
        have all reported their ports; the runner then waits for the wave's own ports."""
        waiting = list(self.graph.order)
        while waiting:
            wave = [name for name in waiting if all(c in self.ports for c in self._children(name))]
            started = []
            for name in wave:
                asked = self._asked if name == self.graph.entrypoint else NodePorts(0, 0, 0)
                self._ports_file(name).unlink(missing_ok=True)
                kind, command = self._command(name, asked)
                node = self._spawn(name, kind, command, asked)
                self.processes.append(node)
                started.append(node)
            for node in started:
                self._await_ports(node)
            waiting = [name for name in waiting if name not in wave]

    def _await_ports(self, node: NodeProcess) -> None:
        """Read the ports ``node`` bound from its ports file; from then on it is started
        again on exactly these ports."""
        path = self._ports_file(node.name)
        deadline = time.monotonic() + PORTS_TIMEOUT
        while not path.exists():
            _raise_if_exited(node, "before it listened")
            if time.monotonic() > deadline:
                raise GraphStartError(f"node '{node.name}' did not open its ports within {PORTS_TIMEOUT:.0f} s")
            time.sleep(0.02)
        bound = json.loads(path.read_text())
        node.ports = NodePorts(int(bound["http"]), int(bound["grpc"]), int(bound["metrics"]))
        self.ports[node.name] = node.ports
        node.command = _with_ports(node.command, node.ports)

    def _spawn(self, name: str, kind: str, command: list[str], ports: NodePorts) -> NodeProcess:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._env,
            start_new_session=True,  # Ctrl-C reaches the runner only; it stops the nodes in order
            preexec_fn=_die_with_parent(),
        )
        node = NodeProcess(name, kind, ports, process, command)
        assert process.stdout is not None
        node.pump = threading.Thread(target=_pump, args=(node, process.stdout, self.log, self._width), daemon=True)
        node.pump.start()
        return node

    def _say(self, message: str) -> None:
        print(f"{'servegraph':>{self._width}} | {message}", file=self.log, flush=True)

    # ------------------------------------------------------------------ healing
    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            try:
                self.heal()
            except Exception as exc:  # the supervisor must outlive any one bad round
                self._say(f"supervisor: {type(exc).__name__}: {exc}")

    def heal(self, now: float | None = None) -> None:
        """One supervision round: note nodes that exited and restart those whose backoff is up."""
        with self._lock:
            if self._stopping.is_set():
                return
            now = time.monotonic() if now is None else now
            for index, node in enumerate(self.processes):
                code = node.process.poll()
                if code is None:
                    if now - node.started_at >= RESTART_BACKOFF_RESET:
                        node.backoff = RESTART_BACKOFF_INITIAL
                    continue
                if node.restart_at is None:
                    if now - node.started_at >= RESTART_BACKOFF_RESET:
                        node.backoff = RESTART_BACKOFF_INITIAL
                    node.last_exit = _exit_reason(code)
                    node.restart_at = now + node.backoff
                    last = node.tail[-1] if node.tail else ""
                    self._say(
                        f"node '{node.name}' ({node.kind}) exited ({node.last_exit})"
                        + (f" after: {last}" if last else "")
                        + f"; restarting it in {node.backoff:.0f} s (restart {node.restarts + 1})"
                    )
                    continue
                if now < node.restart_at:
                    continue
                fresh = self._spawn(node.name, node.kind, node.command, node.ports)
                fresh.restarts = node.restarts + 1
                fresh.last_exit = node.last_exit
                fresh.backoff = min(node.backoff * 2, RESTART_BACKOFF_MAX)
                self.processes[index] = fresh
                self._say(f"node '{node.name}' restarted (restart {fresh.restarts}, it had {node.last_exit})")

    def restarts(self) -> dict[str, int]:
        """How many times each node was restarted."""
        return {node.name: node.restarts for node in self.processes}

    # ------------------------------------------------------------------ startup
    def _load_failure(self, node: NodeProcess) -> str | None:
        """For a model node not yet ready: the error of a model that failed to load, if any."""
        if node.kind != "model":
            return None
        request = urllib.request.Request(
            f"http://{self.host}:{node.ports.http}/v2/repository/index", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                rows = json.loads(response.read())
        except (OSError, ValueError):
            return None  # not listening yet
        failed = [r for r in rows if isinstance(r, dict) and r.get("state") == "UNAVAILABLE"]
        if not failed:
            return None
        return "; ".join(
            f"model '{r.get('name')}'" + (f" version {r['version']}" if r.get("version") else "")
            + f" failed to load: {r.get('reason') or 'no reason given'}"
            for r in failed
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.processes)
        while waiting:
            for node in list(waiting):
                _raise_if_exited(node, "before it was ready")
                if node.ready(self.host):
                    waiting.remove(node)
                    continue
                failure = self._load_failure(node)
                if failure is not None:
                    raise GraphStartError(f"node '{node.name}': {failure}")
            if waiting and time.monotonic() > deadline:
                names = ", ".join(n.name for n in waiting)
                tails = "\n".join(f"--- {n.name}\n" + "\n".join(list(n.tail)[-10:]) for n in waiting)
                raise GraphStartError(f"nodes not ready after {timeout:.0f} s: {names}\n{tails}")
            if waiting:
                time.sleep(0.1)

    @property
    def _keeps_state(self) -> bool:
        """Whether a node keeps state across runs (a bandit router)."""
        return any(c.router is not None and c.router.state_file for c in self.graph.nodes.values())

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
            restarted = f"  restarts {node.restarts} (last: {node.last_exit})" if node.restarts else ""
            lines.append(
                f"  {node.name:<16} {detail:<40} http :{node.ports.http}  grpc :{node.ports.grpc}"
                f"  metrics :{node.ports.metrics}{restarted}"
            )
        if self._keeps_state:
            lines.append(f"bandit state (kept across runs): {self.state_dir}")
        return "\n".join(lines)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node, parents first (they drain into their children), then wait."""
        self._stopping.set()
        with self._lock:  # no restart from here on
            pass
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
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        if self._workdir_owned:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _raise_if_exited(node: NodeProcess, when: str) -> None:
    """A GraphStartError with the node's last log lines, if it has exited (at start)."""
    code = node.process.poll()
    if code is None:
        return
    if node.pump is not None:
        node.pump.join(timeout=5)  # the log's last lines explain the exit
    raise GraphStartError(
        f"node '{node.name}' ({node.kind}) exited with code {code} {when}; "
        "last lines of its log:\n" + "\n".join(node.tail)
    )


def _with_ports(command: list[str], ports: NodePorts) -> list[str]:
    """``command`` with its port options set to ``ports``."""
    values = {"--http-port": ports.http, "--grpc-port": ports.grpc, "--metrics-port": ports.metrics}
    return [str(values[command[i - 1]]) if i and command[i - 1] in values else arg for i, arg in enumerate(command)]


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run(manifest: Path, host: str, http_port: int, grpc_port: int, metrics_port: int,
        state_dir: Path | None = None) -> int:  # fmt: skip
    """The ``servegraph run`` command: start, print, serve (healing nodes) until Ctrl-C/SIGTERM, stop.

    Every user error (an invalid manifest, a model that cannot be fetched or loaded, a node
    that never becomes ready) prints one message and exits 1, never a traceback.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    try:
        graph = LocalGraph(manifest, host, http_port, grpc_port, metrics_port, state_dir=state_dir)
    except (ValueError, OSError, RenderError, StorageError) as exc:
        print(f"servegraph run: {manifest}: {exc}", file=sys.stderr)
        return 1
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        graph.start()
        print(graph.summary(), flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    except (GraphStartError, RenderError, StorageError, ValueError, OSError) as exc:
        print(f"servegraph run: {exc}", file=sys.stderr)
        return 1
    finally:
        graph.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
