"""Typed configuration: the per-model config (``config.yaml``) and the server's settings.

Field names follow Triton's ``config.pbtxt`` (snake_case) so that a Triton user reads a
servegraph config without a dictionary; servegraph's own additions are marked as such.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from servegraph.runtime.protocol.datatype_names import DATATYPES

Backend = Literal["python", "onnxruntime"]
HttpServer = Literal["aiohttp", "uvicorn"]
GrpcServer = Literal["http2", "grpcio"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def v2_datatype(value: str) -> str:
    """A config datatype as its v2 name: Triton's ``TYPE_FP32`` -> ``FP32``, ``TYPE_STRING`` -> ``BYTES``."""
    value = value.removeprefix("TYPE_").upper()
    value = {"STRING": "BYTES"}.get(value, value)
    if value not in DATATYPES:
        raise ValueError(f"data_type must be one of {', '.join(DATATYPES)}, got {value!r}")
    return value


class TensorConfig(_Strict):
    """One input or output: name, datatype and dims (without the batch dim; -1 = variable)."""

    name: str
    data_type: str = Field(description="A v2 datatype such as FP32 or BYTES (TYPE_ prefix allowed).")
    dims: list[int]

    @field_validator("data_type")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        return v2_datatype(value)

    @field_validator("dims")
    @classmethod
    def _valid_dims(cls, value: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError(f"dims must be positive or -1 (variable), got {value}")
        return value


class LatestPolicy(_Strict):
    num_versions: int = Field(1, ge=1)


class SpecificPolicy(_Strict):
    versions: list[int] = Field(min_length=1)


class AllPolicy(_Strict):
    pass


class VersionPolicy(_Strict):
    """Which versions of a model to serve, as in TF Serving and Triton (default: latest 1)."""

    latest: LatestPolicy | None = None
    specific: SpecificPolicy | None = None
    all: AllPolicy | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "specific", "all") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"version_policy takes one of latest, specific, all; got {chosen}")
        if not chosen:
            self.latest = LatestPolicy()
        return self


class QueuePolicy(_Strict):
    """Triton's queue policy: bound and per-request timeout of the batcher's queue."""

    max_queue_size: int = Field(0, ge=0, description="Requests; 0 means the server default.")
    default_timeout_microseconds: int = Field(0, ge=0, description="0 means no default timeout.")
    allow_timeout_override: bool = True
    timeout_action: Literal["REJECT", "DELAY"] = Field(
        "REJECT",
        description="REJECT only: a request whose queue time passes its timeout is refused (504).",
    )

    @field_validator("timeout_action")
    @classmethod
    def _reject_only(cls, value: str) -> str:
        # Accepting DELAY and still rejecting would make a user believe it took effect.
        if value != "REJECT":
            raise ValueError(
                f"timeout_action {value} is not supported: servegraph rejects a request whose queue"
                " time passes its timeout (REJECT); remove timeout_action or set it to REJECT"
            )
        return value


class DynamicBatching(_Strict):
    """Triton's ``dynamic_batching`` block, plus servegraph's choice of scheduler."""

    max_queue_delay_microseconds: int = Field(1000, ge=0)
    preferred_batch_size: list[int] = Field(default_factory=list)
    default_queue_policy: QueuePolicy = Field(default_factory=QueuePolicy)
    max_queue_size: int | None = Field(
        None, ge=1, description="servegraph shortcut for default_queue_policy.max_queue_size."
    )
    scheduler: Literal["cost_aware", "fixed_delay"] = Field(
        "cost_aware",
        description=(
            "servegraph: 'cost_aware' picks batch sizes from the cost curve measured at warm-up"
            " and waits only when waiting pays; 'fixed_delay' behaves like Triton's batcher."
        ),
    )


class OutputFollows(_Strict):
    """An output axis that has the size of a padded input axis, so padding can be cut off."""

    output_axis: int = Field(ge=1)
    input: str
    input_axis: int = Field(ge=1)


class ShapeBuckets(_Strict):
    """servegraph: pad batches (and variable dims) to fixed sizes, as Axon.Serving does.

    A compiled engine then only ever sees the shapes run at warm-up. Padding never reaches
    a caller: rows are cut off by the batcher, and padded axes of outputs are cut back for
    the outputs listed in ``output_follows``.
    """

    batch_sizes: list[int] = Field(default_factory=list)
    dims: dict[str, dict[int, list[int]]] = Field(
        default_factory=dict, description="input name -> axis (>= 1) -> allowed sizes."
    )
    pad_value: float = 0.0
    output_follows: dict[str, list[OutputFollows]] = Field(default_factory=dict)

    @field_validator("batch_sizes")
    @classmethod
    def _sorted_positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError(f"batch_sizes must be >= 1, got {value}")
        return sorted(set(value))

    @field_validator("dims")
    @classmethod
    def _axes(cls, value: dict[str, dict[int, list[int]]]) -> dict[str, dict[int, list[int]]]:
        for name, axes in value.items():
            for axis, sizes in axes.items():
                if axis < 1:
                    raise ValueError(f"shape bucket axis for '{name}' must be >= 1, got {axis}")
                if not sizes or any(s < 1 for s in sizes):
                    raise ValueError(f"shape bucket sizes for '{name}' axis {axis} must be >= 1")
                axes[axis] = sorted(set(sizes))
        return value


