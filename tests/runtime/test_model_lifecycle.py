"""A served version's instances: unloaded off the event loop, and never left loaded by a failed load."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from servegraph.runtime import model as model_module
from servegraph.runtime.batching.cost import CostCurve
from servegraph.runtime.config import InstanceGroup, ModelConfig, TensorConfig
from servegraph.runtime.model import ServedModel


def config(instances: int = 1) -> ModelConfig:
    return ModelConfig(
        name="m",
        backend="python",
        input=[TensorConfig(name="X", data_type="FP32", dims=[1])],
        output=[TensorConfig(name="Y", data_type="FP32", dims=[1])],
        instance_group=[InstanceGroup(count=instances)],
        warmup=False,
    )


class Instance:
    def __init__(self, number: int, unloaded: list[int], release: threading.Event | None = None) -> None:
        self.number = number
        self.unloaded = unloaded
        self.release = release
        self.unload_thread: threading.Thread | None = None
        self.unloading = threading.Event()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"Y": inputs["X"]}

    def unload(self) -> None:
        self.unload_thread = threading.current_thread()
        self.unloading.set()
        if self.release is not None:
            self.release.wait(5)
        self.unloaded.append(self.number)


async def test_unload_runs_in_a_worker_thread_and_the_loop_keeps_running() -> None:
    release = threading.Event()
    instance = Instance(0, [], release)
    served = ServedModel(config(), "1", [instance], CostCurve())
    closing = asyncio.get_running_loop().create_task(served.close())
    deadline = time.monotonic() + 5
    while not instance.unloading.is_set():
        assert time.monotonic() < deadline, "unload() never started"
        await asyncio.sleep(0.01)
    # The loop runs while the user's unload() is still blocked.
    assert not closing.done() and not instance.unloaded
    release.set()
    assert await closing is True
    assert instance.unloaded == [0]
    assert instance.unload_thread is not threading.main_thread()


def test_a_failed_instance_unloads_the_instances_already_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    unloaded: list[int] = []
    loaded: list[Instance] = []

    def load(cfg: ModelConfig, version_dir: Path) -> Instance:
        if len(loaded) == 2:
            raise RuntimeError("out of memory on instance 3")
        loaded.append(Instance(len(loaded), unloaded))
        return loaded[-1]

    monkeypatch.setattr(model_module, "backend_module", lambda name: SimpleNamespace(load=load))
    with pytest.raises(RuntimeError, match="out of memory on instance 3"):
        ServedModel.load(config(instances=3), "1", Path("."))
    assert sorted(unloaded) == [0, 1]
