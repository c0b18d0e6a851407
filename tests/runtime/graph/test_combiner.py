"""Combiner nodes: every merge method against numpy, Skip with a quorum, Fail naming the child."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from servegraph.runtime.graph.combiner import combine
from servegraph.runtime.server import Server
from tests.conftest import serve_node
from tests.runtime.graph.helpers import (
    affine,
    child,
    grpc_client,
    grpc_input,
    http_client,
    http_input,
    node_config,
    node_extras,
    route_of,
    rows,
)

pytestmark = pytest.mark.usefixtures("transport")

ABC = ["model-a", "model-b", "model-c"]
WEIGHTS = {"model-a": 1.0, "model-b": 2.0, "model-c": 5.0}


def vote_by_hand(labels: list[np.ndarray]) -> np.ndarray:
    """Per element, the most common value; ties to the smallest (a plain loop, no tricks)."""
    stacked = np.stack(labels)
    out = np.empty(stacked.shape[1:], dtype=stacked.dtype)
    for index in np.ndindex(*stacked.shape[1:]):
        column = [stacked[(k, *index)] for k in range(stacked.shape[0])]
        counts = {v: column.count(v) for v in column}
        best = max(counts.values())
        out[index] = min(v for v, c in counts.items() if c == best)
    return out


def expected(method: str, outputs: dict[str, np.ndarray], axis: int = 1) -> np.ndarray:
    arrays = list(outputs.values())
    if method == "Mean":
        return (np.sum(np.stack(arrays).astype(np.float64), axis=0) / len(arrays)).astype(arrays[0].dtype)
    if method == "WeightedMean":
        total = sum(WEIGHTS[c] for c in outputs)
        return (sum(WEIGHTS[c] * a.astype(np.float64) for c, a in outputs.items()) / total).astype(arrays[0].dtype)
    if method == "Max":
        return np.maximum.reduce(arrays)
    if method == "Concat":
        return np.concatenate(arrays, axis=axis)
    if arrays[0].dtype.kind == "f":  # MajorityVote over scores: vote on each child's argmax
        return vote_by_hand([a.argmax(axis=-1) for a in arrays])[..., None].astype(np.int64)
    return vote_by_hand(arrays)


@pytest.mark.parametrize("method", ["Mean", "WeightedMean", "Max", "Concat", "MajorityVote"])
def test_combine_matches_numpy(method: str) -> None:
    rng = np.random.default_rng(1)
    scores = {c: rng.normal(size=(6, 5)).astype(np.float32) for c in ABC}
    labels = {c: rng.integers(0, 3, size=(6, 1)) for c in ABC}
    merged = combine(method, {c: {"S": scores[c], "L": labels[c]} for c in ABC}, WEIGHTS, concat_axis=1)
    np.testing.assert_allclose(merged["S"], expected(method, scores), rtol=1e-6)
    if method in ("Mean", "WeightedMean"):
        np.testing.assert_allclose(merged["L"], expected(method, {c: a.astype(np.float64) for c, a in labels.items()}))
        assert merged["L"].dtype == np.float64 and merged["S"].dtype == np.float32
    else:
        np.testing.assert_array_equal(merged["L"], expected(method, labels))
    if method == "MajorityVote":
        assert merged["S"].dtype == np.int64 and merged["S"].shape == (6, 1)


def test_combine_ties_and_bytes_and_misfits() -> None:
    # Two children, disagreeing everywhere: ties go to the smallest label.
    assert combine("MajorityVote", {"a": {"L": np.array([[2], [0]])}, "b": {"L": np.array([[1], [3]])}})["L"].tolist() == [[1], [0]]
    votes = combine(
        "MajorityVote",
        {c: {"T": np.array([b, b"y"], dtype=object)} for c, b in (("a", b"x"), ("b", b"z"), ("c", b"x"))},
    )
    assert votes["T"].tolist() == [b"x", b"y"]
    with pytest.raises(ValueError, match="different shapes across children"):
        combine("Mean", {"a": {"T": np.zeros((2, 3))}, "b": {"T": np.zeros((2, 4))}})
    with pytest.raises(ValueError, match="child 'b' did not return output 'T'"):
        combine("Max", {"a": {"T": np.zeros(2)}, "b": {"U": np.zeros(2)}})
    with pytest.raises(ValueError, match="no axis 2 to concatenate on"):
        combine("Concat", {"a": {"T": np.zeros((2, 3))}, "b": {"T": np.zeros((2, 3))}}, concat_axis=2)
    with pytest.raises(ValueError, match="holds BYTES"):
        combine("Mean", {"a": {"T": np.array([b"x"], dtype=object)}, "b": {"T": np.array([b"y"], dtype=object)}})


def combiner(models: Server, method: str, children: list[dict[str, Any]] | None = None, **settings: Any) -> dict[str, Any]:
    children = children or [child(c, models) for c in ABC]
    if method == "WeightedMean":
        settings.setdefault("weights", {c["name"]: WEIGHTS.get(c["name"], 1.0) for c in children})
    return node_config("ens", "combiner", children, method=method, **settings)


@pytest.mark.parametrize("method", ["Mean", "WeightedMean", "Max", "Concat", "MajorityVote"])
async def test_combiner_node_matches_numpy(models: Server, method: str) -> None:
    """Three children answer x, x + 100 and 2x + 1; the node's answer is their merge by hand."""
    async with serve_node(combiner(models, method)) as node, grpc_client(node) as client:
        x = rows(5, seed=3)
        result = await client.infer("ens", [grpc_input(x)], request_id="c-1")
        assert result.get_response().id == "c-1"
        assert route_of(result) == "model-a+model-b+model-c"
        outputs = {c: affine(c, x) for c in ABC}
        labels = {c: o.argmax(axis=-1)[:, None].astype(np.int64) for c, o in outputs.items()}
        np.testing.assert_allclose(result.as_numpy("OUTPUT"), expected(method, outputs), rtol=1e-6)
        if method in ("Mean", "WeightedMean"):
            np.testing.assert_allclose(result.as_numpy("LABEL"), expected(method, {c: v.astype(np.float64) for c, v in labels.items()}))
        else:
            np.testing.assert_array_equal(result.as_numpy("LABEL"), expected(method, labels))
        meta = await client.get_model_metadata("ens", as_json=True)
        shapes = {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in meta["outputs"]}
        if method == "MajorityVote":
            assert shapes["OUTPUT"] == ("INT64", [-1, 1])
        elif method == "Concat":
            assert shapes["OUTPUT"] == ("FP32", [-1, -1])
        else:
            assert shapes["OUTPUT"] == ("FP32", [-1, 4])


