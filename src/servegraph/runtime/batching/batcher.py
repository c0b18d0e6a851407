"""The dynamic batcher: one per model version, one asyncio task, never blocking the loop.

Requests are queued (bounded; a full queue rejects at once with a retry hint), closed into
batches earliest-deadline-first, merged along axis 0 (padded to buckets if configured),
run on a free model instance in a worker thread, and split back to their callers. While
one batch computes the next one fills; several instances run batches concurrently.

Every failure stays inside the batch it hit (STYLE.md's batcher lessons): the loop has one
exception boundary, futures are set only if not done, cancelled requests are dropped before
merging, and a failed multi-request batch is retried request by request so a poison
request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from servegraph.runtime.backends.base import LoadedModel
from servegraph.runtime.batching.cost import BatchPolicy, CostCurve, bucket_ceiling, plan_batch, singles_pay
from servegraph.runtime.batching.padding import merge, padded_shape, split
from servegraph.runtime.config import ModelConfig
from servegraph.runtime.metrics import ModelMetrics
from servegraph.runtime.protocol.datatypes import numpy_dtype
from servegraph.runtime.protocol.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelNotReady,
    QueueFull,
    ServegraphError,
)
from servegraph.runtime.stats import ModelStats

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    key: tuple[tuple[str, tuple[int, ...]], ...]
    deadline: float
    arrived: float
    arrived_ns: int
    seq: int
    future: asyncio.Future[Outputs]
    unpad: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    lone: bool = False
    """A lone caller's request: it may run inline (``_runs_inline``)."""
    requests: int = 1
    """Callers' requests it carries (``InferRequest.requests``): statistics count each."""


