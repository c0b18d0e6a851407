"""The spec models: camelCase manifests in, the same out; parse errors a user can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from servegraph.operator.manifest import load_manifest, parse_manifest
from servegraph.operator.spec import Datatype, ModelDeployment
from servegraph.operator.validation import SpecError, validate
from servegraph.runtime.protocol.datatypes import V2_TO_NUMPY
from tests.operator.conftest import GRAPH, MANIFESTS, node

EXAMPLES = sorted(MANIFESTS.glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_manifests_load_and_round_trip(path: Path) -> None:
    deployment = load_manifest(path)
    again = parse_manifest(json.loads(json.dumps(deployment.to_manifest())))
    assert again == deployment
    validate(again)


def test_camel_case_fields_reach_the_models() -> None:
    deployment = load_manifest(MANIFESTS / "ab.yaml")
    assert deployment.metadata.namespace == "serving"
    assert deployment.metadata.labels == {"team": "ml"}
    split = deployment.node("split")
    assert split.timeout_ms == 2000
    assert split.router is not None and split.router.failover is True
    current = deployment.node("current").model
    assert current is not None
    assert current.model_name == "add_sub_v1"
    assert current.version_policy is not None and current.version_policy.specific is not None
    assert current.batching is not None
    assert current.batching.max_queue_delay_microseconds == 200
    assert current.batching.preferred_batch_sizes == [4, 8]
    assert current.batching.shape_buckets is not None
    assert current.batching.shape_buckets.batch_sizes == [1, 4, 8]
    assert current.resources is not None
    assert (current.resources.cpu, current.resources.memory, current.resources.gpu) == ("2", "1Gi", 1)
    assert current.node_selector == {"nvidia.com/gpu.present": "true"}
    assert current.tolerations[0].operator == "Exists"
    assert current.replicas == 3


def test_defaults() -> None:
    deployment = parse_manifest(GRAPH)
    assert deployment.metadata.namespace == "default"
    a = deployment.node("a")
    assert a.v2_model_name == "a"
    assert a.model is not None and a.model.replicas == 1 and a.model.format is None


def test_snake_case_names_also_work_from_python() -> None:
    """populate_by_name: code may build a spec with the Python names."""
    data: dict[str, Any] = json.loads(json.dumps(GRAPH))
    node(data, "a")["model"] = {"storage_uri": "models/a", "model_name": "alpha"}
    assert parse_manifest(data).node("a").v2_model_name == "alpha"


def test_multi_document_manifest_picks_the_model_deployment() -> None:
    assert load_manifest(MANIFESTS / "chain.yaml").metadata.name == "scored"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "found 0 (kinds: ['ConfigMap'])"),
        (yaml.safe_dump(GRAPH) + "---\n" + yaml.safe_dump(GRAPH), "found 2"),
        ("spec: [unclosed", "is not valid YAML"),
    ],
    ids=["none", "two", "bad-yaml"],
)
def test_manifest_file_without_exactly_one_deployment(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_manifest(path)
    assert expected in str(caught.value)


def test_load_manifest_validates() -> None:
    data = json.loads(json.dumps(GRAPH))
    data["spec"]["entrypoint"] = "nowhere"
    with pytest.raises(SpecError, match="spec.entrypoint 'nowhere' is not a node"):
        validate(parse_manifest(data))


# ----------------------------------------------------------------------------- parse errors


def _mutated(change: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(GRAPH))
    change(data)
    return data


PARSE_ERRORS = [
    (
        "misspelt-key",
        lambda d: node(d, "a")["model"].update(storageURI="x"),
        "node 'a': model.storageURI: unknown field; did you mean 'storageUri'?",
    ),
    (
        "unknown-key-lists-the-known",
        lambda d: node(d, "split")["router"].update(zzz=1),
        "node 'split': router.zzz: unknown field; expected one of strategy, weights",
    ),
    (
        "bad-enum",
        lambda d: node(d, "split")["router"].update(strategy="Random"),
        "node 'split': router.strategy: Input should be 'Weighted', 'Header', 'EpsilonGreedy', "
        "'ThompsonSampling' or 'Shadow', got 'Random'",
    ),
    (
        "bad-type",
        lambda d: node(d, "split").update(type="Switch"),
        "node 'split': type: Input should be 'Model', 'Router', 'Combiner' or 'Transformer', got 'Switch'",
    ),
    (
        "node-name-not-dns",
        lambda d: node(d, "a").update(name="Model_A"),
        "node 'Model_A': name: String should match pattern",
    ),
    (
        "negative-weight",
        lambda d: node(d, "split")["router"]["weights"][0].update(weight=-5),
        "node 'split': router.weights[0].weight: Input should be greater than or equal to 0, got -5",
    ),
    (
        "shadow-percent-range",
        lambda d: node(d, "split")["router"].update(shadowPercent=150),
        "node 'split': router.shadowPercent: Input should be less than or equal to 100, got 150",
    ),
    (
        "missing-type",
        lambda d: node(d, "b").pop("type"),
        "node 'b': type: Field required",
    ),
    (
        "missing-entrypoint",
        lambda d: d["spec"].pop("entrypoint"),
        "spec.entrypoint: Field required",
    ),
    (
        "wrong-api-version",
        lambda d: d.update(apiVersion="servegraph.io/v1"),
        "apiVersion: Input should be 'servegraph.io/v1alpha1', got 'servegraph.io/v1'",
    ),
    (
        "datatype",
        lambda d: node(d, "a").update(signature={"inputs": [{"name": "X", "datatype": "FLOAT", "shape": [-1]}]}),
        "node 'a': signature.inputs[0].datatype: Input should be",
    ),
    (
        "shape-below-minus-one",
        lambda d: node(d, "a").update(signature={"inputs": [{"name": "X", "datatype": "FP32", "shape": [-2]}]}),
        "node 'a': signature.inputs[0].shape[0]: Input should be greater than or equal to -1, got -2",
    ),
    (
        "cpu-quantity",
        lambda d: node(d, "a")["model"].update(resources={"cpu": "two"}),
        "node 'a': model.resources.cpu: String should match pattern",
    ),
    (
        "node-without-name",
        lambda d: node(d, "c").pop("name"),
        "spec.nodes[5]: name: Field required",
    ),
]


@pytest.mark.parametrize(("change", "expected"), [p[1:] for p in PARSE_ERRORS], ids=[p[0] for p in PARSE_ERRORS])
def test_parse_errors_name_the_node_and_field(change: Any, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_manifest(_mutated(change))
    assert any(expected in p for p in caught.value.problems), caught.value.problems
    assert "ModelDeployment 'graph' is invalid" in str(caught.value) or expected.startswith("apiVersion")


def test_every_parse_error_is_reported_at_once() -> None:
    def change(d: dict[str, Any]) -> None:
        node(d, "a")["model"]["replicas"] = 0
        node(d, "b")["model"]["instances"] = 0

    with pytest.raises(SpecError) as caught:
        parse_manifest(_mutated(change))
    assert len(caught.value.problems) == 2
    assert "(2 problems)" in str(caught.value)


def test_metadata_from_the_api_server_is_ignored() -> None:
    """Objects the operator receives carry uid, resourceVersion, ...: not a user's typo."""
    data = _mutated(lambda d: d["metadata"].update(uid="1234", resourceVersion="7", generation=2))
    assert parse_manifest(data).metadata.name == "graph"


