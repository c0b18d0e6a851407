"""``servegraph run`` heals like a kubelet: restarts a node that dies (with backoff) while the
graph keeps serving, fails at once on a model whose load raises, prints a message (never a
traceback) for a user error, and takes its nodes with it when it is killed.

Left out: the example graphs' answers (tests/examples/) and object-store fetching
(test_object_stores.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servegraph.local.runner import OWNER_FILE, GraphStartError, LocalGraph, clean_dead_workdirs

GRAPHS = Path(__file__).resolve().parents[2] / "examples" / "graphs"
BODY = json.dumps({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4], "data": [0.1, 0.2, 0.3, 0.4]}]}).encode()


def post(port: int, model: str, body: bytes = BODY) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def copy_graph(tmp_path: Path, manifest: str) -> Path:
    """The example graph's manifest and models, copied so a test may change them."""
    shutil.copytree(GRAPHS / "models", tmp_path / "models")
    target = tmp_path / manifest
    shutil.copy(GRAPHS / manifest, target)
    return target


def test_a_killed_node_is_restarted_while_the_graph_keeps_serving(tmp_path: Path) -> None:
    manifest = copy_graph(tmp_path, "ab-test.yaml")
    manifest.write_text(manifest.read_text().replace("strategy: Weighted", "strategy: Weighted\n        failover: true"))
    log = io.StringIO()
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=log)
    graph.start()
    try:
        victim = next(n for n in graph.processes if n.name == "scorer-b")
        victim.process.kill()
        victim.process.wait()
        # Meanwhile the graph serves: failover takes scorer-b's share to scorer-a.
        for _ in range(10):
            status, body = post(graph.entry.http, "ab-test")
            assert status == 200, body
        wait_for(lambda: graph.restarts()["scorer-b"] == 1, 30, "scorer-b to be restarted")
        text = log.getvalue()
        assert "node 'scorer-b' (model) exited (signal SIGKILL)" in text
        assert "restarting it in 1 s (restart 1)" in text
        assert "node 'scorer-b' restarted (restart 1, it had signal SIGKILL)" in text
        fresh = next(n for n in graph.processes if n.name == "scorer-b")
        assert fresh.ports == victim.ports  # the ports its parent calls
        wait_for(lambda: fresh.ready(graph.host), 60, "the restarted scorer-b to be ready")
        split = next(n for n in graph.processes if n.name == "split")
        wait_for(lambda: split.ready(graph.host), 30, "the router to see scorer-b back")
        routes = set()
        for _ in range(60):
            status, body = post(graph.entry.http, "ab-test")
            assert status == 200, body
            routes.add(body["parameters"]["servegraph.route"])  # type: ignore[index]
        assert routes == {"scorer-a", "scorer-b"}
        assert "restarts 1 (last: signal SIGKILL)" in graph.summary()
        assert graph.restarts() == {"split": 0, "scorer-a": 0, "scorer-b": 1}
    finally:
        graph.stop()


def test_every_node_listens_on_ports_the_kernel_gave_it(tmp_path: Path) -> None:
    """No port is guessed: each node binds port 0 and reports what it got in its ports file,
    and its parent is configured with exactly those; two runs of one graph never collide."""
    manifest = copy_graph(tmp_path, "ab-test.yaml")
    graphs = [
        LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / f"work{i}", log=io.StringIO())
        for i in range(2)
    ]
    try:
        for graph in graphs:
            graph.start(supervise=False)
        seen: set[int] = set()
        for graph in graphs:
            for node in graph.processes:
                reported = json.loads((graph.workdir / node.name / "ports.json").read_text())
                assert reported == {"http": node.ports.http, "grpc": node.ports.grpc, "metrics": node.ports.metrics}
                assert 0 not in reported.values()
                seen.update(reported.values())
            children = {c.name: c.grpc for c in graph.graph.nodes["split"].children}
            assert children == {n: f"127.0.0.1:{graph.ports[n].grpc}" for n in ("scorer-a", "scorer-b")}
            assert post(graph.entry.http, "ab-test")[0] == 200
        assert len(seen) == 2 * 3 * 3  # two runs, three nodes, three ports each
    finally:
        for graph in graphs:
            graph.stop()


def test_backoff_doubles_and_is_capped(tmp_path: Path) -> None:
    """A node that keeps dying waits 1, 2, 4 ... s between starts (CrashLoopBackOff)."""
    manifest = copy_graph(tmp_path, "ab-test.yaml")
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO())
    graph.start(supervise=False)
    try:
        now = time.monotonic()
        waits = []
        for _ in range(3):
            node = next(n for n in graph.processes if n.name == "scorer-a")
            node.process.kill()
            node.process.wait()
            graph.heal(now)  # notes the exit
            waits.append(node.restart_at - now if node.restart_at is not None else None)
            now = node.restart_at or now
            graph.heal(now)  # due: restarted
        assert waits == [1.0, 2.0, 4.0]
        assert graph.restarts()["scorer-a"] == 3
    finally:
        graph.stop()


def test_a_model_whose_load_raises_fails_the_start_at_once(tmp_path: Path) -> None:
    manifest = copy_graph(tmp_path, "ab-test.yaml")
    model = tmp_path / "models" / "scorer" / "2" / "model.py"
    model.write_text(
        model.read_text().replace(
            "    def load(self) -> None:\n", "    def load(self) -> None:\n        raise RuntimeError('weights are missing')\n"
        )
    )
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO())
    started = time.monotonic()
    with pytest.raises(GraphStartError) as info:
        graph.start(timeout=120)
    assert time.monotonic() - started < 30
    assert "node 'scorer-b': model 'scorer' version 2 failed to load: RuntimeError: weights are missing" in str(info.value)
    assert graph.processes == []


def servegraph(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "servegraph", *args], env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize(
    "content",
    [
        "spec: [",  # not YAML
        "apiVersion: servegraph.io/v1alpha1\nkind: ModelDeployment\nmetadata: {name: x}\nspec: {entrypoint: nope, nodes: []}\n",
        None,  # no such file
    ],
    ids=["not_yaml", "invalid_spec", "missing_file"],
)
def test_a_user_error_under_run_is_a_message_and_exit_1(tmp_path: Path, content: str | None) -> None:
    manifest = tmp_path / "graph.yaml"
    if content is not None:
        manifest.write_text(content)
    process = servegraph("run", str(manifest), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, (out, err)
    assert "Traceback" not in err and err.startswith("servegraph run: "), err


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_nodes_die_with_a_killed_runner_and_a_later_run_cleans_its_folder(tmp_path: Path) -> None:
    manifest = copy_graph(tmp_path, "ab-test.yaml")
    process = servegraph(
        "run", str(manifest), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        env={"TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "is ready" in first, first + (process.stderr.read() if process.stderr else "")
        nodes = _children(process.pid)
        assert len(nodes) == 3
        (workdir,) = [p for p in tmp_path.glob("servegraph-ab-test-*")]
        assert (workdir / OWNER_FILE).read_text() == str(process.pid)
    finally:
        process.kill()
        process.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(lambda: all(gone(pid) for pid in nodes), 30, "the nodes to exit with their runner")
    assert workdir.exists()  # nobody could clean it: the runner was killed
    assert clean_dead_workdirs(tmp_path) == [workdir]
    assert not workdir.exists()