class InstanceGroup(_Strict):
    """How many copies of the model run batches concurrently, and where."""

    count: int = Field(1, ge=1)
    kind: Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"] = "KIND_AUTO"
    gpus: list[int] = Field(default_factory=list)


class ModelConfig(_Strict):
    """A model's configuration: ``config.yaml`` or Triton's ``config.pbtxt``."""

    name: str = ""
    backend: Backend
    max_batch_size: int = Field(0, ge=0, description="0 disables batching and the batch dim.")
    input: list[TensorConfig] = Field(default_factory=list)
    output: list[TensorConfig] = Field(default_factory=list)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    dynamic_batching: DynamicBatching | None = None
    shape_buckets: ShapeBuckets | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=lambda: [InstanceGroup()])
    parameters: dict[str, str] = Field(default_factory=dict)
    warmup: bool = Field(True, description="servegraph: run every bucket shape before ready.")
    inline_predict: bool = Field(
        True,
        description="servegraph: run batches on the event loop's thread, without an executor thread's "
        "hand-off, where it buys nothing: batches measured to cost under 30 µs, a lone caller's under 2 ms, "
        "and on one core a CPU-bound model's under 2 ms; false for a model that may block (I/O without a timeout).",
    )
    default_model_filename: str = ""

    @model_validator(mode="after")
    def _coherent(self) -> ModelConfig:
        if self.shape_buckets is not None:
            too_big = [b for b in self.shape_buckets.batch_sizes if b > self.max_batch_size]
            if too_big and self.max_batch_size > 0:
                raise ValueError(
                    f"shape_buckets.batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
                )
        if self.dynamic_batching is not None:
            bad = [p for p in self.dynamic_batching.preferred_batch_size if p > self.max_batch_size]
            if bad:
                raise ValueError(
                    f"preferred_batch_size {bad} exceed max_batch_size {self.max_batch_size}"
                )
        names = [t.name for t in self.input]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, got {names}")
        for group in self.instance_group:
            if not group.gpus:
                continue
            if group.kind == "KIND_CPU":
                raise ValueError(f"instance_group gpus {group.gpus} contradicts kind KIND_CPU")
            if self.backend != "onnxruntime":
                raise ValueError(
                    f"instance_group gpus {group.gpus}: the {self.backend} backend does not place models on"
                    " GPUs; remove gpus (only onnxruntime maps them to the CUDA provider's device_id)"
                )
        if len(self.gpus) > 1:
            raise ValueError(
                f"instance_group gpus {self.gpus}: servegraph places all of a model's instances on one"
                " GPU; name one GPU (or serve one model per GPU)"
            )
        return self

    @property
    def gpus(self) -> list[int]:
        """The GPUs the instance groups name, in order, without repeats."""
        return list(dict.fromkeys(g for group in self.instance_group for g in group.gpus))

    @property
    def instance_count(self) -> int:
        return sum(group.count for group in self.instance_group)

    @property
    def queue_size(self) -> int:
        """Bound of the batcher's queue in requests (server default when unset)."""
        db = self.dynamic_batching
        if db is None:
            return 0
        return db.max_queue_size or db.default_queue_policy.max_queue_size


class ServerSettings(BaseModel):
    """Everything ``servegraph serve`` is told on its command line."""

    model_repository: str = Field("", description="Folder of models to serve (model mode).")
    node_config: str = Field(
        "", description="A graph node's NodeConfig file (node mode, instead of a model repository)."
    )
    child_poll_secs: float = Field(
        1.0, gt=0, description="Node mode: how often the children's readiness is checked."
    )
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    metrics_port: int = Field(8002, ge=0, le=65535)
    ports_file: str = Field(
        "",
        description=(
            "Write the ports bound, as JSON {http, grpc, metrics}, to this file once the"
            " listeners are open (before models load): with port 0 the kernel picks free ports"
            " and a supervisor reads them here instead of guessing."
        ),
    )
    repository_poll_secs: float = Field(
        5.0, ge=0, description="How often to rescan the repository; 0 turns polling off."
    )
    max_request_bytes: int = Field(64 << 20, ge=1024, description="Larger bodies get 413.")
    default_max_queue_size: int = Field(
        1024, ge=1, description="Queue bound for models whose config sets none."
    )
    strict_readiness: bool = Field(
        True, description="Ready only when every model is ready (Triton's default)."
    )
    exit_timeout_secs: float = Field(30.0, ge=0, description="Longest SIGTERM drain.")
    http_server: HttpServer = Field(
        "uvicorn",
        description=(
            "The HTTP server under the v2 REST API: 'uvicorn' (httptools on the server's own"
            " event loop; less CPU per request) or 'aiohttp'. Both answer alike, error pages"
            " included; the metrics port is aiohttp's either way."
        ),
    )
    grpc_server: GrpcServer = Field(
        "http2",
        description=(
            "The server under the v2 gRPC API: 'http2' (servegraph's own HTTP/2 connection on the"
            " server's event loop; about a fifth of grpc.aio's CPU per call) or 'grpcio' (grpc.aio)."
            " Both answer alike."
        ),
    )
    frontend_workers: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Front-end processes sharing the HTTP and gRPC ports (SO_REUSEPORT) and feeding this"
            " process's batcher through shared memory; 0 (the default) serves everything in one process."
        ),
    )
    exit_on_error: bool = Field(
        False,
        description=(
            "Exit with status 1, naming the model and its error, when a model fails to load at"
            " start (Triton's --exit-on-error); the operator sets it so a pod's termination"
            " message carries the reason."
        ),
    )
