"""Rendering: a ModelDeployment into the runtime's NodeConfigs and one-model repositories."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
import yaml

from servegraph.operator.manifest import load_manifest, parse_manifest
from servegraph.operator.render import (
    ConfigOverrides,
    Endpoint,
    RenderedGraph,
    RenderError,
    render_graph,
    write_model_repository,
)
from servegraph.operator.validation import SpecError
from servegraph.runtime.graph.config import ChildEndpoint, NodeConfig, TensorSignature
from servegraph.runtime.repository.layout import read_config, scan
from tests.conftest import grpc_url, serve
from tests.operator.conftest import ADD_SUB, GRAPH, MANIFESTS, node


def endpoint(name: str) -> Endpoint:
    """Service-style addresses, so a test can see which child got which endpoint."""
    return Endpoint(http=f"{name}.svc:8000", grpc=f"{name}.svc:8001")


def _render(name: str, **options: Any) -> RenderedGraph:
    return render_graph(load_manifest(MANIFESTS / name), endpoint, manifest_dir=MANIFESTS, **options)


# ----------------------------------------------------------------------------- node configs


def test_weighted_router_over_two_models() -> None:
    graph = _render("ab.yaml")
    assert graph.order == ["current", "candidate", "split"]
    assert graph.entrypoint == "split" and graph.entry_model == "add-sub-ab"
    assert set(graph.models) == {"current", "candidate"} and set(graph.nodes) == {"split"}
    split = graph.nodes["split"]
    assert split.node == "split" and split.deployment == "add-sub-ab"
    assert split.role == "router" and split.model_name == "add-sub-ab"
    assert split.children == [
        ChildEndpoint(name="current", model="add_sub_v1", grpc="current.svc:8001", http="current.svc:8000"),
        ChildEndpoint(name="candidate", model="candidate", grpc="candidate.svc:8001", http="candidate.svc:8000"),
    ]
    assert split.router is not None
    assert split.router.strategy == "Weighted"
    assert split.router.weights == {"current": 90.0, "candidate": 10.0}
    assert split.router.failover is True
    assert split.router.state_file == ""
    assert split.default_timeout_ms == 2000
    assert split.inputs == [
        TensorSignature(name="INPUT0", datatype="FP32", shape=[-1, 16]),
        TensorSignature(name="INPUT1", datatype="FP32", shape=[-1, 16]),
    ]
    assert [t.name for t in split.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert split.combiner is None and split.transformer is None


def test_combiner_over_three_models() -> None:
    graph = _render("ensemble.yaml")
    assert graph.order == ["m1", "m2", "m3", "vote"]
    vote = graph.nodes["vote"]
    assert vote.role == "combiner" and vote.model_name == "ensemble"
    assert [(c.name, c.model) for c in vote.children] == [("m1", "m1"), ("m2", "add_sub"), ("m3", "m3")]
    assert vote.combiner is not None
    assert vote.combiner.method == "WeightedMean"
    assert vote.combiner.weights == {"m1": 1.0, "m2": 2.0, "m3": 1.0}
    assert vote.combiner.on_child_failure == "Skip" and vote.combiner.quorum == 2
    assert vote.default_timeout_ms == 0 and vote.inputs == [] and vote.outputs == []


def test_transformer_chain() -> None:
    graph = _render("chain.yaml")
    assert graph.order == ["model", "outliers", "scale"]
    scale, outliers = graph.nodes["scale"], graph.nodes["outliers"]
    assert scale.role == outliers.role == "transformer"
    assert scale.model_name == "scored" and outliers.model_name == "outliers"
    assert [(c.name, c.model) for c in scale.children] == [("outliers", "outliers")]
    assert [(c.name, c.model) for c in outliers.children] == [("model", "model")]
    assert scale.transformer is not None and outliers.transformer is not None
    [scaler] = scale.transformer.input
    assert scaler.kind == "StandardScaler" and scaler.tensors == ["INPUT0"]
    assert scaler.params_file == str(MANIFESTS / "params" / "scaler.json"), "relative to the manifest"
    assert scale.transformer.output == []
    [detector] = outliers.transformer.output
    assert detector.kind == "OutlierDetector" and detector.method == "mahalanobis"
    assert detector.threshold == 4.5 and detector.tensors == ["OUTPUT0"]
    assert detector.reference_file == "/data/reference.npy", "absolute paths stay"
    assert scale.default_timeout_ms == 500
    assert [t.name for t in scale.outputs][-2:] == ["OUTLIER_SCORE", "IS_OUTLIER"]


def test_node_configs_survive_a_file() -> None:
    """The rendered config is what a node process reads back from YAML (ConfigMap or file)."""
    for name in ("ab.yaml", "ensemble.yaml", "chain.yaml"):
        for config in _render(name).nodes.values():
            text = yaml.safe_dump(config.model_dump(mode="json"))
            assert NodeConfig.model_validate(yaml.safe_load(text)) == config


@pytest.mark.parametrize(
    ("router", "state_file"),
    [
        ({"strategy": "EpsilonGreedy", "epsilon": 0.3}, "/var/state/split.json"),
        ({"strategy": "ThompsonSampling", "seed": 7}, "/var/state/split.json"),
        ({"strategy": "Shadow", "primary": "a", "shadowPercent": 5}, ""),
    ],
    ids=["epsilon-greedy", "thompson", "shadow"],
)
def test_bandit_routers_keep_state_under_state_dir(router: dict[str, Any], state_file: str) -> None:
    data = copy.deepcopy(GRAPH)
    node(data, "split")["router"] = router
    graph = render_graph(parse_manifest(data), endpoint, state_dir="/var/state")
    settings = graph.nodes["split"].router
    assert settings is not None
    assert settings.state_file == state_file
    assert settings.strategy == router["strategy"]
    if "epsilon" in router:
        assert settings.epsilon == 0.3
    if "seed" in router:
        assert settings.seed == 7
    if router["strategy"] == "Shadow":
        assert (settings.primary, settings.shadow_percent) == ("a", 5)


def test_header_router_routes_become_a_mapping() -> None:
    data = copy.deepcopy(GRAPH)
    node(data, "split")["router"] = {
        "strategy": "Header",
        "header": "x-variant",
        "routes": [{"value": "blue", "child": "a"}, {"value": "green", "child": "ens"}],
        "default": "a",
    }
    settings = render_graph(parse_manifest(data), endpoint).nodes["split"].router
    assert settings is not None
    assert settings.header == "x-variant" and settings.default == "a"
    assert settings.routes == {"blue": "a", "green": "ens"}


def test_nodes_above_a_header_router_forward_its_header() -> None:
    """pre -> split (Header on X-Variant) -> a, ens: pre passes the header on, split need not."""
    data = copy.deepcopy(GRAPH)
    node(data, "split")["router"] = {"strategy": "Header", "header": "X-Variant", "default": "a"}
    graph = render_graph(parse_manifest(data), endpoint)
    assert graph.nodes["pre"].forward_headers == ["x-variant"]
    assert graph.nodes["split"].forward_headers == []
    assert render_graph(parse_manifest(GRAPH), endpoint).nodes["pre"].forward_headers == []


def test_inner_nodes_answer_to_their_own_name() -> None:
    graph = render_graph(parse_manifest(GRAPH), endpoint)
    assert graph.nodes["pre"].model_name == "graph", "the entrypoint answers as the deployment"
    assert graph.nodes["split"].model_name == "split"
    assert [(c.name, c.model) for c in graph.nodes["pre"].children] == [("split", "split")]
    assert [(c.name, c.model) for c in graph.nodes["split"].children] == [("a", "a"), ("ens", "ens")]


def test_a_model_entrypoint() -> None:
    data = copy.deepcopy(GRAPH)
    data["spec"] = {"entrypoint": "solo", "nodes": [{"name": "solo", "type": "Model", "model": {"storageUri": "m", "modelName": "solo_v2"}}]}
    graph = render_graph(parse_manifest(data), endpoint)
    assert graph.nodes == {} and graph.order == ["solo"] and graph.entry_model == "solo_v2"


def test_render_refuses_an_invalid_spec() -> None:
    data = copy.deepcopy(GRAPH)
    node(data, "ens")["children"] = ["b"]
    with pytest.raises(SpecError, match="node 'ens': a Combiner needs at least 2 children"):
        render_graph(parse_manifest(data), endpoint)


def test_storage_uris_resolve_against_the_manifest() -> None:
    graph = _render("ensemble.yaml")
    assert graph.models["m1"].repository_files == {"m1": ADD_SUB}
    assert graph.models["m2"].repository_files == {"add_sub": ADD_SUB}
    assert graph.models["m3"].repository_files == {"m3": "s3://models/add_sub"}
    assert graph.models["m1"].local and not graph.models["m3"].local
    assert _render("ab.yaml").models["candidate"].repository_files == {"candidate": ADD_SUB}, "file://"


def test_without_manifest_dir_relative_paths_stay_relative() -> None:
    graph = render_graph(parse_manifest(GRAPH), endpoint)
    assert graph.models["a"].repository_files == {"a": Path("models/a")}


def test_overrides_are_serialisable() -> None:
    """The operator ships them beside a remote model; they must survive JSON."""
    overrides = _render("ab.yaml").models["current"].overrides
    assert ConfigOverrides.model_validate_json(overrides.model_dump_json()) == overrides


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
         " (servegraph.operator.storage.fetch_model, as `servegraph run` does)"),
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
