"""Every validation rule, table-driven: a mutation of a valid graph and the message it gives.

The base graph (conftest.GRAPH) is pre -> split -> (a | ens -> (b, c)), one node of each
type. Each row breaks one thing; the test checks the message names the node and shows
the bad value, and that nothing else is reported for a one-thing break.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from servegraph.operator.manifest import parse_manifest
from servegraph.operator.validation import SpecError, topological_order, validate
from tests.operator.conftest import GRAPH, node

Mutation = Callable[[dict[str, Any]], Any]


def _add(d: dict[str, Any], **fields: Any) -> None:
    d["spec"]["nodes"].append(fields)


def _children(name: str, *children: str) -> Mutation:
    return lambda d: node(d, name).update(children=list(children))


def _router(**fields: Any) -> Mutation:
    return lambda d: node(d, "split")["router"].update(fields)


def _combiner(**fields: Any) -> Mutation:
    return lambda d: node(d, "ens")["combiner"].update(fields)


def _model(name: str = "a", **fields: Any) -> Mutation:
    return lambda d: node(d, name)["model"].update(fields)


def _step(**fields: Any) -> Mutation:
    return lambda d: node(d, "pre")["transformer"].update(input=[fields])


def _three_way(d: dict[str, Any]) -> None:
    """split gets a third child so Header/Shadow rows have room."""
    node(d, "split")["children"] = ["a", "ens"]


def _both(*mutations: Mutation) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(d)

    return apply


def _set_router(**router: Any) -> Mutation:
    return lambda d: node(d, "split").update(router=router)


CASES: list[tuple[str, Mutation, str]] = [
    # --- the graph
    ("entrypoint-unknown", lambda d: d["spec"].update(entrypoint="main"),
     "spec.entrypoint 'main' is not a node; nodes are 'pre', 'split', 'ens', 'a', 'b', 'c'"),
    ("entrypoint-empty", lambda d: d["spec"].update(entrypoint=""),
     "spec.entrypoint is empty; name the node that receives requests"),
    ("no-nodes", lambda d: d["spec"].update(nodes=[], entrypoint=""),
     "spec.nodes is empty"),
    ("unknown-child", _children("ens", "b", "c", "d"),
     "node 'ens': child 'd' is not a node; nodes are 'pre', 'split'"),
    ("child-twice", _children("ens", "b", "c", "b"),
     "node 'ens': child 'b' is listed twice"),
    ("self-child", _children("ens", "b", "c", "ens"),
     "node 'ens': lists itself as a child"),
    ("cycle", _children("ens", "b", "c", "split"),
     "cycle 'split' -> 'ens' -> 'split'; the graph must be acyclic"),
    ("long-cycle", _children("ens", "b", "c", "pre"),
     "cycle 'pre' -> 'split' -> 'ens' -> 'pre'"),
    ("unreachable", lambda d: _add(d, name="spare", type="Model", model={"storageUri": "x"}),
     "node 'spare' is not reachable from the entrypoint 'pre'"),
    ("duplicate-node", lambda d: _add(d, name="b", type="Model", model={"storageUri": "y"}),
     "node 'b' is defined 2 times; node names must be unique"),
    # --- blocks
    ("missing-block", lambda d: node(d, "ens").pop("combiner"),
     "node 'ens': type Combiner needs a 'combiner' block"),
    ("wrong-block", lambda d: node(d, "ens").update(router={"strategy": "Weighted"}),
     "node 'ens': type Combiner takes a 'combiner' block, not 'router'"),
    ("type-block-mismatch", lambda d: node(d, "a").update(type="Router"),
     "node 'a': type Router needs a 'router' block"),
    # --- Model
    ("model-children", lambda d: node(d, "a").update(children=["b"]),
     "node 'a': a Model has no children, got ['b']"),
    ("model-no-storage", _model(storageUri=""),
     "node 'a': model.storageUri is empty; say where the model folder is"),
    ("model-no-storage-key", lambda d: node(d, "a").update(model={"format": "python"}),
     "node 'a': model.storageUri is empty"),
    ("model-bad-scheme", _model(storageUri="ftp://host/m"),
     "node 'a': model.storageUri 'ftp://host/m' has an unsupported scheme 'ftp'"),
    ("model-two-policies", _model(versionPolicy={"latest": {"numVersions": 2}, "all": {}}),
     "node 'a': model.versionPolicy sets ['latest', 'all']; choose one"),
    ("model-preferred-too-big", _model(batching={"maxBatchSize": 4, "preferredBatchSizes": [2, 8]}),
     "node 'a': batching.preferredBatchSizes [8] exceed maxBatchSize 4"),
    ("model-buckets-too-big", _model(batching={"maxBatchSize": 4, "shapeBuckets": {"batchSizes": [4, 16]}}),
     "node 'a': batching.shapeBuckets.batchSizes [16] exceed maxBatchSize 4"),
    ("model-timeout-ms", lambda d: node(d, "a").update(timeoutMs=100),
     "node 'a': timeoutMs applies to Router, Combiner and Transformer nodes"),
    # --- Router
    ("router-weights-sum", _router(weights=[{"child": "a", "weight": 50}, {"child": "ens", "weight": 40}]),
     "node 'split': router weights sum to 90, expected 100"),
    ("router-weight-non-child", _router(weights=[{"child": "a", "weight": 50}, {"child": "b", "weight": 50}]),
     "node 'split': router weight names 'b', which is not a child (children: 'a', 'ens')"),
    ("router-weight-missing", _router(weights=[{"child": "a", "weight": 100}]),
     "node 'split': router weights miss children 'ens'; give every child a weight (0 is allowed)"),
    ("router-weight-twice", _router(weights=[{"child": "a", "weight": 50}, {"child": "a", "weight": 50}]),
     "node 'split': router weights name 'a' twice"),
    ("router-one-child", _children("split", "a"),
     "node 'split': a Router needs at least 2 children, got 1 ('a')"),
    ("router-field-for-other-strategy", _router(epsilon=0.2),
     "node 'split': router.epsilon applies to EpsilonGreedy routers, not Weighted"),
    ("header-route-non-child",
     _set_router(strategy="Header", header="x-variant", routes=[{"value": "new", "child": "b"}], default="a"),
     "node 'split': router route 'new' names 'b', which is not a child (children: 'a', 'ens')"),
    ("header-default-non-child",
     _set_router(strategy="Header", header="x-variant", routes=[{"value": "new", "child": "ens"}], default="c"),
     "node 'split': router default 'c' is not a child (children: 'a', 'ens')"),
    ("header-no-header", _set_router(strategy="Header", default="a"),
     "node 'split': a Header router needs router.header"),
    ("header-nothing-to-route", _set_router(strategy="Header", header="x-variant"),
     "node 'split': a Header router needs routes (value -> child) or a default"),
    ("header-value-twice",
     _set_router(strategy="Header", header="h", routes=[{"value": "v", "child": "a"}, {"value": "v", "child": "ens"}]),
     "node 'split': router route value 'v' appears twice"),
    ("shadow-primary-non-child", _set_router(strategy="Shadow", primary="b", shadowPercent=10),
     "node 'split': router primary 'b' is not a child (children: 'a', 'ens')"),
    ("shadow-one-child", _both(_children("split", "a"), _set_router(strategy="Shadow", primary="a")),
     "node 'split': a Router needs at least 2 children, got 1"),
    ("bandit-one-child", _both(_children("split", "a"), _set_router(strategy="ThompsonSampling")),
     "node 'split': a Router needs at least 2 children, got 1"),
    # --- Combiner
    ("combiner-one-child", _children("ens", "b"),
     "node 'ens': a Combiner needs at least 2 children, got 1 ('b')"),
    ("weighted-mean-no-weights", _combiner(method="WeightedMean"),
     "node 'ens': WeightedMean needs combiner weights, one per child"),
    ("weighted-mean-missing-child", _combiner(method="WeightedMean", weights=[{"child": "b", "weight": 1}]),
     "node 'ens': combiner weights miss children 'c'"),
    ("weighted-mean-non-child",
     _combiner(method="WeightedMean", weights=[{"child": "b", "weight": 1}, {"child": "c", "weight": 1}, {"child": "a", "weight": 1}]),
     "node 'ens': combiner weight names 'a', which is not a child (children: 'b', 'c')"),
    ("weighted-mean-zero", _combiner(method="WeightedMean", weights=[{"child": "b", "weight": 0}, {"child": "c", "weight": 0}]),
     "node 'ens': combiner weights sum to 0"),
    ("weights-on-mean", _combiner(weights=[{"child": "b", "weight": 1}, {"child": "c", "weight": 1}]),
     "node 'ens': combiner.weights applies to WeightedMean, not Mean"),
    ("quorum-too-big", _combiner(onChildFailure="Skip", quorum=3),
     "node 'ens': combiner quorum 3 exceeds its 2 children"),
    ("quorum-without-skip", _combiner(quorum=1),
     "node 'ens': combiner.quorum applies only with onChildFailure: Skip"),
    ("concat-axis-on-max", _combiner(method="Max", concatAxis=2),
     "node 'ens': combiner.concatAxis applies to Concat, not Max"),
    # --- Transformer
    ("transformer-two-children", _children("pre", "split", "a"),
     "node 'pre': a Transformer needs exactly 1 child, got 2 ('split', 'a')"),
    ("transformer-no-child", _both(_children("pre"), lambda d: d["spec"].update(entrypoint="split")),
     "node 'pre': a Transformer needs exactly 1 child, got 0 (none)"),
    ("transformer-no-steps", lambda d: node(d, "pre").update(transformer={}),
     "node 'pre': a Transformer needs at least one input or output step"),
    ("scaler-no-params", _step(kind="StandardScaler"),
     "node 'pre': transformer.input[0] (StandardScaler): needs mean and scale, or paramsFile"),
    ("scaler-lengths", _step(kind="StandardScaler", mean=[1, 2], scale=[1]),
     "node 'pre': transformer.input[0] (StandardScaler): mean has 2 values but scale has 1"),
    ("scaler-zero-scale", _step(kind="StandardScaler", mean=[1], scale=[0]),
     "scale [0.0] has a 0"),
    ("minmax-no-params", _step(kind="MinMaxScaler", min=[0]),
     "node 'pre': transformer.input[0] (MinMaxScaler): needs min and max, or paramsFile"),
    ("minmax-order", _step(kind="MinMaxScaler", min=[0, 5], max=[1, 4]),
     "(MinMaxScaler): a max is below its min, got min [0.0, 5.0] max [1.0, 4.0]"),
    ("minmax-lengths", _step(kind="MinMaxScaler", min=[0, 5], max=[1]),
     "(MinMaxScaler): min has 2 values but max has 1"),
    ("feature-range-order", _step(kind="MinMaxScaler", paramsFile="p.json", featureRange=[1, 0]),
     "featureRange [1.0, 0.0] must be [low, high] with low < high"),
    ("outlier-no-reference", _step(kind="OutlierDetector"),
     "node 'pre': transformer.input[0] (OutlierDetector): needs referenceFile, or inline mean and scale"),
    ("mahalanobis-no-reference", _step(kind="OutlierDetector", method="mahalanobis", mean=[0], scale=[1]),
     "(OutlierDetector): needs referenceFile; mahalanobis needs the reference's covariance"),
    ("outlier-inline-scale", _step(kind="OutlierDetector", mean=[0, 0], scale=[1, -1]),
     "(OutlierDetector): scale [1.0, -1.0] must be > 0 everywhere"),
    ("drift-no-reference", _step(kind="DriftDetector"),
     "(DriftDetector): needs referenceFile"),
    ("python-no-file", _step(kind="Python", className="Mine"),
     "node 'pre': transformer.input[0] (Python): needs file"),
    ("two-outlier-detectors",
     lambda d: node(d, "pre").update(transformer={
         "input": [{"kind": "OutlierDetector", "referenceFile": "r.npy"}],
         "output": [{"kind": "OutlierDetector", "referenceFile": "r.npy"}]}),
     "node 'pre': 2 OutlierDetector steps would each add OUTLIER_SCORE and IS_OUTLIER; use one"),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_gives_its_message(mutate: Mutation, expected: str) -> None:
    data = copy.deepcopy(GRAPH)
    mutate(data)
    deployment = parse_manifest(data)
    with pytest.raises(SpecError) as caught:
        validate(deployment)
    assert any(expected in p for p in caught.value.problems), "\n".join(caught.value.problems)
    assert str(caught.value).startswith("ModelDeployment 'graph' is invalid")


def test_valid_graph_passes() -> None:
    validate(parse_manifest(GRAPH))


def test_all_problems_are_listed_at_once() -> None:
    data = copy.deepcopy(GRAPH)
    _router(weights=[{"child": "a", "weight": 10}, {"child": "ens", "weight": 10}])(data)
    _model("b", storageUri="")(data)
    _children("ens", "b", "c", "ghost")(data)
    with pytest.raises(SpecError) as caught:
        validate(parse_manifest(data))
    assert caught.value.problems == [
        "node 'split': router weights sum to 20, expected 100",
        "node 'ens': child 'ghost' is not a node; nodes are 'pre', 'split', 'ens', 'a', 'b', 'c'",
        "node 'b': model.storageUri is empty; say where the model folder is",
    ]
    assert "(3 problems)" in str(caught.value)


def test_a_cycle_is_reported_once() -> None:
    data = copy.deepcopy(GRAPH)
    _children("ens", "b", "c", "split")(data)
    with pytest.raises(SpecError) as caught:
        validate(parse_manifest(data))
    assert sum("cycle" in p for p in caught.value.problems) == 1


def test_a_duplicate_definition_is_reported_once() -> None:
    """Two broken definitions of one name do not repeat each other's problems."""
    data = copy.deepcopy(GRAPH)
    _add(data, name="b", type="Model", model={"storageUri": ""})
    _model("b", storageUri="")(data)
    with pytest.raises(SpecError) as caught:
        validate(parse_manifest(data))
    assert len(caught.value.problems) == len(set(caught.value.problems)) == 2


