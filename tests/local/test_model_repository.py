"""Writing a rendered Model node as a one-model repository, read back by the runtime."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import yaml

from servegraph.local.repository import write_model_repository
from servegraph.operator.manifest import load_manifest, parse_manifest
from servegraph.operator.render import (
    Endpoint,
    RenderedGraph,
    RenderError,
    render_graph,
)
from servegraph.runtime.repository.layout import read_config, scan
from tests.conftest import grpc_url, serve
from tests.operator.conftest import ADD_SUB, GRAPH, MANIFESTS


def endpoint(name: str) -> Endpoint:
    """Service-style addresses, so a test can see which child got which endpoint."""
    return Endpoint(http=f"{name}.svc:8000", grpc=f"{name}.svc:8001")


def _render(name: str, **options: Any) -> RenderedGraph:
    return render_graph(load_manifest(MANIFESTS / name), endpoint, manifest_dir=MANIFESTS, **options)


# ----------------------------------------------------------------------------- repositories


def test_model_repository_with_every_override(tmp_path: Path) -> None:
    model = _render("ab.yaml").models["current"]
    folder = write_model_repository(model, tmp_path)
    assert folder == tmp_path / "add_sub_v1"
    found = scan(tmp_path)
    assert list(found) == ["add_sub_v1"]
    assert list(found["add_sub_v1"].versions) == [1]
    assert (folder / "1").is_symlink() and (folder / "1").resolve() == (ADD_SUB / "1").resolve()
    config = read_config(found["add_sub_v1"])
    assert config.name == "add_sub_v1"
    assert config.backend == "python"
    assert [t.name for t in config.input] == ["INPUT0", "INPUT1"], "the folder's own config stays"
    assert config.version_policy.specific is not None and config.version_policy.specific.versions == [1]
    assert config.max_batch_size == 8
    batching = config.dynamic_batching
    assert batching is not None
    assert batching.max_queue_delay_microseconds == 200
    assert batching.preferred_batch_size == [4, 8]
    assert batching.max_queue_size == 64 and config.queue_size == 64
    assert batching.default_queue_policy.default_timeout_microseconds == 50000
    assert batching.scheduler == "fixed_delay"
    assert config.shape_buckets is not None and config.shape_buckets.batch_sizes == [1, 4, 8]
    assert config.instance_count == 2


def test_model_repository_without_overrides_keeps_the_folder_config(tmp_path: Path) -> None:
    model = _render("ensemble.yaml").models["m2"]
    write_model_repository(model, tmp_path)
    written = read_config(scan(tmp_path)["add_sub"])
    original = read_config(scan(ADD_SUB.parent)["add_sub"])
    assert written == original


def test_shape_bucket_dims_and_instances_keep_the_device(tmp_path: Path) -> None:
    source = tmp_path / "src" / "m"
    shutil.copytree(ADD_SUB, source)
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["instance_group"] = [{"count": 1, "kind": "KIND_CPU"}]
    (source / "config.yaml").write_text(yaml.safe_dump(config))
    data = copy.deepcopy(GRAPH)
    data["spec"] = {
        "entrypoint": "m",
        "nodes": [{"name": "m", "type": "Model", "model": {
            "storageUri": str(source), "instances": 3,
            "batching": {"shapeBuckets": {"dims": [{"input": "INPUT0", "axis": 1, "sizes": [16, 8, 8]}]}},
        }}],
    }  # fmt: skip
    model = render_graph(parse_manifest(data), endpoint).models["m"]
    written = read_config(scan(write_model_repository(model, tmp_path / "repo").parent)["m"])
    assert [(g.count, g.kind) for g in written.instance_group] == [(3, "KIND_CPU")]
    assert written.shape_buckets is not None and written.shape_buckets.dims == {"INPUT0": {1: [8, 16]}}
    assert written.dynamic_batching is not None, "a batching block turns dynamic batching on"


def test_rewriting_brings_the_repository_up_to_date(tmp_path: Path) -> None:
    source = tmp_path / "src" / "m"
    shutil.copytree(ADD_SUB, source)
    shutil.copytree(ADD_SUB / "1", source / "2")
    data = copy.deepcopy(GRAPH)
    data["spec"] = {"entrypoint": "m", "nodes": [{"name": "m", "type": "Model", "model": {"storageUri": "src/m"}}]}
    model = render_graph(parse_manifest(data), endpoint, manifest_dir=tmp_path).models["m"]
    repo = tmp_path / "repo"
    write_model_repository(model, repo)
    assert sorted(scan(repo)["m"].versions) == [1, 2]
    shutil.rmtree(source / "2")
    write_model_repository(model, repo)
    assert sorted(scan(repo)["m"].versions) == [1]


def _single(tmp_path: Path, model: dict[str, Any]) -> Any:
    data = copy.deepcopy(GRAPH)
    data["spec"] = {"entrypoint": "m", "nodes": [{"name": "m", "type": "Model", "model": model}]}
    return render_graph(parse_manifest(data), endpoint, manifest_dir=tmp_path).models["m"]


def test_a_folder_without_config_uses_format(tmp_path: Path) -> None:
    (tmp_path / "bare" / "1").mkdir(parents=True)
    shutil.copy(ADD_SUB / "1" / "model.py", tmp_path / "bare" / "1" / "model.py")
    model = _single(tmp_path, {"storageUri": "bare", "format": "onnxruntime"})
    config = read_config(scan(write_model_repository(model, tmp_path / "repo").parent)["m"])
    assert (config.name, config.backend) == ("m", "onnxruntime")


@pytest.mark.parametrize(
    ("model", "prepare", "expected"),
    [
        ({"storageUri": "s3://bucket/models/m"}, None,
         "node 'm': storageUri s3://bucket/models/m is remote; fetch it first"
         " (servegraph.runtime.storage.fetch_model, as `servegraph run` does)"),
        ({"storageUri": "pvc://claim/m"}, None, "storageUri pvc://claim/m is remote; fetch it first"),
        ({"storageUri": "https://example.com/m.tar.gz"}, None, "is remote; fetch it first"),
        ({"storageUri": "missing"}, None, "model folder {tmp}/missing (storageUri 'missing') is not a directory"),
        ({"storageUri": "empty"}, "empty", "model folder {tmp}/empty has no numbered version folders"),
        ({"storageUri": "noconfig"}, "noconfig/1", "model folder {tmp}/noconfig has no config.yaml or config.yml or config.pbtxt; add one or set model.format"),
        ({"storageUri": str(ADD_SUB), "batching": {"shapeBuckets": {"batchSizes": [16]}}}, None,
         "the config of " + str(ADD_SUB) + " with the spec's overrides is invalid: shape_buckets.batch_sizes [16] exceed max_batch_size 8"),
    ],
    ids=["s3", "pvc", "https", "missing", "no-versions", "no-config", "invalid-after-overrides"],
)  # fmt: skip
def test_what_a_local_run_cannot_serve(tmp_path: Path, model: dict[str, Any], prepare: str | None, expected: str) -> None:
    if prepare:
        (tmp_path / prepare).mkdir(parents=True)
    rendered = _single(tmp_path, model)
    with pytest.raises(RenderError) as caught:
        write_model_repository(rendered, tmp_path / "repo")
    assert expected.format(tmp=tmp_path) in str(caught.value)


def test_a_name_clash_in_the_target_is_not_overwritten(tmp_path: Path) -> None:
    model = _render("ensemble.yaml").models["m1"]
    (tmp_path / "m1" / "1").mkdir(parents=True)
    with pytest.raises(RenderError, match="exists and is not a link servegraph made"):
        write_model_repository(model, tmp_path)


async def test_the_runtime_serves_a_written_repository(tmp_path: Path) -> None:
    """Symlinked version folders load and answer under the spec's model name."""
    write_model_repository(_render("ab.yaml").models["current"], tmp_path)
    async with serve(tmp_path) as server:
        client = grpcaio.InferenceServerClient(grpc_url(server.ports))
        try:
            inputs = []
            for name in ("INPUT0", "INPUT1"):
                tensor = grpcaio.InferInput(name, [2, 16], "FP32")
                tensor.set_data_from_numpy(np.full((2, 16), 3.0 if name == "INPUT0" else 1.0, np.float32))
                inputs.append(tensor)
            result = await client.infer("add_sub_v1", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((2, 16), 4.0, np.float32))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((2, 16), 2.0, np.float32))
        finally:
            await client.close()
