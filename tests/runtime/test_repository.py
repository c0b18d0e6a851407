"""The model repository: version policies, hot pickup and retirement under load, models
that fail to load, and Triton's config.pbtxt read as-is."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from servegraph.runtime.config import VersionPolicy
from servegraph.runtime.repository.layout import select_versions
from servegraph.runtime.triton_config import parse_pbtxt, to_json
from tests.conftest import DOUBLES, add_model, add_version, eventually, fp32_model_config, grpc_url, serve


def versioned_source(version: int) -> str:
    """A model whose answer says which version computed it."""
    return (
        "class Versioned:\n"
        "    def predict(self, inputs):\n"
        f"        return {{'OUTPUT': inputs['INPUT'] + {version}}}\n"
    )


def _x() -> list[grpcaio.InferInput]:
    inp = grpcaio.InferInput("INPUT", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    return [inp]


async def _served_by(client: grpcaio.InferenceServerClient, version: str = "") -> int:
    result = await client.infer("m", _x(), model_version=version)
    return int(result.as_numpy("OUTPUT")[0, 0])


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({}, [3]),
        ({"latest": {"num_versions": 2}}, [2, 3]),
        ({"specific": {"versions": [1, 3]}}, [1, 3]),
        ({"all": {}}, [1, 2, 3]),
    ],
    ids=["default-latest-1", "latest-2", "specific", "all"],
)
async def test_version_policies(repo: Path, policy: dict[str, object], served: list[int]) -> None:
    add_model(repo, "m", fp32_model_config(version_policy=policy), versioned_source(0), versions=())
    for v in (1, 2, 3):
        add_version(repo, "m", v, versioned_source(v))
    async with serve(repo) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            meta = await client.get_model_metadata("m", as_json=True)
            assert meta["versions"] == [str(v) for v in served]
            assert await _served_by(client) == max(served), "the default version is the newest"
            for v in (1, 2, 3):
                if v in served:
                    assert await _served_by(client, str(v)) == v
                    assert await client.is_model_ready("m", str(v))
                else:
                    with pytest.raises(InferenceServerException) as info:
                        await _served_by(client, str(v))
                    assert info.value.status() == "StatusCode.NOT_FOUND"
                    assert f"unknown version '{v}'" in info.value.message()
        finally:
            await client.close()


def test_select_versions_is_pure() -> None:
    assert select_versions(VersionPolicy(), [3, 1, 2]) == [3]
    assert select_versions(VersionPolicy.model_validate({"latest": {"num_versions": 5}}), [1, 2]) == [1, 2]
    assert select_versions(VersionPolicy.model_validate({"specific": {"versions": [4]}}), [1, 2]) == []
    with pytest.raises(ValueError, match="one of latest, specific, all"):
        VersionPolicy.model_validate({"all": {}, "latest": {}})


async def test_new_version_is_picked_up_under_load_without_errors(repo: Path, tmp_path: Path) -> None:
    add_model(repo, "m", fp32_model_config(dynamic_batching={}), versioned_source(1))
    async with serve(repo, repository_poll_secs=0.1) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        seen: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                seen.append(await _served_by(client))  # any error fails the test

        try:
            loaders = [asyncio.ensure_future(load()) for _ in range(4)]
            await eventually(lambda: len(seen) > 20, what="load to run on version 1")
            # Stage the version beside the repository and move it in, as a deploy tool would.
            staged = add_version(tmp_path, "staging", 2, versioned_source(2))
            shutil.move(str(staged), str(repo / "m" / "2"))
            await eventually(lambda: seen[-1] == 2, what="traffic to reach version 2")
            count = len(seen)
            await eventually(lambda: len(seen) > count + 20, what="more load on version 2")
            stop.set()
            await asyncio.gather(*loaders)
            first_two = seen.index(2)
            assert set(seen[:first_two]) == {1} and set(seen[first_two:]) <= {1, 2}
            assert seen[-20:] == [2] * 20
            await eventually(
                lambda: [r["version"] for r in server.dataplane.repository_index()] == ["2"],
                what="version 1 to be retired",
            )
            assert server.dataplane.ready()
            # Removing version 2 leaves version 1 as the latest on disk: it is served again.
            shutil.rmtree(repo / "m" / "2")
            await eventually(
                lambda: [(r["version"], r["state"]) for r in server.dataplane.repository_index()] == [("1", "READY")],
                what="version 2 to be retired and version 1 to serve again",
            )
            assert await _served_by(client) == 1
        finally:
            await client.close()


async def test_a_retired_versions_metric_series_are_removed(repo: Path, tmp_path: Path) -> None:
    add_model(repo, "m", fp32_model_config(), versioned_source(1))
    async with serve(repo, repository_poll_secs=0.1) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))

        def series(version: str) -> list[str]:
            text = server.metrics.render().decode()
            return [line for line in text.splitlines() if 'model="m"' in line and f'version="{version}"' in line]

        try:
            assert await _served_by(client) == 1
            bad = grpcaio.InferInput("INPUT", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
            with pytest.raises(InferenceServerException):
                await client.infer("m", [bad])  # an "invalid" outcome series too
            assert any('outcome="invalid"' in line for line in series("1"))
            staged = add_version(tmp_path, "staging", 2, versioned_source(2))
            shutil.move(str(staged), str(repo / "m" / "2"))
            await eventually(
                lambda: [r["version"] for r in server.dataplane.repository_index()] == ["2"],
                what="version 1 to be retired",
            )
            assert await _served_by(client) == 2
            await eventually(lambda: not series("1"), what="version 1's series to be removed")
            assert any("servegraph_request_latency_seconds" in line for line in series("2"))
        finally:
            await client.close()


async def test_a_broken_model_is_unavailable_and_the_rest_serve(repo: Path) -> None:
    add_model(repo, "broken", fp32_model_config(), DOUBLES / "broken.py")
    add_model(repo, "m", fp32_model_config(), versioned_source(1))
    (repo / "bad_config").mkdir()
    (repo / "bad_config" / "config.yaml").write_text("backend: tensorflow\n")
    async with serve(repo, strict_readiness=False) as server:
        index = {r["name"]: r for r in server.dataplane.repository_index()}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "weights are corrupt" in index["broken"]["reason"]
        assert index["bad_config"]["state"] == "UNAVAILABLE"
        assert "backend" in index["bad_config"]["reason"]
        assert index["m"]["state"] == "READY"
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            assert await client.is_server_ready()  # not strict: some model serves
            assert not await client.is_model_ready("broken")
            with pytest.raises(InferenceServerException) as info:
                await client.infer("broken", _x())
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "weights are corrupt" in info.value.message()
            assert await _served_by(client) == 1
        finally:
            await client.close()
    async with serve(repo) as strict:
        assert not strict.dataplane.ready(), "strict readiness waits for every model"


def test_config_pbtxt_is_read_as_triton_writes_it() -> None:
    config = parse_pbtxt(
        """
        name: "resnet"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        version_policy: { latest: { num_versions: 2 } }
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1000 ] } ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 5000 }
        }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        """,
        "resnet",
    )
    assert config.backend == "onnxruntime"
    assert config.input[0].dims == [3, -1, -1]
    assert config.output[0].data_type == "BYTES"
    assert config.version_policy.latest is not None and config.version_policy.latest.num_versions == 2
    assert config.dynamic_batching is not None
    assert config.dynamic_batching.preferred_batch_size == [4, 8]
    assert config.queue_size == 16
    assert config.instance_count == 2
    rendered = to_json(config)
    assert rendered["input"][0]["data_type"] == "TYPE_FP32"
    assert rendered["output"][0]["data_type"] == "TYPE_STRING"
    assert rendered["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]


def test_config_pbtxt_with_an_unsupported_backend() -> None:
    with pytest.raises(ValueError, match="unsupported Triton backend/platform 'tensorrt_plan'"):
        parse_pbtxt('platform: "tensorrt_plan"', "m")


async def test_hot_reloads_leave_no_module_behind_in_sys_modules(repo: Path, tmp_path: Path) -> None:
    """Each version's model.py is imported under a module name of its own; a retired
    version's module leaves sys.modules with it, so reloads do not grow the interpreter."""
    import sys

    def user_modules() -> set[str]:
        return {name for name in sys.modules if name.startswith("servegraph_user_model_")}

    before = user_modules()
    add_model(repo, "m", fp32_model_config(), versioned_source(1))
    async with serve(repo, repository_poll_secs=0.1) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            assert await _served_by(client) == 1
            assert len(user_modules() - before) == 1
            for version in (2, 3, 4):
                staged = add_version(tmp_path, f"staging{version}", version, versioned_source(version))
                shutil.move(str(staged), str(repo / "m" / str(version)))
                await eventually(
                    lambda: [r["version"] for r in server.dataplane.repository_index()] == [str(version)],
                    what=f"version {version - 1} to be retired",
                )
                assert await _served_by(client) == version
                await eventually(lambda: len(user_modules() - before) == 1, what="one user module loaded")
        finally:
            await client.close()
    assert user_modules() == before
