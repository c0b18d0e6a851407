"""Rendering: a ModelDeployment into the runtime's NodeConfigs and one-model repositories."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from servegraph.operator.manifest import load_manifest, parse_manifest
from servegraph.operator.render import (
    ConfigOverrides,
    Endpoint,
    RenderedGraph,
    render_graph,
)
from servegraph.operator.validation import SpecError
from servegraph.runtime.graph.config import ChildEndpoint, NodeConfig, TensorSignature
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
