"""Prometheus metrics of graph nodes, on the server's own registry (the same /metrics port).

Requests, failures and latency of the node as a whole are the runtime's usual
``servegraph_inference_requests`` and ``servegraph_request_latency_seconds`` under the
node's model name; these are what only a graph node has.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge


class GraphMetrics:
    """Node-role metrics; one set per registry (``for_registry``), labelled by node name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.child_requests = Counter(
            "servegraph_child_requests",
            "Calls from a node to its children, by outcome (success, unavailable, timeout, rejected, failed).",
            ("node", "child", "outcome"),
            registry=registry,
        )
        self.router_requests = Counter(
            "servegraph_router_requests",
            "Requests a router served, by route (the child that answered).",
            ("node", "route"),
            registry=registry,
        )
        # Gauges, not counters: they show the bandit's state, restored from its state file on
        # restart, and rewards may be negative for strategies that allow it.
        self.router_pulls = Gauge(
            "servegraph_router_pulls_total",
            "Rewarded pulls per arm (feedback received), including state restored at start.",
            ("node", "arm"),
            registry=registry,
        )
        self.router_reward = Gauge(
            "servegraph_router_reward_total",
            "Sum of rewards per arm, including state restored at start.",
            ("node", "arm"),
            registry=registry,
        )
        self.router_feedback = Counter(
            "servegraph_router_feedback",
            "Feedback requests by outcome (accepted, unknown_id, invalid).",
            ("node", "outcome"),
            registry=registry,
        )
        self.shadow_requests = Counter(
            "servegraph_router_shadow_requests",
            "Shadow copies by outcome (success, failed, dropped when too many were in flight).",
            ("node", "child", "outcome"),
            registry=registry,
        )
        self.outlier_rows = Counter(
            "servegraph_outlier_rows",
            "Rows scored by an OutlierDetector, by verdict (outlier, inlier).",
            ("node", "verdict"),
            registry=registry,
        )
        self.drift_p_value = Gauge(
            "servegraph_drift_p_value",
            "Two-sample Kolmogorov-Smirnov p-value of the recent window against the reference, per feature.",
            ("node", "feature"),
            registry=registry,
        )
        self.drift_detected = Gauge(
            "servegraph_drift_detected",
            "1 when a DriftDetector's smallest p-value is under its threshold.",
            ("node",),
            registry=registry,
        )

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, GraphMetrics] = weakref.WeakKeyDictionary()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GraphMetrics:
        """The one set on ``registry`` (a metric name can be registered only once per registry)."""
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found
