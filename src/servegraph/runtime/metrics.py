"""Prometheus metrics of one server, in a registry of its own (so servers can share a process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Every metric the runtime exports; ``for_model()`` binds the labels once per version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "version")
        self.requests = Counter(
            "servegraph_inference_requests",
            "Inference requests by outcome (success, invalid, timeout, rejected, error).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "servegraph_request_latency_seconds",
            "End-to-end request latency inside the server (successful requests).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "servegraph_queue_seconds",
            "Time a request waited in the batcher's queue.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "servegraph_compute_seconds",
            "Model execution time per batch.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "servegraph_batch_size",
            "Rows per model execution (padding included).",
            labels,
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "servegraph_queue_depth",
            "Requests waiting in the batcher's queue.",
            labels,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "servegraph_inflight_requests",
            "Inference requests this server is handling now (queued or computing): the per-pod"
            " concurrency an autoscaler's targetConcurrency aims at.",
            registry=self.registry,
        )
        self.rejections = Counter(
            "servegraph_rejections",
            "Requests refused before execution, by reason (queue_full, timeout, shutdown).",
            (*labels, "reason"),
            registry=self.registry,
        )

    def for_model(self, model: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, model, version)

    def remove_model(self, model: str, version: str) -> None:
        """Drop every series of a retired version, so a rolling model's label sets don't pile up."""
        for histogram_or_gauge in (
            self.request_latency, self.queue_time, self.compute_time, self.batch_size, self.queue_depth,
        ):  # fmt: skip
            try:
                histogram_or_gauge.remove(model, version)
            except KeyError:
                pass
        for counter, label in ((self.requests, "outcome"), (self.rejections, "reason")):
            values = {
                sample.labels[label]
                for family in counter.collect()
                for sample in family.samples
                if sample.labels.get("model") == model and sample.labels.get("version") == version
            }
            for value in values:
                try:
                    counter.remove(model, version, value)
                except KeyError:
                    pass

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(slots=True, init=False)
class ModelMetrics:
    """Label-bound children of the server's metrics for one model version (hot-path cheap)."""

    success: Counter
    queue_time: Histogram
    compute_time: Histogram
    batch_size: Histogram
    latency: Histogram
    queue_depth: Gauge
    _metrics: ServerMetrics
    _labels: tuple[str, str]

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self.success = metrics.requests.labels(model, version, "success")
        self.queue_time = metrics.queue_time.labels(model, version)
        self.compute_time = metrics.compute_time.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.latency = metrics.request_latency.labels(model, version)
        self.queue_depth = metrics.queue_depth.labels(model, version)

    def outcome(self, outcome: str) -> None:
        self._metrics.requests.labels(*self._labels, outcome).inc()

    def rejected(self, reason: str) -> None:
        self._metrics.rejections.labels(*self._labels, reason).inc()
