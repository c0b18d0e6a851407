"""The servers under test: how to lay out each one's model repository and launch it.

Every target serves the same MLP under the model name ``mlp`` on 127.0.0.1, so the load
generator treats them alike. ``Target.prepare`` writes what the server needs into a fresh
directory and returns the command; ``Target.unavailable`` says why a target cannot run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = BENCH / ".peers"
PEER_CODE = BENCH / "peers"
MLP_EXAMPLE = ROOT / "examples" / "models" / "mlp"
MAX_BATCH = 32
MAX_DELAY_US = 1000
ALL_PROTOCOLS = ("grpc", "http", "json")


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int


@dataclass(frozen=True)
class Launch:
    """A prepared server: its command line and extra environment."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Target:
    """One server configuration under test."""

    name: str
    description: str
    prepare: Callable[[Path, Ports], Launch]
    protocols: tuple[str, ...] = ALL_PROTOCOLS
    peer: str | None = None  # the bench/.peers/<peer> venv it runs from
    http_headers: dict[str, str] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)  # protocol -> why it is left out
    startup_timeout_s: float = 120.0

    def unavailable(self) -> str | None:
        """Why this target cannot run here, or None."""
        if self.peer is None:
            return None
        return peer_problem(self.peer)


def peer_venv(peer: str) -> Path:
    return PEERS_DIR / peer


def peer_problem(peer: str) -> str | None:
    """None when bench/setup_peers.sh set ``peer`` up, else the reason."""
    failed = PEERS_DIR / f"{peer}.failed"
    if failed.is_file():
        return failed.read_text().strip()[:300]
    if not (peer_venv(peer) / ".bench-stamp").is_file():
        return f"peer venv bench/.peers/{peer} not set up (run: bench/run.py --setup)"
    return None


def _copy_peer_code(dest: Path, module: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH / "mlp_model.py", dest / "mlp_model.py")
    shutil.copy(PEER_CODE / module, dest / module)


# --- servegraph ------------------------------------------------------------------------


def _servegraph_cmd(repo: Path, ports: Ports) -> Launch:
    return Launch(
        [
            sys.executable, "-m", "servegraph", "serve",
            "--model-repository", str(repo),
            "--http-port", str(ports.http),
            "--grpc-port", str(ports.grpc),
            "--metrics-port", str(ports.metrics),
            "--repository-poll-secs", "0",
        ],
        # This checkout's servegraph, whatever the interpreter has installed (procs strips PYTHONPATH).
        env={"PYTHONPATH": str(ROOT / "src")},
    )


def prepare_servegraph(workdir: Path, ports: Ports) -> Launch:
    """examples/models/mlp as it is: dynamic batching, max batch 32, 1 ms delay."""
    repo = workdir / "repo"
    shutil.copytree(MLP_EXAMPLE, repo / "mlp")
    return _servegraph_cmd(repo, ports)


def prepare_servegraph_torch(workdir: Path, ports: Ports) -> Launch:
    """examples/models/mlp's config with the MLP on PyTorch (bench/peers/mlp_torch_model.py),
    on the GPU when there is one: needs torch in the interpreter that runs the bench."""
    launch = prepare_servegraph(workdir, ports)
    shutil.copyfile(PEER_CODE / "mlp_torch_model.py", workdir / "repo" / "mlp" / "1" / "model.py")
    return launch


def prepare_servegraph_aiohttp(workdir: Path, ports: Ports) -> Launch:
    """examples/models/mlp as it is, its REST API on aiohttp instead of uvicorn."""
    launch = prepare_servegraph(workdir, ports)
    return replace(launch, cmd=[*launch.cmd, "--http-server", "aiohttp"])


def prepare_servegraph_nobatch(workdir: Path, ports: Ports) -> Launch:
    """examples/models/mlp with the dynamic_batching block removed."""
    repo = workdir / "repo"
    shutil.copytree(MLP_EXAMPLE, repo / "mlp")
    config_path = repo / "mlp" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.pop("dynamic_batching", None)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return _servegraph_cmd(repo, ports)


