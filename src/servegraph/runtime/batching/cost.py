"""What a batch of n rows costs, and when to dispatch: the cost-aware batching policy.

The peers' lesson on CPUs: a 2-8 row batch can cost more per row than single rows
(single-threaded BLAS switches from a vector to a matrix kernel), so a batcher that merges
whatever arrived within the delay window loses to no batching at low load. Warm-up runs
every batch size anyway; we time those runs, keep the curve fresh with every real
execution, and choose batch sizes from it:

* an idle instance takes, from what is queued, the batch size with the best rows/second;
* it waits (never past the queue delay, counted from the first arrival) only when the rows
  expected to arrive meanwhile would make a batch whose rows/second, idle time included,
  beats dispatching now.

A saturated core changes the sums. The front end (transport, decoding, answering) shares the
core with the model. When the front end uses at least ``SATURATED`` of the core (measured
from the event loop's CPU time, or the arrival rate times its CPU per row), or half that
while callers keep over half a full batch queued, a small batch dispatched early steals CPU
the front end needed and buys nothing: the rows it leaves behind arrive anyway, just later.
The same holds whenever the whole process uses all the CPU it may (``cpu_bound``: on one core, a
few closed-loop callers whose front-end work and model runs take turns), even with the front
end under half of it. So while the core is saturated *and rows are still streaming in* (the last one came, or the
instance went idle, within ``STREAM_GAPS`` rows' worth of front-end work), the window
stretches to the time the front end needs to bring a full batch (counted from when the
instance went idle), and the instance's idle time costs nothing: the front end is using the
core meanwhile. When arrivals pause, the plain window applies; and no policy waits for more
rows than the callers can have queued (a closed loop of few callers).

The curve prices n rows at what n rows cost, even where a bigger batch costs less: the batcher
does not pad (only shape buckets do, and they are priced at the bucket). Single-threaded
OpenBLAS runs the bench MLP's 3 rows in 2.7 ms and 4 rows in 1.6 ms; a curve capped by bigger
sizes priced 3 rows at 1.6 ms and formed 3-row batches that cost 3.3 ms in the server.
Warm-up keeps the best of several timed runs per size, and every execution updates its size.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class CostCurve:
    """Seconds per execution by batch size, measured; linear in between and beyond."""

    points: dict[int, float] = field(default_factory=dict)
    alpha: float = 0.2
    _table: dict[int, float] | None = field(default=None, repr=False, compare=False)

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one measured execution into the curve (exponentially weighted)."""
        old = self.points.get(rows)
        self.points[rows] = seconds if old is None else old + self.alpha * (seconds - old)
        self._table = None

    def cost(self, rows: int) -> float:
        table = self._table
        if table is None:
            table = self._table = dict(self.points)
        found = table.get(rows)
        return found if found is not None else self._interpolate(rows, table)

    def _interpolate(self, rows: int, points: dict[int, float]) -> float:
        if not points:
            return float(rows)
        sizes = sorted(points)
        i = bisect.bisect_left(sizes, rows)
        if i == 0:
            lo, hi = sizes[0], sizes[0]
        elif i == len(sizes):
            lo, hi = sizes[-1], sizes[-1]
        else:
            lo, hi = sizes[i - 1], sizes[i]
        if lo == hi:
            return points[lo] * rows / lo
        frac = (rows - lo) / (hi - lo)
        return points[lo] + frac * (points[hi] - points[lo])

    def ready(self) -> bool:
        return bool(self.points)


