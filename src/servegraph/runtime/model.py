"""A served model version: its instances, warm-up, request checks and batcher.

Loading (backend load + warm-up) is blocking and runs in a worker thread; ``start()``
then attaches the batcher to the running loop. Unloading (the user's ``unload()`` or
``finalize()``) runs in a worker thread too, and a version whose load fails part-way
unloads the instances it had loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from servegraph.runtime.backends.base import PLATFORMS, LoadedModel, backend_module
from servegraph.runtime.batching.batcher import DynamicBatcher, warmup_inputs
from servegraph.runtime.batching.cost import CostCurve
from servegraph.runtime.config import ModelConfig, TensorConfig
from servegraph.runtime.metrics import ServerMetrics
from servegraph.runtime.protocol.datatypes import numpy_dtype
from servegraph.runtime.protocol.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelNotReady,
    QueueFull,
)
from servegraph.runtime.protocol.types import InferRequest, InferResponse
from servegraph.runtime.stats import ModelStats

log = logging.getLogger(__name__)

WARMUP_TIMED_RUNS = 3

_OUTCOMES: dict[type[BaseException], str] = {
    InvalidInput: "invalid",
    DeadlineExceeded: "timeout",
    QueueFull: "rejected",
    ModelNotReady: "rejected",
    asyncio.CancelledError: "cancelled",
}


def resolve_signature(config: ModelConfig, version_dir: Path) -> ModelConfig:
    """Fill inputs/outputs the config leaves out from the model itself (ONNX)."""
    if config.input and config.output:
        return config
    found = backend_module(config.backend).signature(config, version_dir)
    if found is None:
        raise ValueError(f"model '{config.name}' must declare its inputs and outputs in its config")
    inputs, outputs = found
    return config.model_copy(
        update={"input": config.input or inputs, "output": config.output or outputs}
    )


def _warmup_sizes(config: ModelConfig) -> list[int]:
    if config.max_batch_size == 0:
        return [0]
    buckets = config.shape_buckets.batch_sizes if config.shape_buckets else []
    if buckets:
        return buckets
    sizes = {config.max_batch_size}
    size = 1
    while size < config.max_batch_size:
        sizes.add(size)
        size *= 2
    if config.dynamic_batching:
        sizes.update(config.dynamic_batching.preferred_batch_size)
    return sorted(sizes)


def warm_up(config: ModelConfig, instances: list[LoadedModel]) -> CostCurve:
    """Run every instance on every bucket shape; time the first instance to get the cost curve.

    Variable dims run at every configured dim bucket (the curve is timed at the largest,
    the conservative choice) or at 1 when unbucketed.
    """
    curve = CostCurve()
    dim_buckets = config.shape_buckets.dims if config.shape_buckets else {}
    variants: list[dict[tuple[str, int], int]] = [{}]
    for name, axes in dim_buckets.items():
        for axis, sizes in axes.items():
            variants = [{**v, (name, axis): s} for v in variants for s in sizes]
    for variant_index, variant in enumerate(variants):
        timed = variant_index == len(variants) - 1

        def dims_for(name: str, axis: int, dim: int, variant: dict[tuple[str, int], int] = variant) -> int:
            return variant.get((name, axis), dim if dim > 0 else 1)

        for size in _warmup_sizes(config):
            sample = warmup_inputs(config, size, dims_for)
            for i, instance in enumerate(instances):
                runs = WARMUP_TIMED_RUNS if (timed and i == 0 and size > 0) else 1
                best = float("inf")
                for _ in range(runs):
                    start = time.perf_counter()
                    instance.predict(sample)
                    best = min(best, time.perf_counter() - start)
                if runs > 1:
                    curve.observe(size, best)
    return curve


def _unload_all(instances: list[LoadedModel]) -> None:
    """Blocking: unload every instance, each even if an earlier one raised (logged)."""
    for instance in instances:
        try:
            instance.unload()
        except Exception:
            log.exception("unloading a model instance failed")


class ServedModel:
    """One loaded version of one model."""

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        instances: list[LoadedModel],
        curve: CostCurve,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.instances = instances
        self.curve = curve
        self.stats = ModelStats(config.name, version)
        self.batcher: DynamicBatcher | None = None
        self._inputs = {t.name: t for t in config.input}
        self._outputs = {t.name: t for t in config.output}
        self._input_dtypes = {t.name: numpy_dtype(t.data_type) for t in config.input}
        # Per-request checks and shaping read these, computed once.
        self._input_checks = [(t.name, t.data_type, self.signature_shape(t)) for t in config.input]
        self._output_specs = {t.name: (t.data_type, numpy_dtype(t.data_type)) for t in config.output}
        self._all_outputs = list(self._outputs)

    @classmethod
    def load(cls, config: ModelConfig, version: str, version_dir: Path) -> ServedModel:
        """Blocking: load every instance and warm it up (call from a worker thread)."""
        config = resolve_signature(config, version_dir)
        module = backend_module(config.backend)
        instances: list[LoadedModel] = []
        try:
            for _ in range(config.instance_count):
                instances.append(module.load(config, version_dir))
        except Exception:
            # A later instance failed: the ones already loaded must not stay loaded.
            _unload_all(instances)
            raise
        try:
            curve = warm_up(config, instances) if config.warmup else CostCurve()
        except Exception as exc:
            _unload_all(instances)
            raise RuntimeError(f"warm-up failed: {type(exc).__name__}: {exc}") from exc
        return cls(config, version, instances, curve)

    def start(self, metrics: ServerMetrics, max_queue_size: int) -> None:
        """Attach the batcher to the running event loop."""
        self.batcher = DynamicBatcher(
            self.config,
            self.version,
            self.instances,
            self.stats,
            metrics.for_model(self.name, self.version),
            self.config.queue_size or max_queue_size,
            self.curve,
        )
        self.batcher.start()

    async def close(self, timeout: float | None = None) -> bool:
        """Drain the batcher, then unload; False if the drain hit ``timeout``."""
        drained = True
        if self.batcher is not None:
            drained = await self.batcher.close(timeout)
        if drained:
            # User unload()/finalize() may block: never on the event loop.
            await asyncio.to_thread(_unload_all, self.instances)
        return drained

    @property
    def platform(self) -> str:
        return PLATFORMS.get(self.config.backend, self.config.backend)

    def signature_shape(self, tensor: TensorConfig) -> list[int]:
        return ([-1] if self.config.max_batch_size > 0 else []) + list(tensor.dims)

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Inputs and outputs as v2 metadata entries (the batch dim included as -1)."""
        return (
            [{"name": t.name, "datatype": t.data_type, "shape": self.signature_shape(t)} for t in self.config.input],
            [{"name": t.name, "datatype": t.data_type, "shape": self.signature_shape(t)} for t in self.config.output],
        )

    def is_ready(self) -> bool:
        """A version is handed out only once loaded and warmed up."""
        return True

    @property
    def allows_timeout_override(self) -> bool:
        batching = self.config.dynamic_batching
        return batching is None or batching.default_queue_policy.allow_timeout_override

    @property
    def group_rows(self) -> int:
        """Alike requests run as one only where the batcher would have merged their rows
        anyway: dynamic batching on, no padding to shape buckets."""
        batcher = self.batcher
        return self.config.max_batch_size if batcher is not None and batcher.merges_rows else 0

    def check_request(self, request: InferRequest) -> None:
        """400 for any input or output that does not fit the model's signature."""
        model = self.name
        for name in request.inputs:
            if name not in self._inputs:
                raise InvalidInput(
                    f"unexpected inference input '{name}' for model '{model}'; "
                    f"expected inputs {sorted(self._inputs)}"
                )
        batch = None
        for name, data_type, expected in self._input_checks:
            array = request.inputs.get(name)
            if array is None:
                raise InvalidInput(f"expected input '{name}' for model '{model}' is missing")
            datatype = request.datatypes.get(name, "")
            if datatype != data_type:
                raise InvalidInput(
                    f"inference input '{name}' for model '{model}' has datatype {datatype}, "
                    f"expected {data_type}"
                )
            shape = array.shape
            if len(shape) != len(expected) or any(
                e != -1 and e != s for e, s in zip(expected, shape)
            ):
                raise InvalidInput(
                    f"unexpected shape for input '{name}' for model '{model}': "
                    f"expected {expected}, got {list(shape)}"
                )
            if self.config.max_batch_size > 0:
                if shape[0] < 1:
                    raise InvalidInput(f"input '{name}' for model '{model}' has an empty batch")
                if shape[0] > self.config.max_batch_size:
                    # Here, before queueing, so the message can name the input (Triton's wording).
                    raise InvalidInput(
                        f"inference request batch-size must be <= {self.config.max_batch_size} "
                        f"for model '{model}', got {shape[0]} for input '{name}'"
                    )
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise InvalidInput(
                        f"inputs of model '{model}' disagree on the batch size: "
                        f"'{name}' has {shape[0]}, others {batch}"
                    )
        if request.outputs:
            for output in request.outputs:
                if output.name not in self._outputs:
                    raise InvalidInput(
                        f"unexpected inference output '{output.name}' for model '{model}'; "
                        f"outputs are {sorted(self._outputs)}"
                    )

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check, queue, and shape the answer; count the outcome in stats and metrics."""
        assert self.batcher is not None, "start() the model before infer()"
        start = time.perf_counter_ns()
        metrics = self.batcher.metrics
        requests = request.requests
        try:
            response = await self._infer(request, self.batcher)
        except BaseException as exc:
            if requests == 1:  # a group that fails is not counted: its requests come again one by one
                self.stats.fail.add(time.perf_counter_ns() - start)
                metrics.outcome(_OUTCOMES.get(type(exc), "error"))
            raise
        elapsed = time.perf_counter_ns() - start
        self.stats.success.add(elapsed * requests, requests)
        metrics.success.inc(requests)
        for _ in range(requests):
            metrics.latency.observe(elapsed / 1e9)
        return response

    async def _infer(self, request: InferRequest, batcher: DynamicBatcher) -> InferResponse:
        self.check_request(request)
        outputs = await batcher.infer(request.inputs, request.deadline, request.requests)
        wanted = [o.name for o in request.outputs] if request.outputs else self._all_outputs
        selected: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for name in wanted:
            array = outputs.get(name)
            if array is None:
                raise ModelError(f"model '{self.name}' did not return its output '{name}'")
            data_type, dtype = self._output_specs[name]
            if array.dtype != dtype and not (data_type == "BYTES" and array.dtype.kind in "OSU"):
                array = array.astype(dtype)
            selected[name] = array
            datatypes[name] = data_type
        return InferResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=selected,
            datatypes=datatypes,
            id=request.id,
        )