def prepare_servegraph_onnx(workdir: Path, ports: Ports) -> Launch:
    """The MLP's ONNX twin (examples/make_onnx.py) on the onnxruntime backend, one thread."""
    repo = workdir / "repo"
    model_file = repo / "mlp" / "1" / "model.onnx"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_onnx.py"), "mlp", str(model_file)],
        check=True, capture_output=True, timeout=120,
    )
    config = {
        "backend": "onnxruntime",
        "max_batch_size": MAX_BATCH,
        "dynamic_batching": {"max_queue_delay_microseconds": MAX_DELAY_US},
        "parameters": {"intra_op_threads": "1"},
    }
    (repo / "mlp" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return _servegraph_cmd(repo, ports)


def onnx_problem() -> str | None:
    """servegraph-onnx needs onnx (to write the model) and onnxruntime (to serve it)."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"python packages missing in the bench venv: {', '.join(missing)}" if missing else None


# --- hand-written FastAPI --------------------------------------------------------------


def prepare_fastapi(workdir: Path, ports: Ports) -> Launch:
    """bench/peers/fastapi_server.py under uvicorn (uvloop, httptools), no batching."""
    _copy_peer_code(workdir, "fastapi_server.py")
    python = peer_venv("fastapi") / "bin" / "python"
    return Launch([str(python), str(workdir / "fastapi_server.py"), str(ports.http)], cwd=workdir)


# --- MLServer --------------------------------------------------------------------------


def prepare_mlserver(workdir: Path, ports: Ports) -> Launch:
    """MLServer 1.7.1, adaptive batching (32 rows, 1 ms), inference in the main process."""
    import json

    repo = workdir / "repo"
    model_dir = repo / "mlp"
    _copy_peer_code(model_dir, "mlserver_runtime.py")
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": ports.http,
        "grpc_port": ports.grpc,
        "metrics_port": ports.metrics,
        # One core: inference in the server process itself rather than in a worker
        # process that would share the core and add a pickling hop per batch.
        "parallel_workers": 0,
    }
    model_settings = {
        "name": "mlp",
        "implementation": "mlserver_runtime.MLPRuntime",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": MAX_DELAY_US / 1e6,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    venv = peer_venv("mlserver")
    return Launch(
        [str(venv / "bin" / "mlserver"), "start", str(repo)],
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin"},
        cwd=repo,
    )


# --- Triton ----------------------------------------------------------------------------

TRITON_CONFIG = """name: "mlp"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ 512 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 16 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
TRITON_BATCHING = "dynamic_batching {{ max_queue_delay_microseconds: {delay} }}\n"


def _triton_launch(repo: Path, ports: Ports) -> Launch:
    venv = peer_venv("triton")
    server = venv / "tritonserver"
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"), "-I", "-c",
            (
                "import sysconfig, site; from pytriton.utils.distribution import get_libs_path;"
                "print(sysconfig.get_config_var('LIBDIR')); print(get_libs_path());"
                "print(site.getsitepackages()[0])"
            ),
        ],
        check=True, capture_output=True, text=True, timeout=60, cwd=venv,
    )
    libdir, triton_libs, site_packages = probe.stdout.split()
    return Launch(
        [
            str(server / "bin" / "tritonserver"),
            "--model-repository", str(repo),
            "--backend-directory", str(server / "backends"),
            "--cache-directory", str(server / "caches"),
            "--http-address", "127.0.0.1", "--http-port", str(ports.http),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(ports.grpc),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(ports.metrics),
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--exit-timeout-secs", "5",
        ],
        # The stub embeds Python and finds its prefix through PATH: with the venv's bin/
        # first it gets the venv's numpy < 2, which it was built against.
        env={
            "LD_LIBRARY_PATH": f"{libdir}:{triton_libs}",
            "PYTHONPATH": site_packages,
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        },
    )


def triton_repository(workdir: Path, batching: bool) -> Path:
    """The repository Triton serves: config.pbtxt and the TritonPythonModel in mlp/1/."""
    repo = workdir / "repo"
    version_dir = repo / "mlp" / "1"
    _copy_peer_code(version_dir, "triton_model.py")
    (version_dir / "triton_model.py").rename(version_dir / "model.py")
    config = TRITON_CONFIG.format(max_batch=MAX_BATCH)
    if batching:
        config += TRITON_BATCHING.format(delay=MAX_DELAY_US)
    (repo / "mlp" / "config.pbtxt").write_text(config)
    return repo


def _prepare_triton(workdir: Path, ports: Ports, batching: bool) -> Launch:
    return _triton_launch(triton_repository(workdir, batching), ports)


def prepare_servegraph_on_triton_repo(workdir: Path, ports: Ports) -> Launch:
    """servegraph serving Triton's own repository (config.pbtxt, TritonPythonModel) unchanged."""
    return _servegraph_cmd(triton_repository(workdir, batching=True), ports)


def prepare_triton(workdir: Path, ports: Ports) -> Launch:
    """tritonserver 2.51 (from nvidia-pytriton), python backend, dynamic batcher."""
    return _prepare_triton(workdir, ports, batching=True)


def prepare_triton_nobatch(workdir: Path, ports: Ports) -> Launch:
    """tritonserver 2.51, python backend, no dynamic batcher."""
    return _prepare_triton(workdir, ports, batching=False)


@dataclass(frozen=True)
class _OnnxTarget(Target):
    def unavailable(self) -> str | None:
        return onnx_problem()


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("servegraph", "servegraph, dynamic batching", prepare_servegraph),
        Target("servegraph-nobatch", "servegraph, no batching", prepare_servegraph_nobatch),
        Target("servegraph-aiohttp", "servegraph, dynamic batching, REST on aiohttp", prepare_servegraph_aiohttp,
               protocols=("http", "json"), unsupported={"grpc": "the same gRPC server as servegraph"}),
        _OnnxTarget("servegraph-onnx", "servegraph, onnxruntime backend, batching", prepare_servegraph_onnx),
        Target("servegraph-triton-repo", "servegraph on Triton's repository: config.pbtxt + TritonPythonModel",
               prepare_servegraph_on_triton_repo),
        Target("fastapi", "FastAPI + uvicorn (uvloop, httptools), no batching", prepare_fastapi,
               protocols=("http", "json"), peer="fastapi",
               unsupported={"grpc": "HTTP only (hand-written server)"}),
        Target("mlserver", "MLServer 1.7.1, adaptive batching, parallel_workers 0", prepare_mlserver,
               protocols=("grpc", "json"), peer="mlserver",
               http_headers={"Content-Type": "application/json"},
               unsupported={"http": "MLServer's REST API has no binary-tensor extension (422 on the body)"}),
        Target("triton", "Triton 2.51 python backend, dynamic batching", prepare_triton, peer="triton"),
        Target("triton-nobatch", "Triton 2.51 python backend, no batching", prepare_triton_nobatch,
               peer="triton"),
    )
}
