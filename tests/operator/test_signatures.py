"""Tensor signatures: where a parent and a child both declare theirs, every edge must fit.

Each message names the edge (or node) and the tensor, and shows both sides.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from servegraph.operator.manifest import parse_manifest
from servegraph.operator.validation import SpecError, validate


def _t(name: str, datatype: str = "FP32", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape if shape is not None else [-1, 4]}


def _sig(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inputs": inputs, "outputs": outputs}


IO = _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 2])])


def _deployment(entry: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "servegraph.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sig"},
        "spec": {"entrypoint": entry, "nodes": nodes},
    }


def _model(name: str, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"name": name, "type": "Model", "model": {"storageUri": f"models/{name}"}}
    if signature is not None:
        node["signature"] = copy.deepcopy(signature)
    return node


def _router(signature: dict[str, Any] = IO) -> dict[str, Any]:
    return {
        "name": "router",
        "type": "Router",
        "children": ["model-a", "model-b"],
        "router": {"strategy": "Weighted", "weights": [{"child": "model-a", "weight": 50}, {"child": "model-b", "weight": 50}]},
        "signature": copy.deepcopy(signature),
    }


def _problems(data: dict[str, Any]) -> list[str]:
    try:
        validate(parse_manifest(data))
    except SpecError as error:
        return error.problems
    return []


def test_matching_signatures_pass() -> None:
    data = _deployment("router", [_router(), _model("model-a", IO), _model("model-b", IO)])
    assert _problems(data) == []


def test_any_size_matches_a_fixed_size() -> None:
    loose = _sig([_t("INPUT", shape=[-1, -1])], [_t("OUTPUT", shape=[-1, -1])])
    data = _deployment("router", [_router(), _model("model-a", loose), _model("model-b", IO)])
    assert _problems(data) == []


def test_undeclared_signatures_are_not_checked() -> None:
    data = _deployment("router", [_router(), _model("model-a"), _model("model-b", _sig([_t("OTHER")], []))])
    assert _problems(data) == [
        "edge 'router' -> 'model-b': the child needs input 'OTHER' (FP32 [-1, 4]), which the parent does not send",
        "edge 'router' -> 'model-b': the parent sends input 'INPUT', which the child does not accept",
    ]


ROUTER_EDGES = [
    (
        "datatype",
        _sig([_t("INPUT", "FP32")], [_t("OUTPUT", shape=[-1, 2])]),
        _sig([_t("INPUT", "FP64")], [_t("OUTPUT", shape=[-1, 2])]),
        "edge 'router' -> 'model-b': input 'INPUT' is FP64 [-1, 4] on the parent but the child accepts FP32 [-1, 4]",
    ),
    (
        "shape",
        _sig([_t("INPUT", shape=[-1, 8])], [_t("OUTPUT", shape=[-1, 2])]),
        IO,
        "edge 'router' -> 'model-b': input 'INPUT' is FP32 [-1, 4] on the parent but the child accepts FP32 [-1, 8]",
    ),
    (
        "rank",
        _sig([_t("INPUT", shape=[-1, 4, 1])], [_t("OUTPUT", shape=[-1, 2])]),
        IO,
        "input 'INPUT' is FP32 [-1, 4] on the parent but the child accepts FP32 [-1, 4, 1]",
    ),
    (
        "child-needs-more",
        _sig([_t("INPUT"), _t("MASK", "BOOL")], [_t("OUTPUT", shape=[-1, 2])]),
        IO,
        "edge 'router' -> 'model-b': the child needs input 'MASK' (BOOL [-1, 4]), which the parent does not send",
    ),
    (
        "output-datatype",
        _sig([_t("INPUT")], [_t("OUTPUT", "INT64", [-1, 2])]),
        IO,
        "edge 'router' -> 'model-b': output 'OUTPUT' is INT64 [-1, 2] from the child but the parent returns FP32 [-1, 2]",
    ),
    (
        "output-missing",
        _sig([_t("INPUT")], [_t("SCORES", shape=[-1, 2])]),
        IO,
        "edge 'router' -> 'model-b': the parent returns output 'OUTPUT', which the child does not produce",
    ),
    (
        "output-extra",
        _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 2]), _t("DEBUG")]),
        IO,
        "edge 'router' -> 'model-b': the child produces output 'DEBUG', which the parent does not declare",
    ),
]


@pytest.mark.parametrize(
    ("child", "parent", "expected"), [c[1:] for c in ROUTER_EDGES], ids=[c[0] for c in ROUTER_EDGES]
)
def test_router_edges(child: dict[str, Any], parent: dict[str, Any], expected: str) -> None:
    data = _deployment("router", [_router(parent), _model("model-a", parent), _model("model-b", child)])
    problems = _problems(data)
    assert any(expected in p for p in problems), problems
    assert all("model-a" not in p for p in problems), problems


def test_duplicate_tensor_names() -> None:
    data = _deployment("router", [_router(_sig([_t("INPUT"), _t("INPUT")], [])), _model("model-a"), _model("model-b")])
    assert "node 'router': signature input 'INPUT' is declared 2 times" in _problems(data)


# ----------------------------------------------------------------------------- Combiner


def _combiner(method: str, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "name": "ens",
        "type": "Combiner",
        "children": ["m1", "m2", "m3"],
        "combiner": {"method": method},
    }
    if signature is not None:
        node["signature"] = signature
    return node


@pytest.mark.parametrize("method", ["Mean", "WeightedMean", "Max", "MajorityVote", "Concat"])
def test_combiner_children_must_return_the_same_outputs(method: str) -> None:
    other = _sig([_t("INPUT")], [_t("OUTPUT", "FP16", [-1, 2])])
    missing = _sig([_t("INPUT")], [_t("LOGITS", shape=[-1, 2])])
    combiner = _combiner(method)
    if method == "WeightedMean":
        combiner["combiner"]["weights"] = [{"child": c, "weight": 1} for c in ("m1", "m2", "m3")]
    data = _deployment("ens", [combiner, _model("m1", IO), _model("m2", other), _model("m3", missing)])
    assert _problems(data) == [
        f"node 'ens': {method} needs the same outputs from every child, but output 'OUTPUT'"
        " is FP32 [-1, 2] from 'm1' and FP16 [-1, 2] from 'm2'",
        f"node 'ens': {method} needs the same outputs from every child, but 'm3' has no output 'OUTPUT' that 'm1' has",
        f"node 'ens': {method} needs the same outputs from every child, but 'm3' has output 'LOGITS' that 'm1' has not",
    ]


def test_concat_children_may_differ_only_on_its_axis() -> None:
    wide = _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 5])])
    concat = _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 9])])
    data = _deployment("ens", [_combiner("Concat", concat), _model("m1", IO), _model("m2", wide), _model("m3")])
    assert _problems(data) == []
    three_d = _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 2, 3])])
    other_axis = _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 2, 4])])
    combiner = _combiner("Concat", _sig([_t("INPUT")], [_t("OUTPUT", shape=[-1, 4, 3])]))
    data = _deployment("ens", [combiner, _model("m1", three_d), _model("m2", other_axis), _model("m3")])
    assert _problems(data) == [
        "edge 'ens' -> 'm2': output 'OUTPUT' is FP32 [-1, -1, 4] from the child after Concat but the parent returns FP32 [-1, 4, 3]",
        "node 'ens': Concat needs the same outputs from every child, but output 'OUTPUT' is FP32 [-1, 2, 3] from 'm1' and FP32 [-1, 2, 4] from 'm2'",
    ]


@pytest.mark.parametrize(
    ("method", "child_output", "merged"),
    [
        ("Mean", _t("OUTPUT", "INT32", [-1, 2]), _t("OUTPUT", "FP64", [-1, 2])),
        ("Mean", _t("OUTPUT", "FP16", [-1, 2]), _t("OUTPUT", "FP16", [-1, 2])),
        ("MajorityVote", _t("OUTPUT", "FP32", [-1, 10]), _t("OUTPUT", "INT64", [-1, 1])),
        ("MajorityVote", _t("OUTPUT", "INT64", [-1, 1]), _t("OUTPUT", "INT64", [-1, 1])),
        ("Max", _t("OUTPUT", "INT8", [-1, 2]), _t("OUTPUT", "INT8", [-1, 2])),
    ],
    ids=["mean-of-integers", "mean-of-floats", "vote-over-scores", "vote-over-labels", "max"],
)
def test_combiner_outputs_follow_the_runtimes_merge(
    method: str, child_output: dict[str, Any], merged: dict[str, Any]
) -> None:
    child = _sig([_t("INPUT")], [child_output])
    combiner = _combiner(method, _sig([_t("INPUT")], [merged]))
    combiner["children"] = ["m1", "m2"]
    assert _problems(_deployment("ens", [combiner, _model("m1", child), _model("m2", child)])) == []
    combiner["signature"]["outputs"] = [child_output | {"datatype": "BOOL"}]
    assert _problems(_deployment("ens", [combiner, _model("m1", child), _model("m2", child)])) == [
        f"edge 'ens' -> '{c}': output 'OUTPUT' is {merged['datatype']} {merged['shape']} from the child"
        f" after {method} but the parent returns BOOL {child_output['shape']}"
        for c in ("m1", "m2")
    ]


def test_combiner_passes_its_input_to_every_child() -> None:
    data = _deployment(
        "ens",
        [_combiner("Mean", IO), _model("m1", IO), _model("m2", _sig([_t("INPUT", "INT8")], [])), _model("m3", IO)],
    )
    assert _problems(data) == [
        "edge 'ens' -> 'm2': input 'INPUT' is FP32 [-1, 4] on the parent but the child accepts INT8 [-1, 4]"
    ]


# ----------------------------------------------------------------------------- Transformer


OUTLIER_IO = _sig(
    [_t("INPUT")],
    [_t("OUTPUT", shape=[-1, 2]), _t("OUTLIER_SCORE", "FP32", [-1, 1]), _t("IS_OUTLIER", "BOOL", [-1, 1])],
)


def _transformer(steps: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "t",
        "type": "Transformer",
        "children": ["m"],
        "transformer": steps,
        "signature": copy.deepcopy(signature),
    }


SCALER = {"kind": "StandardScaler", "paramsFile": "s.json"}
DETECTOR = {"kind": "OutlierDetector", "referenceFile": "r.npy"}


def test_outlier_detector_adds_its_outputs() -> None:
    data = _deployment("t", [_transformer({"input": [SCALER], "output": [DETECTOR]}, OUTLIER_IO), _model("m", IO)])
    assert _problems(data) == []


def test_outlier_outputs_must_be_declared_as_the_detector_makes_them() -> None:
    wrong = copy.deepcopy(OUTLIER_IO)
    wrong["outputs"] = [_t("OUTPUT", shape=[-1, 2]), _t("IS_OUTLIER", "INT32", [-1, 1])]
    data = _deployment("t", [_transformer({"output": [DETECTOR]}, wrong), _model("m", IO)])
    assert _problems(data) == [
        "node 't': its OutlierDetector adds output 'OUTLIER_SCORE' (FP32 [-1, 1]), which the node's signature does not declare",
        "node 't': output 'IS_OUTLIER' is declared INT32 [-1, 1] but the OutlierDetector produces BOOL [-1, 1]",
    ]


def test_transformer_without_detector_passes_outputs_through() -> None:
    data = _deployment("t", [_transformer({"input": [SCALER]}, OUTLIER_IO), _model("m", IO)])
    assert _problems(data) == [
        "edge 't' -> 'm': the parent returns output 'OUTLIER_SCORE', which the child does not produce",
        "edge 't' -> 'm': the parent returns output 'IS_OUTLIER', which the child does not produce",
    ]


def test_transformer_input_edge() -> None:
    data = _deployment("t", [_transformer({"input": [SCALER]}, _sig([_t("INPUT", "FP64")], [])), _model("m", IO)])
    assert _problems(data) == [
        "edge 't' -> 'm': input 'INPUT' is FP64 [-1, 4] on the parent but the child accepts FP32 [-1, 4]"
    ]


def test_steps_name_tensors_that_exist() -> None:
    steps = {"input": [{**SCALER, "tensors": ["INPUTS"]}], "output": [{**DETECTOR, "tensors": ["OUT"]}]}
    data = _deployment("t", [_transformer(steps, OUTLIER_IO), _model("m", IO)])
    assert _problems(data) == [
        "node 't': transformer.input[0] (StandardScaler) names tensor 'INPUTS', which is not among the node's inputs ('INPUT')",
        "node 't': transformer.output[0] (OutlierDetector) names tensor 'OUT', which child 'm' does not produce ('OUTPUT')",
    ]


def test_a_scaler_turns_the_integer_tensors_it_names_into_fp32() -> None:
    ints = _sig([_t("INPUT", "INT32")], [_t("OUTPUT", shape=[-1, 2])])
    named = {**SCALER, "tensors": ["INPUT"]}
    data = _deployment("t", [_transformer({"input": [named]}, ints), _model("m", IO)])
    assert _problems(data) == []
    data = _deployment("t", [_transformer({"input": [named]}, ints), _model("m", ints)])
    assert _problems(data) == [
        "edge 't' -> 'm': input 'INPUT' is FP32 [-1, 4] on the parent after the input steps"
        " but the child accepts INT32 [-1, 4]"
    ]
    unnamed = _deployment("t", [_transformer({"input": [SCALER]}, ints), _model("m", ints)])
    assert _problems(unnamed) == [], "without names a scaler touches floating tensors only"


def test_output_steps_change_what_the_transformer_returns() -> None:
    int_out = _sig([_t("INPUT")], [_t("OUTPUT", "INT64", [-1, 2])])
    scaled = {**SCALER, "tensors": ["OUTPUT"]}
    data = _deployment("t", [_transformer({"output": [scaled]}, int_out), _model("m", int_out)])
    assert _problems(data) == [
        "edge 't' -> 'm': output 'OUTPUT' is FP32 [-1, 2] from the child after the output steps"
        " but the parent returns INT64 [-1, 2]"
    ]


def test_a_python_step_may_change_anything() -> None:
    python = {"kind": "Python", "file": "t.py"}
    renamed = _sig([_t("TEXT", "BYTES", [-1])], [_t("LABEL", "BYTES", [-1])])
    data = _deployment("t", [_transformer({"input": [python], "output": [python]}, renamed), _model("m", IO)])
    assert _problems(data) == []


def test_chain_of_transformers() -> None:
    """transformer -> transformer -> model: each edge checked on its own declarations."""
    outer = _transformer({"input": [SCALER]}, OUTLIER_IO) | {"name": "outer", "children": ["t"]}
    inner = _transformer({"output": [DETECTOR]}, OUTLIER_IO)
    bad_model = _sig([_t("INPUT")], [_t("OUTPUT", "FP64", [-1, 2])])
    data = _deployment("outer", [outer, inner, _model("m", bad_model)])
    assert _problems(data) == [
        "edge 't' -> 'm': output 'OUTPUT' is FP64 [-1, 2] from the child but the parent returns FP32 [-1, 2]"
    ]