class DynamicBatcher:
    """Queue, batch and run requests for one model version."""

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        instances: list[LoadedModel],
        stats: ModelStats,
        metrics: ModelMetrics,
        max_queue_size: int,
        curve: CostCurve | None = None,
    ) -> None:
        self.config = config
        self.model = config.name
        self.version = version
        self._instances = list(instances)
        self._free = list(instances)
        self._stats = stats
        self.metrics = metrics
        self._max_queue = max_queue_size
        self.curve = curve or CostCurve()
        self._batch_dim = config.max_batch_size > 0
        batching = config.dynamic_batching
        self._merging = self._batch_dim and batching is not None
        self._buckets = config.shape_buckets
        self._queue_timeout = (
            batching.default_queue_policy.default_timeout_microseconds / 1e6 if batching else 0.0
        )
        self.policy = BatchPolicy(
            max_rows=max(config.max_batch_size, 1),
            max_delay=(batching.max_queue_delay_microseconds / 1e6) if batching else 0.0,
            preferred=tuple(batching.preferred_batch_size) if batching else (),
            buckets=tuple(self._buckets.batch_sizes) if self._buckets else (),
            cost_aware=batching is None or batching.scheduler == "cost_aware",
        )
        self._executor = ThreadPoolExecutor(
            max_workers=len(instances), thread_name_prefix=f"model-{config.name}"
        )
        self._pending: list[_Pending] = []
        self._seq = 0
        self._deadlined = 0
        self._inflight = 0
        self._running_items: dict[int, list[_Pending]] = {}
        # Running batches, kept so the loop never drops them and a timed-out close() can cancel them.
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._row_interval = 0.0  # EWMA seconds between arriving rows
        self._request_rows = 1.0  # EWMA rows per arriving request
        self._last_arrival = 0.0
        self._drain_rate = 0.0  # EWMA requests completed per second
        self._frontend_cost = 0.0  # EWMA event-loop CPU seconds per arriving row
        self._arrived_rows = 0
        self._frontend_load = 0.0  # EWMA share of a core the event loop used, batch to batch
        self._process_load = 0.0  # EWMA share of the process's cores the whole process used
        self._cores = available_cores()
        self._cpu_mark: tuple[float, float, int, float] | None = None  # (loop CPU, monotonic, rows arrived, process CPU) at the last batch
        self._idle_since = -1.0  # when a free instance first looked for work (-1: not yet)
        self._rows_short = 0  # rows still missing from the batch a free instance waits for
        self._running_requests = 0
        self._peak_requests = 0.0  # decaying peak of requests queued + running
        self._peak_busy = math.inf  # decaying peak of a batch's measured cost, seconds (inf: none yet)
        self._inline_cpu = 0.0  # loop-thread CPU seconds spent in inline predicts (not front end)
        self._outstanding = 0  # requests in infer(): queued, running, or answered but not yet returned
        self._lone_streak = 0  # requests in a row that arrived alone while the loop was free to see others
        self._lone_count = 0  # requests taken as a lone caller's (every LONE_PROBE-th is a probe)
        self._last_inline = False  # whether the last batch ran on the loop's thread
        self._model_on_cpu = False  # whether the last batch kept its thread on the CPU (not a GPU or I/O wait)

    # ----------------------------------------------------------------- public
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{self.model}-{self.version}"
        )

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def merges_rows(self) -> bool:
        """Whether requests' rows are merged as they are (dynamic batching, no shape buckets):
        then alike requests may also arrive as one (``InferRequest.requests``)."""
        return self._merging and self._buckets is None

    async def infer(self, inputs: dict[str, np.ndarray], deadline: float | None, requests: int = 1) -> Outputs:
        """Queue one request (``requests`` callers' alike requests as one) and wait for its
        share of a batch."""
        if self._closing:
            raise ModelNotReady(f"model '{self.model}' version {self.version} is unloading")
        if len(self._pending) >= self._max_queue:
            retry = self.retry_after()
            self.metrics.rejected("queue_full")
            raise QueueFull(
                f"queue for model '{self.model}' version {self.version} is full "
                f"({self._max_queue} requests); retry after {retry * 1000:.0f} ms",
                retry_after=retry,
            )
        now = time.monotonic()
        if self._queue_timeout and (deadline is None or now + self._queue_timeout < deadline):
            deadline = now + self._queue_timeout
        item = self._make_pending(inputs, deadline, now)
        item.requests = requests
        item.lone = self._is_lone()
        if item.lone and not self._pending and not self._inflight and self._free and self._run_lone_now(item):
            return await item.future  # done already: no wait
        self._pending.append(item)
        if item.deadline != math.inf:
            self._deadlined += 1
        in_batcher = len(self._pending) + self._running_requests
        if in_batcher > self._peak_requests:
            self._peak_requests = in_batcher
        self.metrics.queue_depth.set(len(self._pending))
        self._rows_short -= item.rows
        if (self._free and self._rows_short <= 0) or item.deadline != math.inf:
            # With every instance busy the loop has nothing to plan until one frees up (which
            # wakes it), nor while the batch a free one waits for is short of rows (its timer
            # re-plans); a deadline may need an earlier timer.
            self._wake.set()
        self._outstanding += 1
        try:
            return await item.future
        finally:
            self._outstanding -= 1

    def retry_after(self) -> float:
        """Seconds until the queue should have room: depth over the measured drain rate."""
        rate = self._drain_rate or 1.0 / max(self.curve.cost(1), 1e-3)
        return max(0.001, (len(self._pending) + 1) / rate)

    async def close(self, timeout: float | None = None) -> bool:
        """Stop taking requests, finish what is queued and running, then stop the loop.

        Returns False when ``timeout`` cut the drain short: whoever still waited then got
        an UNAVAILABLE answer, never silence.
        """
        self._closing = True
        self._wake.set()
        finished = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                finished = False
                self._task.cancel()
                error = ModelNotReady(
                    f"model '{self.model}' was unloaded before it answered (drain timeout)"
                )
                self._fail_all(error)
                for batch in self._running_items.values():
                    self._fail(batch, error)
                for task in self._batch_tasks:
                    task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return finished

    # --------------------------------------------------------------- internals
    def _make_pending(
        self, inputs: dict[str, np.ndarray], deadline: float | None, now: float
    ) -> _Pending:
        rows = 1
        key: tuple[tuple[str, tuple[int, ...]], ...] = ()
        unpad: dict[str, tuple[tuple[int, int], ...]] = {}
        if self._batch_dim:
            rows = next(iter(inputs.values())).shape[0] if inputs else 1
            if rows > self.config.max_batch_size:
                raise InvalidInput(
                    f"inference request batch-size must be <= {self.config.max_batch_size} "
                    f"for model '{self.model}', got {rows}"
                )
            if self._merging:
                shapes = []
                for name, array in inputs.items():
                    inner = array.shape[1:]
                    if self._buckets is not None:
                        inner = padded_shape(name, array.shape, self._buckets, self.model)[1:]
                    shapes.append((name, inner))
                key = tuple(shapes)
                if self._buckets is not None and self._buckets.output_follows:
                    unpad = {
                        out: tuple((f.output_axis, inputs[f.input].shape[f.input_axis]) for f in follows)
                        for out, follows in self._buckets.output_follows.items()
                        if all(f.input in inputs for f in follows)
                    }
        if rows > 0 and self._last_arrival:
            gap = max(now - self._last_arrival, 0.0) / rows
            self._row_interval += 0.2 * (gap - self._row_interval)
        self._last_arrival = now
        self._arrived_rows += rows
        self._request_rows += 0.2 * (rows - self._request_rows)
        self._seq += 1
        return _Pending(
            inputs=inputs,
            rows=rows,
            key=key,
            deadline=deadline if deadline is not None else math.inf,
            arrived=now,
            arrived_ns=time.perf_counter_ns(),
            seq=self._seq,
            future=asyncio.get_running_loop().create_future(),
            unpad=unpad,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait_until = math.inf
            try:
                self._wake.clear()
                now = time.monotonic()
                if self._deadlined:
                    self._expire(now)
                while self._pending and self._free:
                    batch, wait_until = self._form(now)
                    if not batch:
                        break
                    self._launch(batch, self._free.pop())
                self.metrics.queue_depth.set(len(self._pending))
                if self._closing and not self._pending and not self._inflight:
                    return
            except Exception:  # the loop must never die while health says OK
                log.exception("batcher for model '%s' hit an internal error", self.model)
                self._fail_all(ModelError(f"internal batching error in model '{self.model}'"))
            wake_at = wait_until
            if self._deadlined:
                wake_at = min(wake_at, min(p.deadline for p in self._pending))
            handle = None
            if wake_at != math.inf:
                handle = loop.call_later(max(wake_at - time.monotonic(), 0.0), self._wake.set)
            await self._wake.wait()
            if handle is not None:
                handle.cancel()

    def _expire(self, now: float) -> None:
        keep: list[_Pending] = []
        for item in self._pending:
            if item.future.done():
                self._forget(item)
            elif item.deadline <= now:
                self._forget(item)
                self.metrics.rejected("timeout")
                item.future.set_exception(
                    DeadlineExceeded(
                        f"request for model '{self.model}' timed out after "
                        f"{(now - item.arrived) * 1000:.0f} ms in the queue; it was not run"
                    )
                )
            else:
                keep.append(item)
        self._pending = keep

    def _forget(self, item: _Pending) -> None:
        if item.deadline != math.inf:
            self._deadlined -= 1

    def _form(self, now: float) -> tuple[list[_Pending], float]:
        """Take the next batch off the queue, or return ([], wait_until)."""
        pending = self._pending
        while pending and pending[0].future.done():  # cancelled by its caller
            self._forget(pending.pop(0))
        if not pending:
            return [], math.inf
        if self._deadlined:
            pending.sort(key=lambda p: (p.deadline, p.seq))
        head = pending[0]
        if self._runs_alone_unplanned(head, len(pending)):
            pending.pop(0)
            self._forget(head)
            self._rows_short = 0
            return [head], math.inf
        group = [p for p in pending if p.key == head.key and not p.future.done()]
        queued_rows = sum(p.rows for p in group)
        first_arrival = min(p.arrived for p in group)
        rate = 1.0 / self._row_interval if self._row_interval > 0 else 0.0
        if self._idle_since < 0:
            self._idle_since = now
        rows_per_request = queued_rows / len(group)
        plan = plan_batch(
            self.policy,
            self.curve,
            queued_rows,
            first_arrival,
            now,
            rate,
            frontend_cost=self._frontend_cost,
            frontend_load=self._frontend_load,
            cpu_bound=self._process_load >= CPU_BOUND,
            last_arrival=self._last_arrival,
            # Closed-loop callers: never more than the batcher has lately held at once.
            reachable_rows=math.ceil(self._peak_requests * rows_per_request),
            idle_since=self._idle_since,
        )
        if plan.rows == 0:
            self._rows_short = plan.target - queued_rows
            return [], plan.wait_until
        self._rows_short = 0
        batch: list[_Pending] = []
        rows = 0
        for item in group:
            if batch and rows + item.rows > plan.rows:
                break
            batch.append(item)
            rows += item.rows
        taken = {id(p) for p in batch}
        self._pending = [p for p in pending if id(p) not in taken and not p.future.done()]
        for item in batch:
            self._forget(item)
        return batch, math.inf

    def _runs_alone_unplanned(self, head: _Pending, queued: int) -> bool:
        """Whether the queue's head runs alone with nothing to plan: batching is off; it is a
        lone caller's request with nothing else queued or running (one that could not run at
        once: ``_run_lone_now``), so no rows can join it (planning took a cold c=1 request
        38 µs, instrumented); or it has one row and no batch the callers can form beats single
        rows (``singles_pay``: planning cost a c=4 request about 22 µs of the loop's CPU), the
        callers' rows estimated from recent requests (others may carry several)."""
        if not self._merging or (head.lone and queued == 1 and not self._inflight):
            return True
        if head.rows != 1:
            return False
        reachable = math.ceil(self._peak_requests * max(self._request_rows, 1.0))
        return singles_pay(self.policy, self.curve, reachable)

    def _launch(self, batch: list[_Pending], instance: LoadedModel) -> None:
        self._inflight += 1
        self._running_requests += len(batch)
        self._idle_since = -1.0
        self._running_items[id(batch)] = batch
        task = asyncio.get_running_loop().create_task(
            self._execute(batch, instance), name=f"batch-{self.model}-{self.version}"
        )
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _execute(self, batch: list[_Pending], instance: LoadedModel) -> None:
        loop = asyncio.get_running_loop()
        key = id(batch)
        launched = len(batch)
        try:
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return
            try:
                results, batch_rows, timings = await self._run_batch(loop, batch, instance)
            except Exception as exc:
                if len(batch) > 1:
                    # Find out who is to blame: each request alone gets its own answer.
                    for item in batch:
                        await self._execute_alone(loop, item, instance)
                    return
                self._fail(batch, exc)
                return
            self._complete(batch, results, batch_rows, timings)
        finally:
            self._running_items.pop(key, None)
            self._free.append(instance)
            self._inflight -= 1
            self._running_requests -= launched
            self._idle_since = -1.0
            self._wake.set()

    async def _execute_alone(self, loop: asyncio.AbstractEventLoop, item: _Pending, instance: LoadedModel) -> None:
        if item.future.done():
            return
        try:
            results, batch_rows, timings = await self._run_batch(loop, [item], instance)
        except Exception as exc:
            self._fail([item], exc)
            return
        self._complete([item], results, batch_rows, timings)

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], instance: LoadedModel
    ) -> tuple[list[Outputs], int, tuple[int, int, int, int, int]]:
        t0 = time.perf_counter_ns()
        rows, batch_rows, merged = self._merge(batch)
        t1 = time.perf_counter_ns()
        if self._runs_inline(batch_rows, batch):
            outputs, busy = self._predict_inline(instance, merged)
        else:
            self._last_inline = False
            outputs, busy, self._model_on_cpu = await loop.run_in_executor(
                self._executor, _timed_predict, instance.predict, merged
            )
        t2 = time.perf_counter_ns()
        results = self._split(batch, outputs, rows, batch_rows)
        t3 = time.perf_counter_ns()
        return results, batch_rows, (t0, t1, t2, t3, busy)

    def _merge(self, batch: list[_Pending]) -> tuple[list[int], int, dict[str, np.ndarray]]:
        """Each item's rows, the batch's rows (padding included) and its merged inputs."""
        rows = [p.rows for p in batch]
        real_rows = sum(rows)
        if not self._merging:
            return rows, real_rows, batch[0].inputs
        batch_rows = bucket_ceiling(real_rows, list(self.policy.buckets))
        inner = {name: shape for name, shape in batch[0].key}
        pad = self._buckets.pad_value if self._buckets else 0.0
        return rows, batch_rows, merge([p.inputs for p in batch], batch_rows, inner, pad)

    def _predict_inline(self, instance: LoadedModel, merged: dict[str, np.ndarray]) -> tuple[Outputs, int]:
        cpu = time.thread_time()
        outputs, busy, self._model_on_cpu = _timed_predict(instance.predict, merged)
        self._inline_cpu += time.thread_time() - cpu
        self._last_inline = True
        return outputs, busy

    def _split(self, batch: list[_Pending], outputs: Outputs, rows: list[int], batch_rows: int) -> list[Outputs]:
        if not self._batch_dim:
            return [outputs]
        unpad = [p.unpad for p in batch] if any(p.unpad for p in batch) else None
        return split(outputs, rows, batch_rows, self.model, unpad)

    def _run_lone_now(self, item: _Pending) -> bool:
        """Run a lone caller's request inline, at once, in its caller's task: with nothing
        else queued or running, queueing it would only cost the request the batcher task's
        wake-up, a plan, a task of its own and the caller's wake-up (about 90 µs of a cold c=1
        request, instrumented). False, with nothing changed, when it must queue (another
        instance is free, or the model is not cheap enough to run on the loop: ``_runs_inline``)."""
        instance = self._free.pop()
        self._inflight += 1
        self._running_requests += 1
        try:
            t0 = time.perf_counter_ns()
            rows, batch_rows, merged = self._merge([item])
            if not self._runs_inline(batch_rows, [item]):
                return False
            self._idle_since = -1.0
            t1 = time.perf_counter_ns()
            try:
                outputs, busy = self._predict_inline(instance, merged)
                t2 = time.perf_counter_ns()
                results = self._split([item], outputs, rows, batch_rows)
            except Exception as exc:
                self._fail([item], exc)
                return True
            self._complete([item], results, batch_rows, (t0, t1, t2, time.perf_counter_ns(), busy))
            return True
        finally:
            self._free.append(instance)
            self._inflight -= 1
            self._running_requests -= 1

    def _is_lone(self) -> bool:
        """Whether a request arriving now is a lone caller's (``_runs_inline``).

        Evidence of a lone caller is only taken while the loop was free to see others: a
        request that arrives while another waits for its answer ends it at once; one that
        arrives alone after a batch ran on the executor thread adds to it (a batch run inline
        keeps the loop from reading a second caller's request until it is done, so such an
        arrival proves nothing). After LONE_EVIDENCE such arrivals, requests count as lone,
        except every LONE_PROBE-th: it runs on the thread, so a second caller shows itself.
        """
        if self._outstanding:
            self._lone_streak = 0
            return False
        if not self._last_inline:
            self._lone_streak += 1
        if self._lone_streak < LONE_EVIDENCE:
            return False
        self._lone_count += 1
        return self._lone_count % LONE_PROBE != 0

    def _runs_inline(self, rows: int, batch: list[_Pending]) -> bool:
        """Whether ``batch`` (``rows`` rows, padding included) runs on the event loop's thread.

        Handing a batch to an executor thread and back (a futex wake, GIL hand-offs, a loop
        wake-up, two context switches) costs the process tens of microseconds of CPU: more
        than a small model's whole predict. Such a batch runs inline when the cost curve
        prices it under INLINE_BUDGET and no batch lately cost over INLINE_PEAK, so a model
        that is sometimes slow (a lazy load, a cache miss) goes back to its thread after one
        slow batch.

        A lone caller's request runs inline too, priced up to LONE_BUDGET (and no batch lately
        over it; ``_is_lone`` says who is lone). Nobody is then kept waiting while the loop runs
        the model (nothing else is queued or running, and no other instance is free), so the
        hand-off is pure latency: at c=1 two context switches, futexes and an eventfd round
        trip per request. Two callers whose requests overlap keep the executor thread (a
        probe finds them within LONE_PROBE requests), so a GPU model still computes while the
        loop reads the next request.

        On a single core every batch of a CPU-bound model priced up to LONE_BUDGET runs inline,
        callers or not: the executor thread cannot compute while the loop reads requests (they
        share the one core and the GIL), so the hand-off buys no overlap and costs each batch
        its switches (bench MLP on one core, c=4: 1.10× the rows/s over gRPC, 1.18× over HTTP;
        at c=64 its 32-row batches cost over LONE_BUDGET and keep the thread). A model that
        waits (a GPU, I/O) keeps its thread, so the loop reads meanwhile. A lone caller is then
        never known as one (arrivals after batches run inline prove nothing: ``_is_lone``), so
        its requests take the queue, without a plan (``singles_pay``). Sending requests that
        arrived alone to the thread until the caller is known gained 2 % at c=1 (paired p50)
        and cost two callers 10 % of their rows/s over gRPC (interleaved A/B, 5 rounds).

        A model that may block for long (I/O with no timeout) stalls every request once before
        that: its config turns all of these off (``inline_predict: false``).
        """
        if not self.config.inline_predict or not self.curve.ready():
            return False
        cost = self.curve.cost(rows)
        if cost <= INLINE_BUDGET and self._peak_busy <= INLINE_PEAK:
            return True
        if cost > LONE_BUDGET or self._peak_busy > LONE_BUDGET:
            return False
        if self._cores <= 1.0 and self._model_on_cpu:
            return True
        return (
            len(batch) == 1
            and batch[0].lone
            and self._inflight == 1
            and not self._free  # another instance could run a newcomer meanwhile
            and not self._pending
        )

    def _complete(
        self,
        batch: list[_Pending],
        results: list[Outputs],
        batch_rows: int,
        timings: tuple[int, int, int, int, int],
    ) -> None:
        t0, t1, t2, t3, busy = timings
        compute = (t2 - t1) / 1e9
        # The curve learns from the time the model thread was not kept off the CPU by others.
        self.curve.observe(batch_rows, busy / 1e9)
        self._peak_busy = max(0.0 if self._peak_busy == math.inf else self._peak_busy * PEAK_DECAY, busy / 1e9)
        self._stats.record_execution(batch_rows, sum(item.requests for item in batch), t1 - t0, t2 - t1, t3 - t2)
        self.metrics.compute_time.observe(compute)
        self.metrics.batch_size.observe(batch_rows)
        elapsed = (t3 - t0) / 1e9
        if elapsed > 0:
            rate = len(batch) / elapsed
            self._drain_rate += 0.2 * (rate - self._drain_rate)
        self._observe_frontend()
        self._peak_requests = max(self._peak_requests * 0.9, len(self._pending) + self._running_requests)
        for item, result in zip(batch, results):
            queued = t0 - item.arrived_ns
            self._stats.queue.add(queued * item.requests, item.requests)
            for _ in range(item.requests):
                self.metrics.queue_time.observe(queued / 1e9)
            if not item.future.done():
                item.future.set_result(result)

    def _observe_frontend(self) -> None:
        """Fold the CPU used since the last batch into three estimates: the event loop's CPU
        per arrived row (the front-end cost) and per second of wall time (the share of a core
        it uses), and the whole process's share of the cores it may use.

        The loop thread runs the transports, the codecs and this batcher: everything but the
        model, whose instances run in executor threads (the CPU of batches run inline on the
        loop's thread is taken out).
        """
        cpu, wall, rows, process = time.thread_time() - self._inline_cpu, time.monotonic(), self._arrived_rows, time.process_time()
        mark = self._cpu_mark
        self._cpu_mark = (cpu, wall, rows, process)
        if mark is None or rows <= mark[2] or wall <= mark[1]:
            return
        per_row = (cpu - mark[0]) / (rows - mark[2])
        share = (cpu - mark[0]) / (wall - mark[1])
        process_share = (process - mark[3]) / (wall - mark[1]) / self._cores
        if self._frontend_cost == 0.0:
            self._frontend_cost, self._frontend_load, self._process_load = per_row, share, process_share
        else:
            self._frontend_cost += 0.2 * (per_row - self._frontend_cost)
            self._frontend_load += 0.2 * (share - self._frontend_load)
            self._process_load += 0.2 * (process_share - self._process_load)

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        error = exc if isinstance(exc, ServegraphError) else ModelError(
            f"model '{self.model}' version {self.version} failed: {type(exc).__name__}: {exc}"
        )
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _fail_all(self, error: ServegraphError) -> None:
        pending, self._pending = self._pending, []
        self._deadlined = 0
        for item in pending:
            if not item.future.done():
                item.future.set_exception(error)


