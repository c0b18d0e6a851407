"""The cost-aware batching policy as a pure function, on the cost curve PEERS.md measured
for the benchmark MLP on these machines (single-threaded BLAS: 2-8 row batches cost more
per row than single rows)."""

from __future__ import annotations

import pytest

from servegraph.runtime.batching.cost import BatchPolicy, CostCurve, Plan, bucket_ceiling, plan_batch

# rows -> seconds, from PEERS.md's rows/s: 1: 1165, 2: 422, 4: 881, 8: 1581, 16: 2547, 32: 3839
PEERS_CURVE = CostCurve({1: 1 / 1165, 2: 2 / 422, 4: 4 / 881, 8: 8 / 1581, 16: 16 / 2547, 32: 32 / 3839})
POLICY = BatchPolicy(max_rows=32, max_delay=0.001)


def test_a_full_batch_goes_at_once() -> None:
    assert plan_batch(POLICY, PEERS_CURVE, 40, first_arrival=0.0, now=0.0, arrival_rate=0.0) == Plan(32)


@pytest.mark.parametrize("queued", [1, 2, 3, 5])
def test_small_queues_run_single_rows_where_they_are_cheaper(queued: int) -> None:
    """Where Triton's batcher forms 2-8 row batches and loses to no batching."""
    plan = plan_batch(POLICY, PEERS_CURVE, queued, first_arrival=0.0, now=0.0, arrival_rate=500.0)
    assert plan == Plan(1)


def test_a_deep_queue_takes_a_big_batch() -> None:
    plan = plan_batch(POLICY, PEERS_CURVE, 20, first_arrival=0.0, now=0.0, arrival_rate=0.0)
    assert plan.rows >= 16


def test_waits_only_when_arrivals_make_a_better_batch_inside_the_window() -> None:
    busy = plan_batch(POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=0.0, arrival_rate=100_000.0)
    assert busy.rows == 0 and 0.0 < busy.wait_until <= 0.001
    quiet = plan_batch(POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=0.0, arrival_rate=100.0)
    assert quiet.rows > 0
    expired = plan_batch(POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=0.002, arrival_rate=100_000.0)
    assert expired.rows > 0, "never waits past the queue delay"


def test_fixed_delay_is_tritons_behaviour() -> None:
    policy = BatchPolicy(max_rows=32, max_delay=0.001, preferred=(4, 8), cost_aware=False)
    assert plan_batch(policy, PEERS_CURVE, 3, 0.0, 0.0005, 0.0) == Plan(0, 0.001)
    assert plan_batch(policy, PEERS_CURVE, 3, 0.0, 0.001, 0.0) == Plan(3)
    assert plan_batch(policy, PEERS_CURVE, 9, 0.0, 0.0, 0.0) == Plan(8)


def test_no_curve_falls_back_to_the_delay_window() -> None:
    assert plan_batch(POLICY, CostCurve(), 3, 0.0, 0.0, 0.0) == Plan(0, 0.001)


def test_buckets_price_the_padded_size() -> None:
    curve = CostCurve({1: 0.001, 8: 0.0011})
    policy = BatchPolicy(max_rows=8, max_delay=0.0, buckets=(1, 8))
    assert bucket_ceiling(3, [1, 8]) == 8
    assert plan_batch(policy, curve, 3, 0.0, 0.0, 0.0) == Plan(3)


def test_the_curve_learns_from_executions() -> None:
    curve = CostCurve({1: 0.001, 4: 0.004})
    assert curve.cost(2) == pytest.approx(0.002)
    assert curve.cost(8) == pytest.approx(0.008)
    for _ in range(50):
        curve.observe(4, 0.002)
    assert curve.cost(4) == pytest.approx(0.002, rel=0.01)
