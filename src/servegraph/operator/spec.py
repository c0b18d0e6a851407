"""The ModelDeployment spec: what a user writes, as pydantic models.

The same models serve ``servegraph run`` (a local file) and the operator (a custom
resource), and later generate the CRD's schema, so they stay CRD-friendly: the graph is a
flat list of named nodes (a structural schema cannot recurse), each node says its ``type``
and fills the one block of that type (no free-form unions), enums are ``Literal``s, and
every model and field carries a description for the CRD's documentation.

Single-field rules (ranges, patterns, enums) live here, where the CRD schema can express
them; rules that span fields or nodes live in ``validation.py``. Nothing here imports
kopf, kubernetes or the runtime's serving code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

API_VERSION = "servegraph.io/v1alpha1"
KIND = "ModelDeployment"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""RFC 1123 label: node names become parts of Service and Deployment names."""

NodeType = Literal["Model", "Router", "Combiner", "Transformer"]
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]
"""The Open Inference Protocol datatypes the runtime serves (BF16 has no numpy twin)."""

BANDITS = ("EpsilonGreedy", "ThompsonSampling")

MAX_NODES = 64
MAX_CHILDREN = 16
MAX_STEPS = 16
MAX_BATCH_SIZES = 32
"""Bounds on the lists the CRD's CEL rules walk: the API server prices a rule by them."""

NodeName = Annotated[str, Field(min_length=1, max_length=63)]
"""A reference to a node by name (a child, a weight's or route's target)."""

QUANTITY = r"^[+]?[0-9]+(\.[0-9]+)?([eE][0-9]+|[mkMGTPE]|[KMGTPE]i)?$"
"""A Kubernetes resource quantity: 500m, 2, 1.5, 1Gi, 512M."""


class _Spec(BaseModel):
    """Base of every spec model: camelCase in YAML, snake_case in Python, no unknown keys."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        protected_namespaces=(),
    )


# ----------------------------------------------------------------------------- tensors


class TensorSignature(_Spec):
    """A tensor a node accepts or produces (the runtime's ``TensorSignature`` shape)."""

    name: str = Field(min_length=1, description="Tensor name, as on the v2 wire.")
    datatype: Datatype = Field(description="Open Inference Protocol datatype, e.g. FP32.")
    shape: list[Annotated[int, Field(ge=-1)]] = Field(
        description="Dims including the batch dim; -1 matches any size."
    )


class Signature(_Spec):
    """What a node accepts and returns; used to check that every edge of the graph fits."""

    inputs: list[TensorSignature] = Field(default_factory=list, description="Tensors the node accepts.")
    outputs: list[TensorSignature] = Field(default_factory=list, description="Tensors the node returns.")


# ----------------------------------------------------------------------------- Model


class LatestPolicy(_Spec):
    """Serve the newest N versions."""

    num_versions: int = Field(1, ge=1, description="How many of the newest versions to serve.")


class SpecificPolicy(_Spec):
    """Serve exactly the listed versions."""

    versions: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="Version numbers (folder names) to serve."
    )


class AllPolicy(_Spec):
    """Serve every version found in the model folder."""


class VersionPolicy(_Spec):
    """Which versions to serve, as in TF Serving and Triton: set exactly one of the three."""

    latest: LatestPolicy | None = Field(None, description="The newest N versions.")
    specific: SpecificPolicy | None = Field(None, description="Exactly these versions.")
    all: AllPolicy | None = Field(None, description="Every version.")


class BucketDim(_Spec):
    """Pad one axis of one input up to the nearest of a fixed set of sizes."""

    input: str = Field(min_length=1, description="Input tensor name.")
    axis: int = Field(ge=1, description="Axis to pad (>= 1; axis 0 is the batch, see batchSizes).")
    sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="Allowed sizes.")


class ShapeBuckets(_Spec):
    """Pad batches (and variable dims) to fixed sizes so a compiled engine sees static shapes."""

    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        max_length=MAX_BATCH_SIZES,
        description="Batch sizes a batch is padded up to.",
    )
    dims: list[BucketDim] = Field(default_factory=list, description="Per-input axis buckets.")


