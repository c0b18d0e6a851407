"""Each example graph end to end, plus what `servegraph run` promises when a node fails."""

from __future__ import annotations

import io
import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from servegraph.local.runner import GraphStartError, LocalGraph

GRAPHS = Path(__file__).resolve().parents[2] / "examples" / "graphs"
MEAN = np.array([5.0, -2.0, 0.5, 10.0], np.float32)
SCALE = np.array([2.0, 1.0, 0.5, 3.0], np.float32)


def scorer(version: int, x: np.ndarray) -> np.ndarray:
    """The example scorer by hand (examples/graphs/models/scorer/<version>/model.py)."""
    rng = np.random.default_rng(version)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    logits = x @ w + b
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def started(manifest: str, tmp_path: Path, state_dir: Path | None = None) -> Iterator[tuple[LocalGraph, httpclient.InferenceServerClient]]:
    graph = LocalGraph(
        GRAPHS / manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=io.StringIO(),
        state_dir=state_dir or tmp_path / "state",
    )  # fmt: skip
    graph.start()
    client = httpclient.InferenceServerClient(f"127.0.0.1:{graph.entry.http}")
    try:
        yield graph, client
    finally:
        client.close()
        graph.stop()
    assert all(node.process.poll() is not None for node in graph.processes) or not graph.processes


def infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray, request_id: str = "") -> httpclient.InferResult:
    inp = httpclient.InferInput("INPUT", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], request_id=request_id)


def route(result: httpclient.InferResult) -> str:
    return str(result.get_response()["parameters"]["servegraph.route"])


def test_ab_test_splits_80_20_and_each_arm_answers_with_its_version(tmp_path: Path) -> None:
    for graph, client in started("ab-test.yaml", tmp_path):
        rng = np.random.default_rng(0)
        routes: Counter[str] = Counter()
        for _ in range(300):
            x = rng.standard_normal((1, 4)).astype(np.float32)
            result = infer(client, "ab-test", x)
            arm = route(result)
            routes[arm] += 1
            version = {"scorer-a": 1, "scorer-b": 2}[arm]
            np.testing.assert_allclose(result.as_numpy("PROBS"), scorer(version, x), rtol=1e-5)
        # 300 draws at p = 0.8: the standard deviation is about 7; allow 4 of them.
        assert abs(routes["scorer-a"] - 240) <= 28, routes


def test_bandit_learns_from_feedback_and_reports_it(tmp_path: Path) -> None:
    for graph, client in started("bandit.yaml", tmp_path):
        rng = np.random.default_rng(1)
        chosen: Counter[str] = Counter()
        for i in range(200):
            x = rng.standard_normal((1, 4)).astype(np.float32)
            result = infer(client, "bandit", x, request_id=f"r{i}")
            arm = route(result)
            chosen[arm] += 1
            reward = 1.0 if arm.endswith("scorer-2") else 0.0  # arm 2 is the better one
            body = json.dumps({"id": f"r{i}", "reward": reward}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{graph.entry.http}/v2/models/bandit/feedback", data=body, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        assert chosen["scorer-2"] > 150, chosen


def _arms(graph: LocalGraph) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{graph.entry.http}/v2/models/bandit/stats", timeout=10) as answer:
        stats = json.loads(answer.read())
    arms: dict[str, dict[str, float]] = stats["model_stats"][0]["servegraph"]["arms"]
    return arms


def test_bandit_state_survives_stopping_and_starting_run_again(tmp_path: Path) -> None:
    state = tmp_path / "kept"
    for graph, client in started("bandit.yaml", tmp_path / "first", state_dir=state):
        for i in range(20):
            result = infer(client, "bandit", np.ones((1, 4), np.float32), request_id=f"r{i}")
            body = json.dumps({"id": f"r{i}", "reward": 1.0 if route(result).endswith("scorer-2") else 0.0}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{graph.entry.http}/v2/models/bandit/feedback", data=body, method="POST"
            )
            urllib.request.urlopen(request, timeout=10).close()
        learned = _arms(graph)
        assert "bandit state (kept across runs)" in graph.summary()
    assert sum(arm["pulls"] for arm in learned.values()) == 20
    assert [f.name for f in state.iterdir()] == ["picker.json"]
    for graph, _ in started("bandit.yaml", tmp_path / "second", state_dir=state):
        again = _arms(graph)
        assert {a: (v["pulls"], v["reward_sum"]) for a, v in again.items()} == {
            a: (v["pulls"], v["reward_sum"]) for a, v in learned.items()
        }


def test_ensemble_averages_three_scorers(tmp_path: Path) -> None:
    for graph, client in started("ensemble.yaml", tmp_path):
        x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
        result = infer(client, "ensemble", x)
        expected = (scorer(1, x) + scorer(2, x) + scorer(3, x)) / 3
        np.testing.assert_allclose(result.as_numpy("PROBS"), expected, rtol=1e-5)


def test_transformer_chain_scales_scores_and_flags_outliers(tmp_path: Path) -> None:
    for graph, client in started("transformer-chain.yaml", tmp_path):
        rng = np.random.default_rng(3)
        x = rng.normal(MEAN, SCALE, size=(4, 4)).astype(np.float32)
        x[2] += 60.0  # a planted outlier
        result = infer(client, "transformer-chain", x)
        np.testing.assert_allclose(result.as_numpy("PROBS"), scorer(1, (x - MEAN) / SCALE), rtol=1e-4, atol=1e-6)
        assert result.as_numpy("IS_OUTLIER").ravel().tolist() == [False, False, True, False]
        assert result.as_numpy("OUTLIER_SCORE").shape == (4, 1)


def test_a_node_that_cannot_start_is_reported_and_nothing_is_left_running(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "scorer"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text("backend: python\nmax_batch_size: 4\n")  # no inputs: cannot serve
    (broken / "1").mkdir()
    (broken / "1" / "model.py").write_text("raise SystemExit('boom')\n")
    manifest = tmp_path / "graph.yaml"
    manifest.write_text(
        (GRAPHS / "ab-test.yaml").read_text().replace("models/scorer", str(broken))
    )
    log = io.StringIO()
    graph = LocalGraph(manifest, http_port=0, grpc_port=0, metrics_port=0, workdir=tmp_path / "work", log=log)
    with pytest.raises(GraphStartError) as info:
        graph.start(timeout=20)
    assert "scorer-" in str(info.value)
    assert graph.processes == [], "every started process is stopped"