INLINE_BUDGET = 30e-6
"""Seconds: a batch priced under this runs on the event loop's thread instead of an executor
thread, whose hand-off alone costs more CPU (measured on the hop benchmark's echo model)."""

INLINE_PEAK = 200e-6
"""Seconds: the longest a recent batch may have taken for batches to run inline, the worst
stall an inline batch can cause the event loop once."""

LONE_BUDGET = 2e-3
"""Seconds: a lone caller's batch priced under this runs on the event loop's thread (the
longest the loop then answers nothing else, health checks included)."""

LONE_EVIDENCE = 4
"""Requests in a row that arrived alone, the loop free to see others, before a caller counts as lone."""

LONE_PROBE = 16
"""Every this many lone requests, one runs on the executor thread: with the loop free, a
second caller's request shows itself (it arrives while the probe's waits for its answer)."""

PEAK_DECAY = 0.98
"""How fast the peak batch cost forgets a slow batch (per batch: about 100 batches)."""


ON_CPU_SHARE = 0.4
"""The share of its off-runqueue time a batch's thread must have spent on the CPU to count as
CPU-bound. A CPU-bound model taking turns for the GIL with one busy Python thread (the event
loop) gets about half: at exactly half, one run in many read 0.495 and was priced by its
wall time, twice its cost. A GPU or I/O wait leaves its thread far below."""