# ----------------------------------------------------------------------------- CRD-friendly


def _schema() -> dict[str, Any]:
    return ModelDeployment.model_json_schema(by_alias=True)


def test_schema_has_no_recursion() -> None:
    definitions = _schema()["$defs"]

    def refs(value: Any) -> set[str]:
        if isinstance(value, dict):
            found = {value["$ref"].rsplit("/", 1)[-1]} if "$ref" in value else set()
            return found.union(*(refs(v) for v in value.values()))
        if isinstance(value, list):
            return set().union(*(refs(v) for v in value))
        return set()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for ref in refs(definitions[start]):
            if ref == target or (ref not in seen and reaches(ref, target, seen | {ref})):
                return True
        return False

    assert [name for name in definitions if reaches(name, name, set())] == []


def test_schema_has_no_free_form_unions() -> None:
    """The only unions are ``X | None``, which a CRD writes as an optional field."""

    def unions(value: Any, path: str) -> list[str]:
        found: list[str] = []
        if isinstance(value, dict):
            for key in ("anyOf", "oneOf"):
                if key in value:
                    kinds = [v for v in value[key] if v != {"type": "null"}]
                    if len(kinds) != 1:
                        found.append(f"{path}: {value[key]}")
            for key, sub in value.items():
                found += unions(sub, f"{path}.{key}")
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                found += unions(sub, f"{path}[{index}]")
        return found

    assert unions(_schema(), "") == []


def test_every_model_and_field_is_described() -> None:
    schema = _schema()
    undocumented = [name for name, d in schema["$defs"].items() if not d.get("description")]
    for name, definition in [("ModelDeployment", schema), *schema["$defs"].items()]:
        for field, prop in definition.get("properties", {}).items():
            if not prop.get("description"):
                undocumented.append(f"{name}.{field}")
    assert undocumented == []


def test_datatypes_are_the_runtimes() -> None:
    assert set(get_args(Datatype)) == set(V2_TO_NUMPY)
