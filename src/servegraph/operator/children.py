"""A ModelDeployment's desired Kubernetes objects: pure functions, spec in, dicts out.

One ConfigMap per ModelDeployment holds every node's rendered config (the same
``render_graph`` that ``servegraph run`` uses); each node gets a Deployment and a Service
(named ports http 8000, grpc 8001, metrics 8002); a Model node with ``autoscaling`` gets a
HorizontalPodAutoscaler, and one that can run more than one pod a PodDisruptionBudget.
Children reach each other through their Services' cluster DNS names.

Every object is owned (controller reference) by the ModelDeployment, so Kubernetes'
garbage collector removes it with its owner, and carries the standard labels. Names are
deterministic, so a retried or restarted reconcile finds what an earlier one created.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any

from servegraph.operator.diff import STATE_LABEL
from servegraph.operator.render import (
    ConfigOverrides,
    Endpoint,
    RenderedGraph,
    RenderedModel,
    render_graph,
)
from servegraph.operator.settings import OperatorSettings
from servegraph.operator.spec import API_VERSION, BANDITS, KIND, ModelDeployment, Node
from servegraph.runtime.graph.config import NodeConfig

Object = dict[str, Any]

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
RUNTIME_UID = 65532
"""The images' non-root user (distroless' "nonroot"): graph pods run as it."""

CONFIG_MOUNT = "/etc/servegraph"
MODELS_MOUNT = "/models"
FETCH_MOUNT = "/var/lib/servegraph/fetched"
PVC_MOUNT = "/mnt/models"

CONFIG_HASH = "servegraph.io/config-hash"
"""Pod-template annotation: a node's Deployment rolls only when its own config changed."""

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION: Object = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
"""GPU nodes are usually tainted with nvidia.com/gpu (the GPU operator and cloud pools)."""

ROLES = {"Model": "model", "Router": "router", "Combiner": "combiner", "Transformer": "transformer"}

LABEL_DEPLOYMENT = "servegraph.io/deployment"
LABEL_NODE = "servegraph.io/node"
LABEL_ROLE = "servegraph.io/role"
LABEL_STATE = STATE_LABEL
"""On a bandit router's state ConfigMap: its replicas write it, so its changes wake nobody."""


# ----------------------------------------------------------------------------- names


def _bounded(name: str, limit: int = 63) -> str:
    """``name`` if it fits a DNS label, else a prefix and a stable hash of the whole."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def object_name(deployment: ModelDeployment, node: str) -> str:
    """The Deployment, Service, HPA and PDB name of a node: ``<deployment>-<node>``."""
    return _bounded(f"{deployment.metadata.name}-{node}")


def config_map_name(deployment: ModelDeployment) -> str:
    """The one ConfigMap of a ModelDeployment."""
    return _bounded(f"{deployment.metadata.name}-graph", 253)


def endpoint(deployment: ModelDeployment, node: str) -> Endpoint:
    """A node's Service, by its namespace-qualified DNS name (the cluster domain is searched)."""
    host = f"{object_name(deployment, node)}.{deployment.metadata.namespace}.svc"
    return Endpoint(http=f"{host}:{HTTP_PORT}", grpc=f"{host}:{GRPC_PORT}")


def labels(deployment: ModelDeployment, node: Node | None = None) -> dict[str, str]:
    """The labels of every object: Kubernetes' recommended ones plus servegraph's own."""
    found = {
        "app.kubernetes.io/name": "servegraph-node",
        "app.kubernetes.io/instance": deployment.metadata.name,
        "app.kubernetes.io/part-of": deployment.metadata.name,
        "app.kubernetes.io/managed-by": "servegraph",
        LABEL_DEPLOYMENT: deployment.metadata.name,
    }
    if node is not None:
        found["app.kubernetes.io/component"] = ROLES[node.type]
        found[LABEL_NODE] = node.name
        found[LABEL_ROLE] = ROLES[node.type]
    return found


def selector(deployment: ModelDeployment, node: Node) -> dict[str, str]:
    """A node's pods; immutable on a Deployment, so only names that never change."""
    return {LABEL_DEPLOYMENT: deployment.metadata.name, LABEL_NODE: node.name}


