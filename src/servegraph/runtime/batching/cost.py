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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(slots=True)
class CostCurve:
    """Seconds per execution by batch size, measured; linear in between and beyond."""

    points: dict[int, float] = field(default_factory=dict)
    alpha: float = 0.2

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one measured execution into the curve (exponentially weighted)."""
        old = self.points.get(rows)
        self.points[rows] = seconds if old is None else old + self.alpha * (seconds - old)

    def cost(self, rows: int) -> float:
        if not self.points:
            return float(rows)
        if rows in self.points:
            return self.points[rows]
        sizes = sorted(self.points)
        i = bisect.bisect_left(sizes, rows)
        if i == 0:
            lo, hi = sizes[0], sizes[0]
        elif i == len(sizes):
            lo, hi = sizes[-1], sizes[-1]
        else:
            lo, hi = sizes[i - 1], sizes[i]
        if lo == hi:
            return self.points[lo] * rows / lo
        frac = (rows - lo) / (hi - lo)
        return self.points[lo] + frac * (self.points[hi] - self.points[lo])

    def ready(self) -> bool:
        return bool(self.points)


def bucket_ceiling(rows: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``rows`` (``rows`` itself when there are no buckets)."""
    if not buckets:
        return rows
    i = bisect.bisect_left(buckets, rows)
    return buckets[i] if i < len(buckets) else rows


@dataclass(slots=True, frozen=True)
class Plan:
    """Dispatch ``rows`` rows now, or (rows == 0) wait until ``wait_until`` and re-plan."""

    rows: int
    wait_until: float = 0.0


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
) -> Plan:
    """Decide what an idle model instance does with ``queued_rows`` compatible rows."""
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

    def throughput(rows: int, idle: float = 0.0) -> float:
        return rows / (idle + curve.cost(bucket_ceiling(rows, list(policy.buckets))))

    best_rows, best = 1, throughput(1)
    for rows in range(2, cap + 1):
        value = throughput(rows)
        if value >= best:
            best_rows, best = rows, value
    if now < window_end and arrival_rate > 0:
        for target in policy.candidate_sizes():
            if target <= cap:
                continue
            wait = (target - queued_rows) / arrival_rate
            if now + wait > window_end:
                break
            # Waiting must win clearly: the arrival rate is an estimate.
            if throughput(target, wait) > 1.1 * best:
                return Plan(0, now + wait)
    return Plan(best_rows)
