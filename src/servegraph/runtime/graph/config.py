"""The per-node config: what one graph node process is told, rendered by the control plane.

This is the contract between the control plane (operator/, which renders it from a
ModelDeployment into a ConfigMap or a local file) and the data plane (runtime/graph/,
which serves it). Field names are snake_case; values are plain data so the file can be
YAML or JSON.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSignature(_Strict):
    """A tensor a node accepts or produces; ``shape`` includes the batch dim (-1 = any)."""

    name: str
    datatype: str
    shape: list[int]


class ChildEndpoint(_Strict):
    """How a node reaches one child: any v2 server (servegraph, Triton, MLServer)."""

    name: str = Field(description="The child's node name in the graph.")
    model: str = Field(description="The v2 model name to call on the child.")
    version: str = ""
    grpc: str = Field(description="host:port of the child's gRPC endpoint.")
    http: str = Field(
        "",
        description="host:port of the child's HTTP endpoint: when set, inference calls go there"
        " (HTTP/1.1, binary tensors: servegraph, Triton), else to the gRPC endpoint.",
    )


class RouterSettings(_Strict):
    """Pick one child per request (or, for Shadow, serve from one and copy to others)."""

    strategy: Literal["Weighted", "Header", "EpsilonGreedy", "ThompsonSampling", "Shadow"]
    weights: dict[str, float] = Field(default_factory=dict, description="Weighted: child -> percent.")
    header: str = Field("", description="Header: request header or parameter to route on.")
    routes: dict[str, str] = Field(default_factory=dict, description="Header: value -> child.")
    default: str = Field("", description="Header: child when no route matches ('' = 400).")
    epsilon: float = Field(0.1, ge=0, le=1, description="EpsilonGreedy: exploration rate.")
    primary: str = Field("", description="Shadow: the child whose answer is returned.")
    shadow_percent: float = Field(100, ge=0, le=100, description="Shadow: share of traffic copied.")
    failover: bool = Field(False, description="Try another child when the chosen one is down.")
    feedback_memory: int = Field(10000, ge=1, description="Recent request ids remembered for feedback.")
    state_file: str = Field("", description="Where bandit state persists ('' = memory only).")
    state_config_map: str = Field(
        "", description="In a cluster: the ConfigMap every replica shares bandit state through (wins over state_file)."
    )
    seed: int | None = None


class CombinerSettings(_Strict):
    """Fan out to every child and merge their outputs."""

    method: Literal["Mean", "WeightedMean", "MajorityVote", "Concat", "Max"]
    weights: dict[str, float] = Field(default_factory=dict, description="WeightedMean: child -> weight.")
    on_child_failure: Literal["Fail", "Skip"] = "Fail"
    quorum: int = Field(1, ge=1, description="Skip: fewest successful children to answer.")
    concat_axis: int = Field(1, ge=1)


class TransformStep(_Strict):
    """One transformation of the named tensors ('' = every floating-point tensor)."""

    kind: Literal["StandardScaler", "MinMaxScaler", "OutlierDetector", "DriftDetector", "Python"]
    tensors: list[str] = Field(default_factory=list)
    # StandardScaler: (x - mean) / scale; MinMaxScaler: (x - min) / (max - min) * range.
    mean: list[float] | None = None
    scale: list[float] | None = None
    min: list[float] | None = None
    max: list[float] | None = None
    feature_range: tuple[float, float] = (0.0, 1.0)
    params_file: str = Field("", description="JSON/YAML/.npz file with the parameters above.")
    # OutlierDetector / DriftDetector: reference data (rows x features) in a .npy/.npz/.csv file.
    reference_file: str = ""
    method: Literal["zscore", "mahalanobis"] = "zscore"
    threshold: float = Field(3.0, gt=0)
    window: int = Field(500, ge=10, description="DriftDetector: sliding window of recent rows.")
    p_value_threshold: float = Field(0.05, gt=0, lt=1)
    # Python: a user class with transform_input / transform_output.
    file: str = ""
    class_name: str = ""


class TransformerSettings(_Strict):
    input: list[TransformStep] = Field(default_factory=list)
    output: list[TransformStep] = Field(default_factory=list)


class NodeConfig(_Strict):
    """Everything one non-model node process needs."""

    node: str = Field(description="This node's name in the graph.")
    deployment: str = Field(description="The ModelDeployment's name.")
    role: Literal["router", "combiner", "transformer"]
    model_name: str = Field(description="The v2 model name this node answers to.")
    children: list[ChildEndpoint]
    router: RouterSettings | None = None
    combiner: CombinerSettings | None = None
    transformer: TransformerSettings | None = None
    inputs: list[TensorSignature] = Field(default_factory=list)
    outputs: list[TensorSignature] = Field(default_factory=list)
    default_timeout_ms: int = Field(0, ge=0, description="Deadline when the caller sets none (0 = none).")
    forward_headers: list[str] = Field(
        default_factory=list,
        description="Request headers passed on to children as gRPC metadata: the ones Header"
        " routers below this node route on (the control plane fills it in).",
    )

    @model_validator(mode="after")
    def _settings_for_role(self) -> NodeConfig:
        if getattr(self, self.role) is None:
            raise ValueError(f"node '{self.node}' has role {self.role} but no '{self.role}' settings")
        if not self.children:
            raise ValueError(f"node '{self.node}' ({self.role}) needs at least one child")
        return self