@pytest.mark.parametrize(
    "router",
    [
        {"strategy": "Header", "header": "x-variant", "routes": [{"value": "new", "child": "ens"}], "default": "a"},
        {"strategy": "EpsilonGreedy", "epsilon": 0.2, "feedbackMemory": 100},
        {"strategy": "ThompsonSampling", "failover": True},
        {"strategy": "Shadow", "primary": "a", "shadowPercent": 25},
        {"strategy": "Shadow"},
        {"strategy": "Weighted"},
        {"strategy": "Weighted", "weights": [{"child": "a", "weight": 100}, {"child": "ens", "weight": 0}]},
        {"strategy": "Weighted", "feedbackMemory": 50, "seed": 3},
    ],
    ids=["header", "epsilon-greedy", "thompson", "shadow", "shadow-first-child-primary",
         "weighted-even-split", "weighted-dark-launch", "weighted-with-feedback"],
)  # fmt: skip
def test_every_router_strategy_has_a_valid_form(router: dict[str, Any]) -> None:
    data = copy.deepcopy(GRAPH)
    node(data, "split")["router"] = router
    validate(parse_manifest(data))


@pytest.mark.parametrize(
    "step",
    [
        {"kind": "StandardScaler", "mean": [1.0], "paramsFile": "scale.json"},
        {"kind": "MinMaxScaler", "min": [0, 2], "max": [1, 2], "featureRange": [-1, 1]},
        {"kind": "OutlierDetector", "mean": [0, 1], "scale": [1, 2], "threshold": 2.5},
        {"kind": "OutlierDetector", "method": "mahalanobis", "referenceFile": "ref.npy"},
        {"kind": "DriftDetector", "referenceFile": "ref.csv", "window": 100, "pValueThreshold": 0.01},
        {"kind": "Python", "file": "steps.py"},
    ],
    ids=["scaler-half-from-file", "minmax-constant-feature", "zscore-inline", "mahalanobis", "drift", "python"],
)
def test_every_step_kind_has_a_valid_form(step: dict[str, Any]) -> None:
    data = copy.deepcopy(GRAPH)
    _step(**step)(data)
    validate(parse_manifest(data))


def test_diamonds_are_allowed() -> None:
    """Two parents may share a child: the graph is a DAG, not a tree."""
    data = copy.deepcopy(GRAPH)
    _children("ens", "b", "c", "a")(data)
    validate(parse_manifest(data))


def test_topological_order_puts_children_first() -> None:
    order = topological_order(parse_manifest(GRAPH))
    assert order == ["a", "b", "c", "ens", "split", "pre"]
    for name in order:
        for child in parse_manifest(GRAPH).node(name).children:
            assert order.index(child) < order.index(name)