class Batching(_Spec):
    """Dynamic batching; setting this block turns it on. Unset fields keep the model config's."""

    max_batch_size: int | None = Field(None, ge=1, description="Largest batch the model runs.")
    max_queue_delay_microseconds: int | None = Field(
        None, ge=0, description="Longest wait for a batch to fill."
    )
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        max_length=MAX_BATCH_SIZES,
        description="Batch sizes to aim for.",
    )
    max_queue_size: int | None = Field(
        None, ge=1, description="Queue bound in requests; more are rejected with 503."
    )
    timeout_microseconds: int | None = Field(
        None, ge=0, description="Default time a request may wait in the queue (0 = no limit)."
    )
    scheduler: Literal["cost_aware", "fixed_delay"] | None = Field(
        None,
        description="cost_aware waits only when waiting pays; fixed_delay behaves like Triton.",
    )
    shape_buckets: ShapeBuckets | None = Field(None, description="Fixed shapes to pad batches to.")


class Resources(_Spec):
    """What one replica of a model asks for (requests and limits alike)."""

    cpu: str | None = Field(
        None,
        pattern=QUANTITY,
        description="CPU quantity, e.g. 500m or 2.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    memory: str | None = Field(
        None,
        pattern=QUANTITY,
        description="Memory quantity, e.g. 512Mi or 2Gi.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    gpu: int = Field(0, ge=0, description="Number of nvidia.com/gpu devices.")

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number_to_quantity(cls, value: Any) -> Any:
        # YAML reads `cpu: 2` as an int; Kubernetes accepts both spellings.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


class Toleration(_Spec):
    """A Kubernetes toleration, field for field."""

    key: str | None = Field(None, description="Taint key; empty with Exists matches every taint.")
    operator: Literal["Equal", "Exists"] | None = Field(None, description="Equal (default) or Exists.")
    value: str | None = Field(None, description="Taint value, for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; empty means all."
    )
    toleration_seconds: int | None = Field(
        None, description="NoExecute: how long the pod stays bound after the taint appears."
    )


class Autoscaling(_Spec):
    """A HorizontalPodAutoscaler for the node's Deployment (Kubernetes only)."""

    min_replicas: int = Field(1, ge=1, description="Fewest pods the autoscaler keeps.")
    max_replicas: int = Field(ge=1, description="Most pods the autoscaler may run.")
    target_cpu_utilization_percentage: int | None = Field(
        None, ge=1, le=1000, description="Average CPU use (percent of requests) to aim for."
    )
    target_concurrency: int | None = Field(
        None,
        ge=1,
        description=(
            "Average in-flight requests per pod to aim for (the pods metric"
            " servegraph_inflight_requests; needs a custom-metrics adapter)."
        ),
    )


class ModelSpec(_Spec):
    """A model served by the dynamic-batching runtime from a Triton-layout model folder."""

    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        max_length=128,
        description="The v2 model name; defaults to the node's name.",
    )
    storage_uri: str = Field(
        "",
        max_length=2048,
        description=(
            "Model folder (config + numbered version folders): file://, a path relative to"
            " the manifest, http(s)://, s3://, gs:// or pvc://."
        ),
    )
    format: Literal["python", "onnxruntime"] | None = Field(
        None, description="Backend; optional when the model folder has a config."
    )
    version_policy: VersionPolicy | None = Field(
        None, description="Which versions to serve; defaults to the model config's."
    )
    batching: Batching | None = Field(None, description="Dynamic batching settings.")
    instances: int | None = Field(
        None, ge=1, description="Model instances per replica running batches concurrently."
    )
    replicas: int = Field(1, ge=1, description="Pods serving this model (Kubernetes only).")
    resources: Resources | None = Field(None, description="CPU, memory and GPUs per replica.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Kubernetes node selector for the model's pods."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Kubernetes tolerations for the model's pods."
    )
    storage_secret: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=253,
        description=(
            "Secret whose keys become the model puller's environment (AWS_ACCESS_KEY_ID,"
            " GOOGLE_APPLICATION_CREDENTIALS, ...); only the init container sees it."
        ),
    )
    autoscaling: Autoscaling | None = Field(
        None, description="Scale the model's pods with load; replaces replicas."
    )


# ----------------------------------------------------------------------------- Router


class ChildWeight(_Spec):
    """A weight given to one child: ``{child: a, weight: 70}``."""

    child: NodeName = Field(description="Child node name.")
    weight: float = Field(ge=0, description="Router: percent of traffic; Combiner: relative weight.")