def owner_reference(deployment: ModelDeployment, uid: str) -> Object:
    """The controller reference that makes the garbage collector delete a child with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": deployment.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


# ----------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class DesiredChildren:
    """Everything one ModelDeployment should own, in the order to apply it."""

    objects: list[Object]
    graph: RenderedGraph
    url: str
    """Where a client sends requests: the entrypoint's Service and v2 model name."""


def state_config_map_name(deployment: ModelDeployment, node: str) -> str:
    """The ConfigMap a bandit router's replicas share their learned state through."""
    return _bounded(f"{deployment.metadata.name}-{node}-state", 253)


def is_bandit(node: Node) -> bool:
    return node.router is not None and node.router.strategy in BANDITS


def render_for_cluster(deployment: ModelDeployment, files_root: str = "") -> RenderedGraph:
    """``render_graph`` with Service DNS names as endpoints (raises SpecError when invalid).

    Relative file paths of transformer steps (written for ``servegraph run``, relative to the
    manifest) are looked up under ``files_root`` in the image, as relative storageUris are.
    Bandit routers keep their state in a ConfigMap all their replicas share.
    """
    root = Path(files_root) if files_root else None
    graph = render_graph(deployment, lambda node: endpoint(deployment, node), manifest_dir=root)
    nodes = dict(graph.nodes)
    for name, config in graph.nodes.items():
        if config.router is not None and is_bandit(deployment.node(name)):
            router = config.router.model_copy(update={"state_config_map": state_config_map_name(deployment, name)})
            nodes[name] = config.model_copy(update={"router": router})
    return replace(graph, nodes=nodes)


def desired_children(deployment: ModelDeployment, uid: str, settings: OperatorSettings) -> DesiredChildren:
    """Every object the ModelDeployment should own; pure (raises SpecError on an invalid spec)."""
    graph = render_for_cluster(deployment, settings.relative_model_root)
    owner = owner_reference(deployment, uid)
    files = config_files(graph)
    objects: list[Object] = [_config_map(deployment, files, owner)]
    for name in graph.order:
        node = deployment.node(name)
        node_hash = _hash({k: v for k, v in files.items() if k.startswith(f"{name}.")})
        objects.append(_deployment(deployment, node, graph, node_hash, owner, settings))
        objects.append(_service(deployment, node, owner))
        if node.model is not None and node.model.autoscaling is not None:
            objects.append(_autoscaler(deployment, node, owner))
        if _most_replicas(node) > 1:
            objects.append(_disruption_budget(deployment, node, owner))
        if is_bandit(node):
            objects.extend(_router_state(deployment, node, owner))
    entry = endpoint(deployment, graph.entrypoint)
    url = f"http://{entry.http}/v2/models/{graph.entry_model}"
    return DesiredChildren(objects, graph, url)


def config_files(graph: RenderedGraph) -> dict[str, str]:
    """The ConfigMap's data: ``<node>.json`` (a NodeConfig) or ``<node>.overrides.json`` (a model's)."""
    files: dict[str, str] = {}
    for name in graph.order:
        if name in graph.nodes:
            files[f"{name}.json"] = _node_config_json(graph.nodes[name])
        else:
            files[f"{name}.overrides.json"] = _overrides_json(graph.models[name].overrides)
    return files


def _node_config_json(config: NodeConfig) -> str:
    return json.dumps(config.model_dump(mode="json", exclude_none=True), indent=1, sort_keys=True)


def _overrides_json(overrides: ConfigOverrides) -> str:
    return json.dumps(overrides.model_dump(mode="json", exclude_none=True), indent=1, sort_keys=True)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _metadata(deployment: ModelDeployment, name: str, owner: Object, node: Node | None = None) -> Object:
    return {
        "name": name,
        "namespace": deployment.metadata.namespace,
        "labels": labels(deployment, node),
        "ownerReferences": [owner],
    }


def _config_map(deployment: ModelDeployment, files: dict[str, str], owner: Object) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(deployment, config_map_name(deployment), owner),
        "data": files,
    }