async def test_skip_answers_with_a_quorum_when_a_child_is_down(models: Server) -> None:
    children = [child("model-a", models), child("gone", address="127.0.0.1:1", model="model-a"), child("model-c", models)]
    async with serve_node(combiner(models, "Mean", children, on_child_failure="Skip", quorum=2)) as node:
        async with http_client(node) as client:
            x = rows(2)
            result = await client.infer("ens", [http_input(x)])
            np.testing.assert_allclose(result.as_numpy("OUTPUT"), (affine("model-a", x) + affine("model-c", x)) / 2, rtol=1e-6)
            assert result.get_response()["parameters"]["servegraph.skipped"] == "gone"
            assert route_of(result) == "model-a+model-c"
        extras = await node_extras(node, "ens")
        assert extras["skipped"] == {"model-a": 0, "gone": 1, "model-c": 0}
    async with serve_node(combiner(models, "Mean", children, on_child_failure="Skip", quorum=3)) as node:
        async with grpc_client(node) as client:
            with pytest.raises(InferenceServerException) as info:
                await client.infer("ens", [grpc_input(rows(2))])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            message = info.value.message()
            assert "node 'ens' got answers from 2 of 3 children, fewer than its quorum of 3" in message
            assert "child 'gone' of node 'ens' is unavailable" in message


async def test_fail_fails_on_the_first_failure_naming_the_child(models: Server) -> None:
    children = [child("model-a", models), child("gone", address="127.0.0.1:1", model="model-a")]
    async with serve_node(combiner(models, "Max", children)) as node, http_client(node) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("ens", [http_input(rows(1))])
        assert info.value.status() == "503"
        assert info.value.message().startswith("child 'gone' of node 'ens' is unavailable")
    async with serve_node(combiner(models, "Max", [child(c, models) for c in ("model-a", "model-b")])) as node:
        async with http_client(node) as client:
            x = rows(1)
            result = await client.infer("ens", [http_input(x)])  # and with both children up, it answers
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), affine("model-b", x))


async def test_bad_combiner_configs_fail_at_start(models: Server) -> None:
    with pytest.raises(ValueError, match="needs a weight for each child"):
        async with serve_node(combiner(models, "WeightedMean", weights={"model-a": 1})):
            pass
    with pytest.raises(ValueError, match="quorum 4 but only 3 children"):
        async with serve_node(combiner(models, "Mean", on_child_failure="Skip", quorum=4)):
            pass
