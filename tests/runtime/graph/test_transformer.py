"""Transformer nodes: scalers, outlier flags, drift p-values and Python steps, against numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tritonclient.utils import InferenceServerException

from servegraph.runtime.server import Server
from tests.conftest import serve_node
from tests.runtime.graph.helpers import (
    affine,
    child,
    grpc_client,
    grpc_input,
    http_client,
    http_input,
    metric,
    metrics_text,
    node_config,
    node_extras,
    route_of,
    rows,
)

pytestmark = pytest.mark.usefixtures("transport")

MEAN = np.array([1.0, 2.0, 3.0, 4.0])
STD = np.array([0.5, 1.0, 2.0, 3.0])


def reference(n: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(MEAN, STD, size=(n, 4))


def transformer(models: Server, model: str, **stages: Any) -> dict[str, Any]:
    return node_config("tr", "transformer", [child(model, models)], **stages)


async def test_scaler_model_outlier_detector_chain_matches_numpy(models: Server, tmp_path: Path) -> None:
    """StandardScaler (params file) -> 2x + 1 -> OutlierDetector (z-score on the outputs)."""
    ref = reference()
    mean, scale = ref.mean(axis=0), ref.std(axis=0)
    (tmp_path / "scaler.json").write_text(json.dumps({"mean": mean.tolist(), "scale": scale.tolist()}))
    # The detector's reference: what the model answers for scaled reference rows.
    ref_out = 2 * (ref - mean) / scale + 1
    np.save(tmp_path / "outputs.npy", ref_out)
    config = transformer(
        models,
        "model-c",
        input=[{"kind": "StandardScaler", "tensors": ["INPUT"], "params_file": str(tmp_path / "scaler.json")}],
        output=[
            {"kind": "OutlierDetector", "tensors": ["OUTPUT"], "reference_file": str(tmp_path / "outputs.npy"), "threshold": 2.5}
        ],
    )
    async with serve_node(config) as node, grpc_client(node) as client:
        x = reference(40, seed=9).astype(np.float32)
        result = await client.infer("tr", [grpc_input(x)])
        scaled = ((x.astype(np.float64) - mean) / scale).astype(np.float32)
        y = affine("model-c", scaled)
        np.testing.assert_allclose(result.as_numpy("OUTPUT"), y, rtol=1e-5, atol=1e-5)
        score = np.abs((y - ref_out.mean(axis=0)) / ref_out.std(axis=0)).max(axis=1)
        np.testing.assert_allclose(result.as_numpy("OUTLIER_SCORE")[:, 0], score, rtol=1e-4)
        np.testing.assert_array_equal(result.as_numpy("IS_OUTLIER")[:, 0], score > 2.5)
        assert result.as_numpy("OUTLIER_SCORE").dtype == np.float32 and result.as_numpy("IS_OUTLIER").dtype == np.bool_
        assert route_of(result) == "model-c"
        meta = await client.get_model_metadata("tr", as_json=True)
        assert [o["name"] for o in meta["outputs"]] == ["OUTPUT", "LABEL", "OUTLIER_SCORE", "IS_OUTLIER"]


async def test_outlier_flags_on_planted_outliers(models: Server, tmp_path: Path) -> None:
    """Mahalanobis on the input stage: the planted rows and only they are flagged, and the
    child still gets the inputs unchanged."""
    ref = reference()
    np.savez(tmp_path / "ref.npz", reference=ref)
    config = transformer(
        models,
        "model-a",
        input=[{"kind": "OutlierDetector", "method": "mahalanobis", "reference_file": str(tmp_path / "ref.npz"), "threshold": 5}],
    )
    x = reference(20, seed=4)
    planted = [3, 11]
    x[planted] = MEAN + 10 * STD * np.array([1, -1, 1, -1])
    x = x.astype(np.float32)
    async with serve_node(config) as node, http_client(node) as client:
        result = await client.infer("tr", [http_input(x)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x)
        flags = result.as_numpy("IS_OUTLIER")[:, 0]
        assert np.flatnonzero(flags).tolist() == planted
        centred = x.astype(np.float64) - ref.mean(axis=0)
        inverse = np.linalg.pinv(np.cov(ref, rowvar=False))
        distance = np.sqrt(np.array([d @ inverse @ d for d in centred]))
        np.testing.assert_allclose(result.as_numpy("OUTLIER_SCORE")[:, 0], distance, rtol=1e-4)
        steps = (await node_extras(node, "tr"))["steps"]["input"]
        assert steps[0]["rows"] == 20 and steps[0]["outliers"] == 2
        text = await metrics_text(node)
        assert metric(text, "servegraph_outlier_rows_total", node="tr", verdict="outlier") == 2


async def test_drift_p_value_falls_when_the_inputs_shift(models: Server, tmp_path: Path) -> None:
    ref = np.random.default_rng(0).normal(size=(500, 4))
    np.savetxt(tmp_path / "ref.csv", ref, delimiter=",", header="f0,f1,f2,f3", comments="")
    config = transformer(
        models,
        "model-a",
        input=[{"kind": "DriftDetector", "reference_file": str(tmp_path / "ref.csv"), "window": 100}],
    )
    async with serve_node(config) as node, grpc_client(node) as client:
        same = np.random.default_rng(1).normal(size=(100, 4)).astype(np.float32)
        for batch in np.split(same, 10):
            await client.infer("tr", [grpc_input(batch)])
        before = (await node_extras(node, "tr"))["steps"]["input"][0]
        shifted = (np.random.default_rng(2).normal(size=(100, 4)) + 1.0).astype(np.float32)
        for batch in np.split(shifted, 10):
            await client.infer("tr", [grpc_input(batch)])
        after = (await node_extras(node, "tr"))["steps"]["input"][0]
        assert before["rows_in_window"] == after["rows_in_window"] == 100 and after["rows_seen"] == 200
        assert before["min_p_value"] > 0.01 and not before["drift_detected"]
        assert after["min_p_value"] < 1e-6 and after["drift_detected"]
        assert set(after["p_values"]) == {"INPUT[0]", "INPUT[1]", "INPUT[2]", "INPUT[3]"}
        assert all(after["p_values"][f] < before["p_values"][f] for f in after["p_values"])
        text = await metrics_text(node)
        assert metric(text, "servegraph_drift_p_value", node="tr", feature="INPUT[2]") == pytest.approx(after["p_values"]["INPUT[2]"])
        assert metric(text, "servegraph_drift_detected", node="tr") == 1.0


PYTHON_STEP = '''
import numpy as np


class Doubler:
    def transform_input(self, inputs):
        return {"INPUT": inputs["INPUT"] * 2}

    def transform_output(self, outputs):
        return {**outputs, "NEG": -outputs["OUTPUT"]}
'''


async def test_python_steps_and_a_min_max_scaler_from_yaml(models: Server, tmp_path: Path) -> None:
    (tmp_path / "doubler.py").write_text(PYTHON_STEP)
    (tmp_path / "minmax.yaml").write_text(yaml.safe_dump({"min": [0.0], "max": [10.0]}))
    config = transformer(
        models,
        "model-b",
        input=[{"kind": "Python", "file": str(tmp_path / "doubler.py")}],
        output=[
            {"kind": "MinMaxScaler", "tensors": ["OUTPUT"], "params_file": str(tmp_path / "minmax.yaml"), "feature_range": [-1, 1]},
            {"kind": "Python", "file": str(tmp_path / "doubler.py"), "class_name": "Doubler"},
        ],
    )
    async with serve_node(config) as node, grpc_client(node) as client:
        x = rows(3)
        result = await client.infer("tr", [grpc_input(x)])
        y = affine("model-b", x * 2)
        expected = ((y.astype(np.float64) - 0.0) / 10.0 * 2 - 1).astype(np.float32)
        np.testing.assert_allclose(result.as_numpy("OUTPUT"), expected, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("NEG"), -expected, rtol=1e-6)


async def test_a_step_that_does_not_fit_the_request_is_400_naming_it(models: Server) -> None:
    config = transformer(models, "model-a", input=[{"kind": "StandardScaler", "mean": [0, 0, 0], "scale": [1, 1, 1]}])
    async with serve_node(config) as node, grpc_client(node) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("tr", [grpc_input(rows(1))])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input step 1 (StandardScaler) of node 'tr': tensor 'INPUT' has shape [1, 4]" in info.value.message()


def test_bad_transform_configs_fail_at_start(models: Server, tmp_path: Path) -> None:
    from servegraph.runtime.graph.config import NodeConfig
    from servegraph.runtime.graph.hosting import build_node
    from servegraph.runtime.metrics import ServerMetrics

    def build(**stages: Any) -> None:
        build_node(NodeConfig.model_validate(transformer(models, "model-a", **stages)), ServerMetrics())

    with pytest.raises(ValueError, match=r"input step 1 \(StandardScaler\) of node 'tr' has a scale of 0"):
        build(input=[{"kind": "StandardScaler", "mean": [0.0], "scale": [0.0]}])
    with pytest.raises(ValueError, match=r"output step 1 \(DriftDetector\) of node 'tr': DriftDetector needs reference_file"):
        build(output=[{"kind": "DriftDetector"}])
    (tmp_path / "only_in.py").write_text("class T:\n    def transform_input(self, x):\n        return x\n")
    with pytest.raises(ValueError, match=r"has no transform_output\(\) for the output stage"):
        build(output=[{"kind": "Python", "file": str(tmp_path / "only_in.py")}])
    with pytest.raises(ValueError, match="cannot read reference data"):
        build(input=[{"kind": "OutlierDetector", "reference_file": str(tmp_path / "missing.npy")}])