def _most_replicas(node: Node) -> int:
    model = node.model
    if model is None:
        return 1
    if model.autoscaling is not None:
        return model.autoscaling.max_replicas
    return model.replicas


# ----------------------------------------------------------------------------- pods


def _gpus(node: Node) -> int:
    model = node.model
    return model.resources.gpu if model is not None and model.resources is not None else 0


def _container_security() -> Object:
    """PSS "restricted", plus a read-only root filesystem (scratch space is an emptyDir)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(node: Node) -> Object:
    model = node.model
    if model is None or model.resources is None:
        return {}
    wanted: dict[str, str | int] = {}
    if model.resources.cpu:
        wanted["cpu"] = model.resources.cpu
    if model.resources.memory:
        wanted["memory"] = model.resources.memory
    limits: dict[str, str | int] = dict(wanted)
    if model.resources.gpu:
        limits[GPU_RESOURCE] = str(model.resources.gpu)  # the API server answers quantities as strings
    found: Object = {}
    if wanted:
        found["requests"] = wanted
    if limits:
        found["limits"] = limits
    return found


def _probe(path: str, period: int, failures: int) -> Object:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def _serve_args(node: Node, settings: OperatorSettings) -> list[str]:
    args = [
        "serve",
        "--host", "0.0.0.0",
        "--http-port", str(HTTP_PORT),
        "--grpc-port", str(GRPC_PORT),
        "--metrics-port", str(METRICS_PORT),
        "--exit-timeout-secs", str(settings.exit_timeout_secs),
        "--exit-on-error", "true",
    ]  # fmt: skip
    if node.type == "Model":
        # The repository was written once by the init container; nothing rescans it.
        return [*args, "--model-repository", MODELS_MOUNT, "--repository-poll-secs", "0"]
    return [*args, "--node-config", f"{CONFIG_MOUNT}/{node.name}.json"]


def _fetch_container(model: RenderedModel, node: Node, image: str, settings: OperatorSettings) -> Object:
    """The model puller: fetch the storageUri, lay the spec's overrides over its config."""
    assert node.model is not None
    uri = node.model.storage_uri.strip()
    if uri.startswith("pvc://"):
        claim_path = uri.removeprefix("pvc://").partition("/")[2]
        uri = f"{PVC_MOUNT}/{claim_path}".rstrip("/")
    elif "://" not in uri and not uri.startswith("/"):
        uri = f"{settings.relative_model_root}/{uri}"
    container: Object = {
        "name": "fetch-model",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "fetch", uri, f"{FETCH_MOUNT}/{model.model_name}",
            "--overrides", f"{CONFIG_MOUNT}/{node.name}.overrides.json",
            "--repository", MODELS_MOUNT,
        ],  # fmt: skip
        "securityContext": _container_security(),
        "volumeMounts": _mounts(node, fetch=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if node.model.storage_secret:
        # Credentials reach the puller only, never the serving container.
        container["envFrom"] = [{"secretRef": {"name": node.model.storage_secret}}]
    return container


def _mounts(node: Node, fetch: bool = False) -> list[Object]:
    mounts: list[Object] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if node.type == "Model":
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": not fetch})
        if fetch:
            mounts.append({"name": "fetched", "mountPath": FETCH_MOUNT})
        if node.model is not None and node.model.storage_uri.strip().startswith("pvc://"):
            mounts.append({"name": "claim", "mountPath": PVC_MOUNT, "readOnly": True})
    return mounts


def _volumes(deployment: ModelDeployment, node: Node) -> list[Object]:
    volumes: list[Object] = [
        {"name": "config", "configMap": {"name": config_map_name(deployment)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if node.type == "Model":
        volumes.append({"name": "models", "emptyDir": {}})
        volumes.append({"name": "fetched", "emptyDir": {}})
        uri = node.model.storage_uri.strip() if node.model is not None else ""
        if uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").partition("/")[0]
            volumes.append({"name": "claim", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return volumes


def pod_spec(deployment: ModelDeployment, node: Node, graph: RenderedGraph, settings: OperatorSettings) -> Object:
    """A node's pod: the runtime in the node's role, restricted, probed, drained on SIGTERM."""
    gpus = _gpus(node)
    image = settings.runtime_gpu_image if gpus else settings.runtime_image
    container: Object = {
        "name": "servegraph",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": _serve_args(node, settings),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        # Loading and warming up every bucket shape can take minutes: liveness waits for it.
        "startupProbe": _probe("/v2/health/ready", 5, max(1, settings.startup_timeout_secs // 5)),
        "securityContext": _container_security(),
        "volumeMounts": _mounts(node),
        # A model that fails to load exits with its error as the last log lines: the
        # termination message then names it, and the status reads it from there.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _resources(node)
    if resources:
        container["resources"] = resources
    bandit = is_bandit(node)
    spec: Object = {
        # Only a bandit router talks to the API (its state ConfigMap), with its own account.
        "automountServiceAccountToken": bandit,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": settings.exit_timeout_secs + 10,
        "containers": [container],
        "volumes": _volumes(deployment, node),
    }
    if bandit:
        spec["serviceAccountName"] = object_name(deployment, node.name)
        container["env"] = [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
    if node.type == "Model":
        spec["initContainers"] = [_fetch_container(graph.models[node.name], node, image, settings)]
    model = node.model
    if model is not None:
        if model.node_selector:
            spec["nodeSelector"] = dict(model.node_selector)
        tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in model.tolerations]
        if gpus and GPU_TOLERATION not in tolerations:
            tolerations.append(dict(GPU_TOLERATION))
        if tolerations:
            spec["tolerations"] = tolerations
    return spec


def _deployment(
    deployment: ModelDeployment,
    node: Node,
    graph: RenderedGraph,
    config_hash: str,
    owner: Object,
    settings: OperatorSettings,
) -> Object:
    pod_labels = labels(deployment, node)
    spec: Object = {
        "selector": {"matchLabels": selector(deployment, node)},
        # New pods must be ready before an old one goes: a rollout never drops capacity.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    CONFIG_HASH: config_hash,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod_spec(deployment, node, graph, settings),
        },
    }
    model = node.model
    if model is None or model.autoscaling is None:
        # With autoscaling the HPA owns replicas: leaving the field out keeps us off its toes.
        spec["replicas"] = model.replicas if model is not None else 1
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(deployment, object_name(deployment, node.name), owner, node),
        "spec": spec,
    }


def _service(deployment: ModelDeployment, node: Node, owner: Object) -> Object:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(deployment, object_name(deployment, node.name), owner, node),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(deployment, node),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def _autoscaler(deployment: ModelDeployment, node: Node, owner: Object) -> Object:
    assert node.model is not None and node.model.autoscaling is not None
    scaling = node.model.autoscaling
    metrics: list[Object] = []
    if scaling.target_cpu_utilization_percentage is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization_percentage},
                },
            }
        )
    if scaling.target_concurrency is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "servegraph_inflight_requests"},
                    "target": {"type": "AverageValue", "averageValue": str(scaling.target_concurrency)},
                },
            }
        )
    if not metrics:  # Kubernetes' own default, said explicitly
        metrics.append(
            {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
        )
    name = object_name(deployment, node.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(deployment, name, owner, node),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": max(scaling.max_replicas, scaling.min_replicas),
            "metrics": metrics,
        },
    }


def _disruption_budget(deployment: ModelDeployment, node: Node, owner: Object) -> Object:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(deployment, object_name(deployment, node.name), owner, node),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(deployment, node)}},
    }


def _router_state(deployment: ModelDeployment, node: Node, owner: Object) -> list[Object]:
    """A bandit router's shared state: the ConfigMap, and an account that may touch only it."""
    name = object_name(deployment, node.name)
    state = state_config_map_name(deployment, node.name)
    config_map: Object = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(deployment, state, owner, node),
        # The replicas own the data; an empty desired map never overwrites it.
        "data": {},
    }
    config_map["metadata"]["labels"][LABEL_STATE] = "true"
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(deployment, name, owner, node),
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(deployment, name, owner, node),
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [state], "verbs": ["get", "patch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(deployment, name, owner, node),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": deployment.metadata.namespace}],
    }
    return [config_map, account, role, binding]
