"""Triton's ``config.pbtxt`` in and out, through the protobuf classes tritonclient ships.

``parse_pbtxt`` lets a Triton user point servegraph at an existing repository;
``to_proto`` renders any config as Triton's ModelConfig for the config endpoints.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc

from servegraph.runtime.config import ModelConfig

_PLATFORM_TO_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "onnxruntime": "onnxruntime",
    "python": "python",
}


def _tensor(t: Any) -> dict[str, Any]:
    return {
        "name": t.name,
        "data_type": mc.DataType.Name(t.data_type),
        "dims": list(t.dims),
    }


_SUPPORTED: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "name", "platform", "backend", "max_batch_size", "input", "output", "parameters",
            "default_model_filename", "version_policy", "dynamic_batching", "instance_group",
        }
    ),
    "input": frozenset({"name", "data_type", "dims"}),
    "output": frozenset({"name", "data_type", "dims"}),
    "dynamic_batching": frozenset({"max_queue_delay_microseconds", "preferred_batch_size", "default_queue_policy"}),
    "dynamic_batching.default_queue_policy": frozenset(
        {"max_queue_size", "default_timeout_microseconds", "allow_timeout_override", "timeout_action"}
    ),
    "instance_group": frozenset({"name", "count", "kind", "gpus"}),
    "version_policy": frozenset({"latest", "specific", "all"}),
}  # fmt: skip
"""The ModelConfig fields servegraph runs, per message path; any other field a config.pbtxt
sets (sequence_batching, ensemble_scheduling, model_warmup, optimization, ...) is refused by
name rather than silently dropped, so nobody believes a setting took effect."""


def _unsupported(message: Any, path: str = "") -> list[str]:
    """Paths of the fields set in ``message`` that servegraph does not run."""
    found: list[str] = []
    allowed = _SUPPORTED.get(path)
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if allowed is not None and field.name not in allowed:
            found.append(where)
        elif where in _SUPPORTED:
            items = [value] if isinstance(value, Message) else list(value)
            for item in items:
                found += [f for f in _unsupported(item, where) if f not in found]
    return found


def parse_pbtxt(text: str, default_name: str) -> ModelConfig:
    """Translate a Triton ``config.pbtxt`` into servegraph's ModelConfig; refuse, by name, the
    settings servegraph would otherwise ignore."""
    proto = text_format.Parse(text, mc.ModelConfig())
    unsupported = _unsupported(proto)
    if unsupported:
        raise ValueError(
            f"config.pbtxt of model '{proto.name or default_name}' sets {', '.join(unsupported)}, "
            "which servegraph does not run; remove "
            + ("it" if len(unsupported) == 1 else "them")
            + " (or serve this model with Triton)"
        )
    backend = _PLATFORM_TO_BACKEND.get(proto.backend or proto.platform)
    if backend is None:
        raise ValueError(
            f"unsupported Triton backend/platform {proto.backend or proto.platform!r}; "
            "servegraph serves 'python' and 'onnxruntime'"
        )
    data: dict[str, Any] = {
        "name": proto.name or default_name,
        "backend": backend,
        "max_batch_size": proto.max_batch_size,
        "input": [_tensor(t) for t in proto.input],
        "output": [_tensor(t) for t in proto.output],
        "parameters": {k: v.string_value for k, v in proto.parameters.items()},
        "default_model_filename": proto.default_model_filename,
    }
    policy = proto.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "latest":
        data["version_policy"] = {"latest": {"num_versions": policy.latest.num_versions or 1}}
    elif kind == "specific":
        data["version_policy"] = {"specific": {"versions": list(policy.specific.versions)}}
    elif kind == "all":
        data["version_policy"] = {"all": {}}
    if proto.HasField("dynamic_batching"):
        db = proto.dynamic_batching
        queue = db.default_queue_policy
        data["dynamic_batching"] = {
            "max_queue_delay_microseconds": db.max_queue_delay_microseconds,
            "preferred_batch_size": list(db.preferred_batch_size),
            "default_queue_policy": {
                "max_queue_size": queue.max_queue_size,
                "default_timeout_microseconds": queue.default_timeout_microseconds,
                "allow_timeout_override": queue.allow_timeout_override,
                "timeout_action": mc.ModelQueuePolicy.TimeoutAction.Name(queue.timeout_action),
            },
        }
    if proto.instance_group:
        data["instance_group"] = [
            {
                "count": g.count or 1,
                "kind": mc.ModelInstanceGroup.Kind.Name(g.kind),
                "gpus": list(g.gpus),
            }
            for g in proto.instance_group
        ]
    return ModelConfig.model_validate(data)


def to_proto(config: ModelConfig) -> mc.ModelConfig:
    """Render a config as Triton's ModelConfig message (for GET .../config and gRPC)."""
    proto = mc.ModelConfig(
        name=config.name,
        backend=config.backend,
        platform="onnxruntime_onnx" if config.backend == "onnxruntime" else "",
        max_batch_size=config.max_batch_size,
        default_model_filename=config.default_model_filename,
    )
    for src, dst in ((config.input, proto.input), (config.output, proto.output)):
        for t in src:
            dst.add(name=t.name, data_type=mc.DataType.Value(f"TYPE_{'STRING' if t.data_type == 'BYTES' else t.data_type}"), dims=t.dims)
    vp = config.version_policy
    if vp.specific is not None:
        proto.version_policy.specific.versions.extend(vp.specific.versions)
    elif vp.all is not None:
        proto.version_policy.all.SetInParent()
    elif vp.latest is not None:
        proto.version_policy.latest.num_versions = vp.latest.num_versions
    if config.dynamic_batching is not None:
        db = config.dynamic_batching
        proto.dynamic_batching.max_queue_delay_microseconds = db.max_queue_delay_microseconds
        proto.dynamic_batching.preferred_batch_size.extend(db.preferred_batch_size)
        q = proto.dynamic_batching.default_queue_policy
        q.max_queue_size = config.queue_size
        q.default_timeout_microseconds = db.default_queue_policy.default_timeout_microseconds
        q.allow_timeout_override = db.default_queue_policy.allow_timeout_override
        q.timeout_action = mc.ModelQueuePolicy.TimeoutAction.Value(db.default_queue_policy.timeout_action)
    for g in config.instance_group:
        proto.instance_group.add(count=g.count, kind=mc.ModelInstanceGroup.Kind.Value(g.kind), gpus=g.gpus)
    for key, value in config.parameters.items():
        proto.parameters[key].string_value = value
    return proto


def to_json(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP endpoint returns it (protobuf JSON, snake_case)."""
    data: dict[str, Any] = json_format.MessageToDict(to_proto(config), preserving_proto_field_name=True)
    return data
