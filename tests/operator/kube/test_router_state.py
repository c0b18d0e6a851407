"""Bandit state shared through a ConfigMap: the runtime's store against the API emulator.

Two router replicas (and a restarted one) write their rewards to one ConfigMap over real
HTTP; nothing is lost, each sees the others' rewards after a save, and keys of replicas
that are gone are folded under resourceVersion concurrency even when a write races it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from servegraph.runtime.graph.bandits import ArmStats
from servegraph.runtime.graph.state import DebouncedSaver
from servegraph.runtime.graph.state_configmap import BASE_KEY, ConfigMapState

from .emulator import ServegraphEmulator

NS = "default"
NAME = "graph-bandit-state"


def store(emulator: ServegraphEmulator, replica: str) -> ConfigMapState:
    return ConfigMapState(
        NAME, "bandit", api=str(emulator.url), namespace=NS, replica=replica,
        token_file=Path("/nonexistent/token"), ca_file=Path("/nonexistent/ca.crt"),
    )  # fmt: skip


def config_map(emulator: ServegraphEmulator, **data: str) -> None:
    """The router's state ConfigMap, as the operator creates it (plus ``data`` left by pods)."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME}, "data": data}
    emulator.create_object("v1/configmaps", body, namespace=NS)


def gone_pod(pulls: int, reward_sum: float) -> str:
    """A key a replica left long ago (its pod is gone)."""
    return json.dumps({"updated": 0.0, "arms": {"left": {"pulls": pulls, "reward_sum": reward_sum}}})


def total(emulator: ServegraphEmulator) -> tuple[int, float]:
    data = emulator.get_object("v1/configmaps", NS, NAME)["data"]  # type: ignore[index]
    pulls, reward = 0, 0.0
    for text in data.values():
        for arm in json.loads(text)["arms"].values():
            pulls += arm["pulls"]
            reward += arm["reward_sum"]
    return pulls, reward


async def test_replicas_merge_their_rewards_and_a_restart_keeps_them(emulator: ServegraphEmulator) -> None:
    config_map(emulator)
    a, b = store(emulator, "router-a"), store(emulator, "router-b")
    assert await asyncio.to_thread(a.load) == {}
    await asyncio.to_thread(a.save, {"left": ArmStats(3, 2.0)})
    view_b = await asyncio.to_thread(b.load)
    assert view_b == {"left": ArmStats(3, 2.0)}  # b starts from what a learned
    view_b["left"].reward(1.0)
    view_b["right"] = ArmStats(1, 0.0)
    await asyncio.to_thread(b.save, view_b)
    await asyncio.to_thread(a.save, {"left": ArmStats(4, 2.5)})  # a rewarded once more meanwhile
    assert a.others == {"left": ArmStats(1, 1.0), "right": ArmStats(1, 0.0)}  # b's share, nothing else
    assert total(emulator) == (6, 3.5)

    restarted = store(emulator, "router-a")
    view = await asyncio.to_thread(restarted.load)
    assert view == {"left": ArmStats(5, 3.5), "right": ArmStats(1, 0.0)}
    view["right"].reward(1.0)
    await asyncio.to_thread(restarted.save, view)
    assert total(emulator) == (7, 4.5)


async def test_the_saver_takes_other_replicas_rewards_into_the_view(emulator: ServegraphEmulator) -> None:
    config_map(emulator)
    a, b = store(emulator, "router-a"), store(emulator, "router-b")
    arms_a = {"left": ArmStats(), "right": ArmStats()}
    arms_a.update(await asyncio.to_thread(a.load))
    saver = DebouncedSaver(a, arms_a)
    await asyncio.to_thread(b.save, {"right": ArmStats(10, 9.0)})
    arms_a["left"].reward(1.0)
    saver.changed()
    await saver.flush()
    assert arms_a == {"left": ArmStats(1, 1.0), "right": ArmStats(10, 9.0)}
    assert total(emulator) == (11, 10.0)  # b's rewards were read, not written again by a


async def test_gone_replicas_are_folded_and_a_conflict_is_retried(emulator: ServegraphEmulator) -> None:
    config_map(emulator, **{"gone-pod.json": gone_pod(7, 3.0)})
    a = store(emulator, "router-a")
    view = await asyncio.to_thread(a.load)
    assert view == {"left": ArmStats(7, 3.0)}
    fault = emulator.inject("patch", "configmaps", 409, times=1, name=NAME)
    await asyncio.to_thread(a._fold, ["gone-pod.json"])  # its first write loses a race
    assert fault.used == 1
    data = emulator.get_object("v1/configmaps", NS, NAME)["data"]  # type: ignore[index]
    assert "gone-pod.json" not in data and BASE_KEY in data
    view["left"].reward(1.0)
    await asyncio.to_thread(a.save, view)
    assert total(emulator) == (8, 4.0)


async def test_a_stale_key_is_folded_by_a_save(emulator: ServegraphEmulator) -> None:
    config_map(emulator, **{"gone-pod.json": gone_pod(2, 1.0)})
    a = store(emulator, "router-a")
    view = await asyncio.to_thread(a.load)
    view["left"].reward(0.5)
    await asyncio.to_thread(a.save, view)
    data = emulator.get_object("v1/configmaps", NS, NAME)["data"]  # type: ignore[index]
    assert sorted(data) == [BASE_KEY, "router-a.json"]
    assert total(emulator) == (3, 1.5)
