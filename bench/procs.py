"""Server processes: start pinned to the server core, wait until ready, always stop.

Every process started here is registered; ``stop_all`` (also run at exit) sends SIGTERM
to each process group and SIGKILL to what is still alive after a grace period.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVER_CORE = "0"
CLIENT_CORE = "1"
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
POLL_INTERVAL_S = 0.1

_running: list[ServerProcess] = []


def pin(server_cores: int) -> None:
    """Servers on cores 0..K-1, clients on K..: read when a process starts here."""
    global SERVER_CORE, CLIENT_CORE
    last = (os.cpu_count() or 1) - 1
    SERVER_CORE = "0" if server_cores == 1 else f"0-{server_cores - 1}"
    CLIENT_CORE = str(server_cores) if server_cores == last else f"{server_cores}-{last}"


def pinned_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with one BLAS thread and no venv leaking through."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(ONE_THREAD_ENV)
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """One server under test, running in its own session (so its children die with it)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it outlives ``grace_s``."""
        if self in _running:
            _running.remove(self)
        try:
            pgid = os.getpgid(self.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None and self.popen.poll() is None:
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        if pgid is not None:
            try:  # the leader may be gone while children (Triton stubs, workers) remain
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]


def start_server(
    name: str,
    cmd: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """Start ``cmd`` under ``taskset -c SERVER_CORE`` with one BLAS thread."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    popen = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *cmd],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=pinned_env(env),
        cwd=cwd,
        start_new_session=True,
    )
    proc = ServerProcess(name, popen, log_path, log)
    _running.append(proc)
    return proc


def wait_ready(proc: ServerProcess, http_port: int, timeout_s: float) -> None:
    """Poll GET /v2/health/ready until 200; raise with the log's tail on exit or deadline."""
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with status {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s:.0f} s:\n{proc.log_tail()}")


def stop_all() -> None:
    """Stop every server still registered (idempotent)."""
    for proc in list(_running):
        try:
            proc.stop()
        except Exception:  # keep stopping the others
            pass


atexit.register(stop_all)


LOADGEN = Path(__file__).resolve().parent / "loadgen.py"


def run_loadgen(spec: dict, timeout: float) -> dict:
    """Run loadgen.py on the client core with ``spec``; its result (the last stdout line)."""
    out = subprocess.run(
        ["taskset", "-c", CLIENT_CORE, sys.executable, str(LOADGEN), json.dumps(spec)],
        env=pinned_env(), capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def counted_cell(spec: dict, label: str) -> dict:
    """One count-mode cell (``spec["requests"]`` requests): its figures, or an error naming
    ``label`` when the answers were wrong or any request failed."""
    result = run_loadgen(spec, timeout=600)
    if not result["check"]["ok"]:
        raise RuntimeError(f"{label}: answer check failed: {result['check']['detail']}")
    cell = result["cells"][0]
    if cell["errors"]:
        raise RuntimeError(f"{label}: {cell['errors']} errors, first: {cell['first_error']}")
    return dict(cell)