def bucket_ceiling(rows: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``rows`` (``rows`` itself when there are no buckets)."""
    if not buckets:
        return rows
    i = bisect.bisect_left(buckets, rows)
    return buckets[i] if i < len(buckets) else rows


SATURATED = 0.5
"""The share of a core the front end uses (measured, or arrival rate × front-end CPU per row)
from which the core counts as saturated: the model has at most the other half."""
STREAM_GAPS = 3.0
"""Rows still stream in while the last arrived within this many rows' worth of front-end CPU."""
MAX_STRETCH = 0.05
"""Seconds: a saturated core's window never stretches past this, whatever the front end costs."""


@dataclass(slots=True, frozen=True)
class Plan:
    """Dispatch ``rows`` rows now, or (rows == 0) wait until ``wait_until`` and re-plan."""

    rows: int
    wait_until: float = 0.0
    target: int = 0
    """When waiting: the batch size waited for (0: re-plan on every arrival)."""


@dataclass(slots=True, frozen=True)
class BatchPolicy:
    """The static part of a model's batching setup."""

    max_rows: int
    max_delay: float
    """Seconds, counted from the first queued request's arrival."""
    preferred: tuple[int, ...] = ()
    buckets: tuple[int, ...] = ()
    cost_aware: bool = True

    def candidate_sizes(self) -> list[int]:
        """Batch sizes worth comparing: buckets, or powers of two, preferred sizes and the max."""
        if self.buckets:
            return [b for b in self.buckets if b <= self.max_rows]
        sizes = {self.max_rows, *self.preferred}
        size = 1
        while size < self.max_rows:
            sizes.add(size)
            size *= 2
        return sorted(sizes)


def plan_batch(
    policy: BatchPolicy,
    curve: CostCurve,
    queued_rows: int,
    first_arrival: float,
    now: float,
    arrival_rate: float,
    frontend_cost: float = 0.0,
    frontend_load: float | None = None,
    last_arrival: float | None = None,
    reachable_rows: int | None = None,
    idle_since: float | None = None,
    cpu_bound: bool = False,
) -> Plan:
    """Decide what an idle model instance does with ``queued_rows`` compatible rows.

    ``arrival_rate`` is rows per second; ``frontend_cost`` the event loop's CPU seconds per
    row outside the model (0: unknown); ``frontend_load`` the share of a core the front end
    has been using (None: ``arrival_rate * frontend_cost``); ``last_arrival`` when the
    newest row arrived; ``reachable_rows`` how many rows the callers can have queued at once
    (None: unknown), so a closed loop of 4 callers never waits for an 8-row batch and 30
    callers are waited for as 30 rows, not 32; ``idle_since`` when this instance started
    looking for work (None: at ``first_arrival``); ``cpu_bound`` whether the whole process
    has been using all the CPU it may use (the front end and the model share it).
    """
    cap = min(queued_rows, policy.max_rows)
    if cap >= policy.max_rows:
        return Plan(policy.max_rows)
    window_end = first_arrival + policy.max_delay
    if not policy.cost_aware or not curve.ready():
        # Triton's behaviour: the largest preferred size we have, else wait out the delay.
        reached = [p for p in policy.preferred if p <= cap]
        if reached:
            return Plan(max(reached))
        if now >= window_end:
            return Plan(cap)
        return Plan(0, window_end)

    buckets = list(policy.buckets)

    def throughput(rows: int, idle: float = 0.0) -> float:
        return rows / (idle + curve.cost(bucket_ceiling(rows, buckets)))

    # rows / cost(rows) peaks at a measured size, a bucket or the cap: the curve is linear in
    # between (and rows / (a + b * rows) is monotone), a bucket's cost is flat below it. So
    # those are the only sizes to compare; this runs on every arrival while an instance waits.
    sizes = {1, cap, *(p for p in curve.points if p < cap), *(b for b in buckets if b < cap)}
    best_rows, best = 1, throughput(1)
    for rows in sorted(sizes):
        value = throughput(rows)
        if value >= best:
            best_rows, best = rows, value
    idle_share = 1.0
    wake_by = math.inf
    load = arrival_rate * frontend_cost if frontend_load is None else frontend_load
    idle_from = first_arrival if idle_since is None else max(idle_since, first_arrival)
    last_event = idle_from if last_arrival is None else max(last_arrival, idle_from)
    # Callers that keep over half a full batch queued while the front end is busy at all saturate
    # the core too: on a machine shared with other work the front end's share reads low.
    crowded = reachable_rows is not None and 2 * reachable_rows > policy.max_rows and load >= SATURATED / 2
    if (load >= SATURATED or crowded or cpu_bound) and now < last_event + STREAM_GAPS * frontend_cost:
        # Saturated and still streaming: waiting lets the front end use the core.
        window_end = max(window_end, idle_from + min(policy.max_rows * frontend_cost, MAX_STRETCH))
        idle_share = 0.0  # rows keep coming: the front end is using the core meanwhile
        wake_by = last_event + STREAM_GAPS * frontend_cost
    if now < window_end and arrival_rate > 0:
        targets = policy.candidate_sizes()
        if reachable_rows is not None:
            # No more rows than the callers have had in flight lately: the rest will not come.
            targets = sorted({min(t, reachable_rows) for t in targets})
        for target in targets:
            if target <= cap:
                continue
            wait = (target - queued_rows) / arrival_rate
            if now + wait > window_end:
                break
            # Waiting must win clearly: the arrival rate is an estimate.
            if throughput(target, wait * idle_share) > 1.1 * best:
                # Re-plan when the rows should be here, or when the stream should have paused.
                return Plan(0, min(now + wait, wake_by), target)
    return Plan(best_rows)


def singles_pay(policy: BatchPolicy, curve: CostCurve, reachable_rows: int) -> bool:
    """Whether every batch of 2 to ``reachable_rows`` rows runs fewer rows per second than
    single rows: then ``plan_batch`` takes one row at once and never waits, whatever is queued
    (up to ``reachable_rows``), so a batcher of 1-row requests need not plan.

    On a CPU a few callers' batches often cost more per row than single rows (one BLAS thread
    ran the bench MLP's 1 row in 478 µs, 2 rows in 2,665 and 4 in 2,682): at c=4 every plan
    picked 1 row, and planning cost each request about 22 µs of the loop's CPU that batching
    off does not spend. Rows per second peak at a measured size or at the largest size (the
    curve is linear in between), so those are the sizes compared, as in ``plan_batch``.
    """
    if policy.buckets or not policy.cost_aware or not curve.ready() or reachable_rows >= policy.max_rows:
        return False  # (a full queue dispatches a full batch, whatever it costs)
    # A tie goes to the batch, as in ``plan_batch``, with room for the rounding of the curve's
    # interpolation: a size between two compared ones must not come out a hair cheaper.
    single = curve.cost(1) * (1.0 + TIE)
    if reachable_rows > 1 and curve.cost(reachable_rows) <= reachable_rows * single:
        return False
    return all(seconds > rows * single for rows, seconds in curve.points.items() if 1 < rows < reachable_rows)


TIE = 1e-9
"""Relative difference in cost per row under which ``singles_pay`` counts a batch as tied
with single rows (and so as paying)."""
