"""The pure parts of graph nodes on their own: bandits, memory, state file, detectors, config."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegraph.runtime.graph.bandits import ArmStats, EpsilonGreedy, ThompsonSampling
from servegraph.runtime.graph.batch import TensorBatch
from servegraph.runtime.graph.client import ChildClient, forwarded_headers, forwarded_parameters
from servegraph.runtime.graph.config import ChildEndpoint, RouterSettings
from servegraph.runtime.graph.drift import DriftDetector
from servegraph.runtime.graph.feedback import FeedbackMemory, RouteRecord
from servegraph.runtime.graph.hosting import load_node_config
from servegraph.runtime.graph.metrics import GraphMetrics
from servegraph.runtime.graph.outlier import OutlierDetector
from servegraph.runtime.graph.state import DebouncedSaver, StateFile
from servegraph.runtime.graph.strategies import Weighted, build_strategy
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol.errors import ChildDeadlineExceeded, InvalidInput
from servegraph.runtime.protocol.parameters import join_route, parse_reward
from servegraph.runtime.protocol.types import InferRequest


def metrics() -> GraphMetrics:
    return GraphMetrics.for_registry(ServerMetrics().registry)


def test_epsilon_greedy_tries_every_arm_then_exploits() -> None:
    rng = np.random.default_rng(0)
    policy = EpsilonGreedy(0.0)
    arms = {"a": ArmStats(), "b": ArmStats()}
    first = policy.choose(arms, rng)
    arms[first].reward(0.0)
    second = policy.choose(arms, rng)
    assert second != first  # the untried arm is optimistic
    arms[second].reward(1.0)
    assert all(policy.choose(arms, rng) == second for _ in range(20))
    explore = EpsilonGreedy(1.0)
    assert {explore.choose(arms, rng) for _ in range(50)} == {"a", "b"}


def test_thompson_sampling_prefers_the_better_posterior_and_checks_rewards() -> None:
    rng = np.random.default_rng(0)
    arms = {"good": ArmStats(100, 90.0), "bad": ArmStats(100, 10.0)}
    picks = [ThompsonSampling().choose(arms, rng) for _ in range(200)]
    assert picks.count("good") == 200
    with pytest.raises(InvalidInput, match="node 'r' .* between 0 and 1, got -0.5"):
        ThompsonSampling().check_reward(-0.5, "r")


@pytest.mark.parametrize("policy", [EpsilonGreedy(0.1), ThompsonSampling()], ids=["epsilon", "thompson"])
@pytest.mark.parametrize("reward", [1.5, -0.5, 1.0000001])
def test_every_bandit_takes_rewards_in_0_1_only(policy: EpsilonGreedy | ThompsonSampling, reward: float) -> None:
    with pytest.raises(InvalidInput, match=f"node 'r' .* between 0 and 1, got {reward}"):
        policy.check_reward(reward, "r")
    policy.check_reward(0.0, "r")
    policy.check_reward(1.0, "r")


def test_weighted_is_deterministic_under_a_seed_and_checks_its_weights() -> None:
    request = InferRequest("m", "", {}, {})

    def draws(seed: int) -> list[str]:
        strategy = Weighted("r", {"a": 30, "b": 70}, ["a", "b"], np.random.default_rng(seed))
        return [strategy.choose(request, {}) for _ in range(100)]

    assert draws(1) == draws(1) != draws(2)
    assert Weighted("r", {"a": 100}, ["a", "b"], np.random.default_rng(0)).choose(request, {}) == "a"
    with pytest.raises(ValueError, match=r"router 'r' has weights for \['c'\], which are not its children"):
        Weighted("r", {"c": 1}, ["a", "b"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="add up to 0"):
        Weighted("r", {"a": 0}, ["a", "b"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="has primary 'x', which is not one of its children"):
        build_strategy("r", RouterSettings(strategy="Shadow", primary="x"), ["a"], np.random.default_rng(0))
    with pytest.raises(ValueError, match="uses strategy Header but names no header"):
        build_strategy("r", RouterSettings(strategy="Header"), ["a"], np.random.default_rng(0))


def test_feedback_memory_forgets_the_oldest_and_rewards_once() -> None:
    memory = FeedbackMemory(2)
    for i in range(3):
        memory.remember(f"id-{i}", RouteRecord("a", "a"))
    assert memory.take("id-0") is None and memory.forgotten == 1
    record = memory.take("id-2")
    assert record == RouteRecord("a", "a") and not record.nested
    assert memory.take("id-2") is None and len(memory) == 1
    assert RouteRecord("ab", "ab/model-a").nested


def test_state_file_round_trip_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    state = StateFile(path, "r")
    assert state.load() == {}
    state.save({"a": ArmStats(3, 2.5)})
    assert state.load() == {"a": ArmStats(3, 2.5)}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]
    path.write_text("{not json")
    assert state.load() == {}  # reported and ignored: the router still serves
    path.write_text(json.dumps({"version": 99, "arms": {}}))
    assert state.load() == {}


async def test_debounced_saves_write_once_per_burst_and_flush(tmp_path: Path) -> None:
    arms = {"a": ArmStats()}
    saver = DebouncedSaver(StateFile(tmp_path / "s.json", "r"), arms)
    for _ in range(50):
        arms["a"].reward(1.0)
        saver.changed()
    await saver.flush()
    assert saver.saves == 1
    assert json.loads((tmp_path / "s.json").read_text())["arms"]["a"] == {"pulls": 50, "reward_sum": 50.0}
    await saver.flush()
    assert saver.saves == 1  # nothing new to write


async def test_a_change_during_a_write_is_saved_too(tmp_path: Path) -> None:
    import asyncio
    import threading

    arms = {"a": ArmStats()}
    file = StateFile(tmp_path / "s.json", "r")
    entered, go = threading.Event(), threading.Event()
    write = file.save

    def held_write(snapshot: dict[str, ArmStats]) -> None:
        entered.set()
        go.wait(30)
        write(snapshot)

    file.save = held_write  # type: ignore[method-assign]
    saver = DebouncedSaver(file, arms)
    arms["a"].reward(1.0)
    saver.changed()
    assert await asyncio.to_thread(entered.wait, 30)  # the first write has its snapshot (1 pull)
    arms["a"].reward(1.0)
    saver.changed()  # arrives while that write is under way
    go.set()
    await saver.flush()
    assert json.loads((tmp_path / "s.json").read_text())["arms"]["a"]["pulls"] == 2


async def test_a_child_call_with_no_time_left_fails_fast() -> None:
    client = ChildClient(ChildEndpoint(name="c", model="m", grpc="127.0.0.1:1"), "n")
    with pytest.raises(ChildDeadlineExceeded, match="deadline passed before child 'c' of node 'n' could be called"):
        await client.infer({}, {}, deadline=time.monotonic() - 1)
    await client.close()


def test_what_a_node_passes_on_and_other_protocol_bits() -> None:
    params = {"timeout": 5, "priority": 1, "servegraph.route": "x", "user": "u", "n": 3, "nested": {"a": 1}}
    assert forwarded_parameters(params) == {"user": "u", "n": 3}
    headers = {"x-variant": "b", "x-trace-bin": b"\x00\x01", "x-name": "caf\u00e9", "other": "o"}
    assert forwarded_headers(headers, ["X-Variant", "x-trace-bin", "x-name", "x-missing"]) == {"x-variant": "b"}, (
        "named headers only, lower-cased; binary and non-ASCII values cannot travel as gRPC metadata"
    )
    assert join_route("ab", "model-a") == "ab/model-a" and join_route("ab", "") == "ab" and join_route("ab", None) == "ab"
    assert parse_reward("0.5") == 0.5 and parse_reward(1) == 1.0
    for bad in (True, float("nan"), "x", None, [1]):
        with pytest.raises(InvalidInput):
            parse_reward(bad)


def batch(x: np.ndarray) -> TensorBatch:
    return TensorBatch({"INPUT": x.astype(np.float32)}, {"INPUT": "FP32"})


def test_zscore_outliers_from_inline_parameters() -> None:
    detector = OutlierDetector(
        "s", "n", [], "zscore", 3.0, metrics(), mean=[0.0, 10.0], scale=[1.0, 2.0]
    )
    b = batch(np.array([[0.0, 10.0], [0.0, 17.0], [-3.5, 10.0]]))
    detector.apply(b)
    np.testing.assert_allclose(b.annotations["OUTLIER_SCORE"][:, 0], [0.0, 3.5, 3.5])
    assert b.annotations["IS_OUTLIER"][:, 0].tolist() == [False, True, True]
    assert b.arrays["INPUT"].shape == (3, 2)  # the input is left alone
    with pytest.raises(InvalidInput, match="have 3 features per row, the reference has 2"):
        detector.apply(batch(np.zeros((1, 3))))


def test_drift_window_slides_and_tests_only_with_enough_rows() -> None:
    reference = np.random.default_rng(0).normal(size=(300, 2))
    drift = DriftDetector("s", "n", [], reference, window=50, p_value_threshold=0.05, metrics=metrics())
    drift.apply(batch(np.random.default_rng(1).normal(size=(20, 2))))
    assert drift.p_values is None and drift.stats()["p_values"] is None  # fewer than 30 rows
    drift.apply(batch(np.random.default_rng(2).normal(size=(20, 2))))
    assert drift.p_values is not None and not drift.drift_detected
    drift.apply(batch(np.random.default_rng(3).normal(loc=3, size=(120, 2))))  # more than the window
    stats = drift.stats()
    assert stats["rows_in_window"] == 50 and stats["rows_seen"] == 160 and stats["drift_detected"]
    assert set(stats["p_values"]) == {"INPUT[0]", "INPUT[1]"}


async def test_drift_ks_tests_run_off_the_event_loop() -> None:
    from servegraph.runtime.graph.transforms import run_steps

    reference = np.random.default_rng(0).normal(size=(2000, 4))
    drift = DriftDetector("s", "n", [], reference, window=100, p_value_threshold=0.05, metrics=metrics())
    threads: list[threading.Thread] = []
    ks = drift._ks_2samp

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return ks(*args, **kwargs)

    drift._ks_2samp = recording
    rng = np.random.default_rng(1)
    await run_steps([drift], batch(rng.normal(size=(40, 4))))  # enough rows: tested when applied
    await run_steps([drift], batch(rng.normal(size=(3, 4))))  # fewer than a tenth: untested
    assert drift.tests == 1
    stats = drift.stats()  # read on the loop: the pending test starts in a thread
    assert stats["p_values"] is not None
    deadline = time.monotonic() + 10
    while drift.tests < 2:
        assert time.monotonic() < deadline, "the test pending at the statistics read never ran"
        await asyncio.sleep(0.01)
    assert drift.stats()["rows_in_window"] == 43
    assert len(threads) == 2 and threading.main_thread() not in threads


def test_parameter_and_reference_files(tmp_path: Path) -> None:
    from servegraph.runtime.graph.datafiles import load_params, load_reference

    np.savez(tmp_path / "p.npz", mean=[1.0, 2.0], scale=[3.0, 4.0])
    params = load_params(tmp_path / "p.npz")
    assert params["mean"].tolist() == [1.0, 2.0] and params["scale"].tolist() == [3.0, 4.0]
    (tmp_path / "p.json").write_text('{"min": [0], "max": [1]}')
    assert load_params(tmp_path / "p.json")["max"].tolist() == [1.0]
    np.save(tmp_path / "r.npy", np.arange(6.0))
    assert load_reference(tmp_path / "r.npy").shape == (6, 1)  # one feature
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="name the reference array 'reference'"):
        load_reference(tmp_path / "two.npz")
    (tmp_path / "p.txt").write_text("1,2")
    with pytest.raises(ValueError, match="expected a .npy, .npz or .csv file"):
        load_reference(tmp_path / "p.txt")


def test_node_config_files(tmp_path: Path) -> None:
    body = {
        "node": "ab", "deployment": "d", "role": "router", "model_name": "ab",
        "children": [{"name": "a", "model": "a", "grpc": "127.0.0.1:1"}],
        "router": {"strategy": "Weighted"},
    }  # fmt: skip
    (tmp_path / "n.json").write_text(json.dumps(body))
    assert load_node_config(tmp_path / "n.json").node == "ab"
    (tmp_path / "n.yaml").write_text("node: ab\nrole: router\n")
    with pytest.raises(ValueError, match=r"invalid node config .*n\.yaml"):
        load_node_config(tmp_path / "n.yaml")


def test_serve_takes_a_repository_or_a_node_config(tmp_path: Path) -> None:
    from servegraph.cli import main
    from servegraph.runtime.config import ServerSettings
    from servegraph.runtime.server import Server

    with pytest.raises(ValueError, match="a model repository or a node config"):
        Server(ServerSettings())
    (tmp_path / "n.yaml").write_text("node: ab\n")
    assert main(["serve", "--node-config", str(tmp_path / "n.yaml")]) == 2
    with pytest.raises(SystemExit):
        main(["serve"])  # one of the two is required


async def test_shadow_copies_are_bounded_and_counted() -> None:
    import asyncio

    from servegraph.runtime.graph.shadow import ShadowCopies

    release = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    async def broken() -> None:
        raise RuntimeError("shadow down")

    copies = ShadowCopies("r", metrics(), max_in_flight=2)
    for _ in range(3):
        copies.send("s", slow)
    assert copies.in_flight == 2 and copies.counts["s"]["dropped"] == 1
    release.set()
    while copies.in_flight:
        await asyncio.sleep(0)
    copies.send("s", broken)
    while copies.in_flight:
        await asyncio.sleep(0)
    assert copies.counts["s"] == {"success": 2, "failed": 1, "dropped": 1} and calls == 2
    copies.send("s", slow)
    release.clear()
    await copies.close()  # shutdown cancels what still runs
    assert copies.in_flight == 0