class HeaderRoute(_Spec):
    """Send requests whose header (or parameter) has this value to this child."""

    value: str = Field(max_length=256, description="Header or parameter value to match.")
    child: NodeName = Field(description="Child node name.")


class RouterSpec(_Spec):
    """Pick one child per request; fields apply only to the strategy named beside them."""

    strategy: Literal["Weighted", "Header", "EpsilonGreedy", "ThompsonSampling", "Shadow"] = Field(
        description=(
            "How the child is picked: Weighted (random, by weights), Header (by a header's"
            " value), EpsilonGreedy or ThompsonSampling (bandits learning from feedback),"
            " Shadow (answer from primary, copy to the others)."
        )
    )
    weights: list[ChildWeight] | None = Field(
        None,
        max_length=MAX_CHILDREN,
        description=(
            "Weighted: [{child, weight}], percent of traffic per child, summing to 100"
            " (unset: even split)."
        ),
    )
    header: str | None = Field(None, description="Header: request header or parameter to route on.")
    routes: list[HeaderRoute] | None = Field(
        None, max_length=64, description="Header: [{value, child}], the child for each header value."
    )
    default: NodeName | None = Field(None, description="Header: child when no route matches (else 400).")
    epsilon: float | None = Field(None, ge=0, le=1, description="EpsilonGreedy: exploration rate.")
    primary: NodeName | None = Field(
        None, description="Shadow: the child whose answer is returned (default: the first child)."
    )
    shadow_percent: float | None = Field(
        None, ge=0, le=100, description="Shadow: percent of requests copied to the other children."
    )
    failover: bool | None = Field(None, description="Try another child when the chosen one is down.")
    feedback_memory: int | None = Field(
        None, ge=1, description="Recent request ids remembered, so feedback can name its arm."
    )
    seed: int | None = Field(None, description="Random seed, for reproducible splits in tests.")


# ----------------------------------------------------------------------------- Combiner


class CombinerSpec(_Spec):
    """Send every request to all children and merge their outputs."""

    method: Literal["Mean", "WeightedMean", "MajorityVote", "Concat", "Max"] = Field(
        description=(
            "How children's outputs are merged, element-wise: Mean, WeightedMean (needs weights),"
            " Max; MajorityVote (most common label; float scores vote by argmax); Concat (along"
            " concatAxis)."
        )
    )
    weights: list[ChildWeight] | None = Field(
        None,
        max_length=MAX_CHILDREN,
        description="WeightedMean: [{child, weight}], one per child (normalised by their sum).",
    )
    on_child_failure: Literal["Fail", "Skip"] | None = Field(
        None, description="Fail the request (default) or leave a failing child out."
    )
    quorum: int | None = Field(
        None, ge=1, description="Skip: fewest successful children needed to answer."
    )
    concat_axis: int | None = Field(None, ge=1, description="Concat: axis to join outputs on.")


# ----------------------------------------------------------------------------- Transformer


class Step(_Spec):
    """One transformation of the named tensors (no tensors = every floating-point tensor)."""

    kind: Literal["StandardScaler", "MinMaxScaler", "OutlierDetector", "DriftDetector", "Python"] = (
        Field(
            description=(
                "StandardScaler: (x - mean) / scale; MinMaxScaler: min..max onto featureRange;"
                " OutlierDetector: adds outputs OUTLIER_SCORE and IS_OUTLIER; DriftDetector:"
                " KS test of a window against reference data, as metrics; Python: the user's"
                " class with transform_input/transform_output(dict) -> dict."
            )
        )
    )
    tensors: list[str] = Field(
        default_factory=list, description="Tensors to transform (none: every floating-point tensor)."
    )
    mean: list[float] | None = Field(None, description="StandardScaler: per-feature mean.")
    scale: list[float] | None = Field(None, description="StandardScaler: per-feature scale.")
    min: list[float] | None = Field(None, description="MinMaxScaler: per-feature minimum.")
    max: list[float] | None = Field(None, description="MinMaxScaler: per-feature maximum.")
    feature_range: list[float] | None = Field(
        None, min_length=2, max_length=2, description="MinMaxScaler: [low, high] to scale into (default [0, 1])."
    )
    params_file: str | None = Field(
        None, description="Scalers: JSON/YAML/.npz file with the parameters, relative to the manifest."
    )
    reference_file: str | None = Field(
        None, description="Detectors: reference data (rows x features) as .npy/.npz/.csv."
    )
    method: Literal["zscore", "mahalanobis"] | None = Field(
        None,
        description=(
            "OutlierDetector: zscore (largest |x - mean| / std of a row; default) or"
            " mahalanobis (needs referenceFile)."
        ),
    )
    threshold: float | None = Field(
        None, gt=0, description="OutlierDetector: a row scoring above this is an outlier (default 3)."
    )
    window: int | None = Field(
        None, ge=10, description="DriftDetector: sliding window of recent rows (default 500)."
    )
    p_value_threshold: float | None = Field(
        None, gt=0, lt=1, description="DriftDetector: p-value below which drift is reported (default 0.05)."
    )
    file: str | None = Field(None, description="Python: the user's .py file, relative to the manifest.")
    class_name: str | None = Field(
        None, description="Python: class in the file to use (default: the only one with a transform method)."
    )