class _SchedStat:
    """This thread's /proc schedstat, kept open (a thread-local; closed when the thread ends)."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = -1

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


CPU_BOUND = 0.9
"""The share of its cores the process must use for the batcher to count it CPU-bound: then an
instance waiting for rows wastes nothing (the front end uses the CPU meanwhile)."""


def available_cores() -> float:
    """The cores this process may use: its cgroup's CPU quota (a container's limit) if set,
    else the CPUs it is allowed to run on."""
    cores = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return max(cores, 0.01)


_schedstat = threading.local()


def _runqueue_wait_ns() -> int:
    """Nanoseconds the calling thread has spent runnable but waiting for a CPU (Linux), else 0."""
    stat = getattr(_schedstat, "stat", None)
    if stat is None:
        stat = _schedstat.stat = _SchedStat()
    if stat.fd < 0:
        return 0
    try:
        return int(os.pread(stat.fd, 64, 0).split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _timed_predict(predict: Callable[[Outputs], Outputs], inputs: Outputs) -> tuple[Outputs, int, bool]:
    """Run ``predict`` (in an executor thread); return its outputs, the nanoseconds the
    batch itself cost (what the cost curve wants, not how busy the machine was) and whether
    it kept its thread on the CPU.

    On a core shared with the front end, wall time also counts the waits for a CPU and for
    the GIL (the event loop runs Python between the model's BLAS calls): on one core a 1-row
    batch of the bench MLP measured 892 µs in the server against 493 µs alone, which made
    2-3 row batches look cheaper than single rows. So a model that kept its thread on the CPU
    for at least ON_CPU_SHARE of its off-runqueue time is priced by that thread's CPU time;
    one that mostly sleeps (a GPU wait, a multi-threaded BLAS) by wall time less runqueue waits."""
    waited = _runqueue_wait_ns()
    cpu_start = time.thread_time_ns()
    start = time.perf_counter_ns()
    outputs = predict(inputs)
    elapsed = time.perf_counter_ns() - start
    cpu = time.thread_time_ns() - cpu_start
    off_runqueue = elapsed - (_runqueue_wait_ns() - waited)
    on_cpu = cpu >= ON_CPU_SHARE * off_runqueue
    return outputs, max(cpu if on_cpu else off_runqueue, 1), on_cpu


def warmup_inputs(
    config: ModelConfig, rows: int, dims_for: Callable[[str, int, int], int]
) -> dict[str, np.ndarray]:
    """Sample inputs of ``rows`` rows (no batch dim when batching is off) for warm-up."""
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    for tensor in config.input:
        dims = [dims_for(tensor.name, axis + 1, d) for axis, d in enumerate(tensor.dims)]
        shape = ([rows] if config.max_batch_size > 0 else []) + dims
        if tensor.data_type == "BYTES":
            inputs[tensor.name] = np.full(shape, b"warmup", dtype=np.object_)
        elif tensor.data_type.startswith("FP"):
            dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[tensor.data_type]
            inputs[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif tensor.data_type == "BOOL":
            inputs[tensor.name] = np.zeros(shape, dtype=np.bool_)
        else:
            inputs[tensor.name] = np.zeros(shape, dtype=numpy_dtype(tensor.data_type))
    return inputs
