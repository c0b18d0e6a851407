"""Settings servegraph would accept and then ignore are refused, naming the setting, or done.

Covered: config.pbtxt blocks servegraph does not run (sequence_batching, ensemble_scheduling,
model_warmup, optimization, nested fields such as an input's reshape); ``timeout_action:
DELAY`` (config.yaml and config.pbtxt); instance-group ``gpus`` (refused where nothing would
place the model, mapped to the CUDA provider's device_id for onnxruntime); a refused config
shows as the model's reason in the repository index.

Left out: running on a real GPU (no GPU on CI; the provider list is what is checked).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from servegraph.runtime.backends import onnx
from servegraph.runtime.config import ModelConfig
from servegraph.runtime.triton_config import parse_pbtxt, to_proto
from tests.conftest import ServerProcess, http_request, wait_until

BASE = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("sequence_batching { max_sequence_idle_microseconds: 5000000 }", "sequence_batching"),
        ('ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }', "ensemble_scheduling"),
        ('model_warmup [ { name: "w" batch_size: 1 } ]', "model_warmup"),
        ("optimization { priority: PRIORITY_MAX }", "optimization"),
        ("dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels"),
        ("instance_group [ { count: 1 kind: KIND_CPU passive: true } ]", "instance_group.passive"),
        ("response_cache { enable: true }", "response_cache"),
    ],
)
def test_a_pbtxt_block_servegraph_does_not_run_is_refused_by_name(extra: str, named: str) -> None:
    with pytest.raises(ValueError, match=rf"config.pbtxt of model 'm' sets {named}, which servegraph does not run"):
        parse_pbtxt(BASE + extra, "m")


def test_nested_unsupported_fields_are_all_named() -> None:
    text = BASE.replace("dims: [ 4 ] } ]\noutput", "dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\noutput")
    with pytest.raises(ValueError, match=r"sets input.reshape, sequence_batching, which .* remove them"):
        parse_pbtxt(text + "sequence_batching { }", "m")


def test_what_servegraph_runs_still_parses() -> None:
    config = parse_pbtxt(
        BASE
        + "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [ 4 ]"
        + " default_queue_policy { max_queue_size: 3 timeout_action: REJECT } }\n"
        + "instance_group [ { name: \"g\" count: 2 kind: KIND_CPU } ]\n"
        + "version_policy { latest { num_versions: 1 } }\n"
        + 'parameters { key: "k" value: { string_value: "v" } }',
        "m",
    )
    assert config.instance_count == 2 and config.queue_size == 3
    assert to_proto(config).dynamic_batching.default_queue_policy.timeout_action == 0  # REJECT


def yaml_config(**extra: Any) -> dict[str, Any]:
    return {
        "backend": "python",
        "max_batch_size": 8,
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "FP32", "dims": [4]}],
        **extra,
    }


def test_timeout_action_delay_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="timeout_action DELAY is not supported"):
        ModelConfig.model_validate(yaml_config(dynamic_batching={"default_queue_policy": {"timeout_action": "DELAY"}}))
    with pytest.raises(ValueError, match="timeout_action DELAY is not supported"):
        parse_pbtxt(BASE + "dynamic_batching { default_queue_policy { timeout_action: DELAY } }", "m")


@pytest.mark.parametrize(
    ("backend", "groups", "message"),
    [
        ("python", [{"kind": "KIND_GPU", "gpus": [0]}], "the python backend does not place models on GPUs"),
        ("onnxruntime", [{"kind": "KIND_CPU", "gpus": [0]}], "contradicts kind KIND_CPU"),
        ("onnxruntime", [{"kind": "KIND_GPU", "gpus": [0, 1]}], "places all of a model's instances on one GPU"),
        ("onnxruntime", [{"kind": "KIND_GPU", "gpus": [0]}, {"kind": "KIND_GPU", "gpus": [1]}], "on one GPU"),
    ],
)
def test_gpus_nothing_would_honour_are_refused(backend: str, groups: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(yaml_config(backend=backend, instance_group=groups))


def test_gpus_map_to_the_cuda_providers_device_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in module, not onnxruntime itself: importing it, then failing a config load in a
    # worker thread (the next test), trips CPython 3.11.7's "AST constructor recursion depth
    # mismatch" when pytest later rewrites a module (seen on main too).
    ort = types.ModuleType("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", ort)
    config = ModelConfig.model_validate(yaml_config(backend="onnxruntime", instance_group=[{"kind": "KIND_GPU", "gpus": [3]}]))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"], raising=False)
    assert onnx._providers(config) == [("CUDAExecutionProvider", {"device_id": "3"}), "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match=r"instance_group gpus \[3\] asks for a GPU, but onnxruntime here has no CUDA"):
        onnx._providers(config)


def test_a_refused_config_is_the_models_reason_in_the_index(repo: Path) -> None:
    folder = repo / "m"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(BASE + "sequence_batching { }")
    (folder / "1" / "model.py").write_text("class M:\n    def predict(self, inputs):\n        return inputs\n")
    # A subprocess, not in-process: see test_gpus_map_to_the_cuda_providers_device_id.
    server = ServerProcess(repo, "--repository-poll-secs", "0")
    try:
        rows: list[dict[str, Any]] = []

        def indexed() -> bool:
            nonlocal rows
            try:
                reply = http_request(server.http_url, "POST", "/v2/repository/index", b"{}")
            except OSError:
                return False
            rows = json.loads(reply.body) if reply.status == 200 else []
            return bool(rows) and rows[0].get("state") == "UNAVAILABLE"

        wait_until(indexed, timeout=60, what="the model's row in the index")
    finally:
        server.stop()
    assert "sets sequence_batching, which servegraph does not run" in rows[0]["reason"]