class TransformerSpec(_Spec):
    """Change a request before its one child sees it, and/or the child's answer."""

    input: list[Step] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="Steps applied to the request, in order: [{kind, tensors, ...}].",
    )
    output: list[Step] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description="Steps applied to the child's answer, in order: [{kind, tensors, ...}].",
    )


# ----------------------------------------------------------------------------- graph


class Node(_Spec):
    """One node of the graph; ``type`` says which one block (model, router, ...) it fills."""

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Node name (DNS-1123 label).")
    type: NodeType = Field(description="Model, Router, Combiner or Transformer.")
    children: list[NodeName] = Field(
        default_factory=list,
        max_length=MAX_CHILDREN,
        description=(
            "Names of the child nodes: none for a Model, 1 for a Transformer, 2 or more for a"
            " Router or Combiner."
        ),
    )
    model: ModelSpec | None = Field(None, description="Settings of a Model node.")
    router: RouterSpec | None = Field(None, description="Settings of a Router node.")
    combiner: CombinerSpec | None = Field(None, description="Settings of a Combiner node.")
    transformer: TransformerSpec | None = Field(None, description="Settings of a Transformer node.")
    signature: Signature | None = Field(
        None, description="Tensors the node accepts and returns; edges are checked where declared."
    )
    timeout_ms: int | None = Field(
        None, ge=1, description="Router/Combiner/Transformer: deadline when the caller sets none."
    )

    @property
    def v2_model_name(self) -> str:
        """The name a Model node serves under (its modelName, else the node's name)."""
        if self.model is not None and self.model.model_name:
            return self.model.model_name
        return self.name


class ModelDeploymentSpec(_Spec):
    """A graph of nodes and the one that receives requests."""

    entrypoint: str = Field(max_length=63, description="Name of the node that receives requests.")
    nodes: list[Node] = Field(
        max_length=MAX_NODES, description="Every node of the graph, children by name."
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes' metadata the spec uses.

    Unknown keys are ignored rather than refused: the API server adds its own (uid,
    resourceVersion, managedFields, ...) to every object it hands the operator.
    """

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(pattern=DNS_LABEL, max_length=63, description="Deployment name (DNS-1123 label).")
    namespace: str = Field("default", pattern=DNS_LABEL, description="Kubernetes namespace.")
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Kubernetes annotations.")


class ModelDeployment(_Spec):
    """A served model graph: one manifest for ``servegraph run`` and ``kubectl apply`` alike."""

    api_version: Literal["servegraph.io/v1alpha1"] = Field(description="servegraph.io/v1alpha1.")
    kind: Literal["ModelDeployment"] = Field(description="ModelDeployment.")
    metadata: ObjectMeta = Field(description="Name, namespace, labels and annotations.")
    spec: ModelDeploymentSpec = Field(description="The graph.")

    def node(self, name: str) -> Node:
        """The node called ``name`` (the first, if a broken spec defines it twice)."""
        for node in self.spec.nodes:
            if node.name == name:
                return node
        raise KeyError(f"ModelDeployment '{self.metadata.name}' has no node '{name}'")

    def to_manifest(self) -> dict[str, Any]:
        """The camelCase mapping a user would write (unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
