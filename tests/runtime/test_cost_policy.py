"""The cost-aware batching policy as a pure function, on the cost curve PEERS.md measured
for the benchmark MLP on these machines (single-threaded BLAS: 2-8 row batches cost more
per row than single rows)."""

from __future__ import annotations

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from servegraph.runtime.batching.cost import (
    MAX_STRETCH,
    BatchPolicy,
    CostCurve,
    Plan,
    bucket_ceiling,
    plan_batch,
    singles_pay,
)

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


# --- a saturated core: the front end's CPU per row and the arrival rate ------------------
# The gRPC front end costs about 0.6 ms of event-loop CPU per request on these machines.
FRONTEND = 0.0006


def test_a_saturated_core_waits_past_the_delay_for_a_big_batch() -> None:
    """At c=64 rows stream in at about one per front-end cost: dispatching 12 rows early
    would steal the core from the front end; the window stretches to bring a full batch."""
    now = 0.010
    plan = plan_batch(
        POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND,
        frontend_cost=FRONTEND, last_arrival=now - 0.0002, reachable_rows=64, idle_since=now,
    )
    assert plan.rows == 0
    assert now < plan.wait_until <= now + 3 * FRONTEND, "re-plans by the time the stream would have paused"
    unsaturated = plan_batch(POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND)
    assert unsaturated.rows > 0, "the plain 1 ms window has long expired"


def test_the_stretched_window_is_bounded() -> None:
    slow_frontend = 0.01  # 32 rows x 10 ms would be 320 ms: capped at MAX_STRETCH
    now = MAX_STRETCH + 0.001
    plan = plan_batch(
        POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=now, arrival_rate=1 / slow_frontend,
        frontend_cost=slow_frontend, last_arrival=now, reachable_rows=64, idle_since=0.0,
    )
    assert plan.rows > 0


def test_a_saturated_core_dispatches_once_arrivals_pause() -> None:
    now = 0.010
    plan = plan_batch(
        POLICY, PEERS_CURVE, 12, first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND,
        frontend_cost=FRONTEND, last_arrival=now - 4 * FRONTEND, reachable_rows=64,
        idle_since=now - 4 * FRONTEND,
    )
    assert plan.rows >= 8


def test_a_few_callers_are_never_waited_for() -> None:
    """A closed loop of 4 callers keeps at most 4 rows queued: no wait for 8 or 16."""
    now = 0.010
    plan = plan_batch(
        POLICY, PEERS_CURVE, 4, first_arrival=now, now=now, arrival_rate=1 / FRONTEND,
        frontend_cost=FRONTEND, last_arrival=now, reachable_rows=4, idle_since=now,
    )
    assert plan.rows > 0


@pytest.mark.parametrize("queued", [1, 2, 3])
def test_a_lone_caller_keeps_its_latency(queued: int) -> None:
    """c=1: arrivals are one per round trip (front end + model + client), the load is low,
    and nothing changes from the unsaturated policy."""
    rate = 1 / (FRONTEND + 1 / 1165 + 0.0005)
    saturated_args = dict(frontend_cost=FRONTEND, last_arrival=0.0, reachable_rows=2, idle_since=0.0)
    assert plan_batch(POLICY, PEERS_CURVE, queued, 0.0, 0.0, rate, **saturated_args) == plan_batch(
        POLICY, PEERS_CURVE, queued, 0.0, 0.0, rate
    )
    assert plan_batch(POLICY, PEERS_CURVE, 1, 0.0, 0.0, rate, **saturated_args) == Plan(1)


def test_a_size_is_priced_at_what_it_costs_even_when_a_bigger_one_is_cheaper() -> None:
    """Nothing pads an unbucketed batch, so 3 rows cost what 3 rows measured, not the cheaper
    4 (single-threaded BLAS: PEERS.md's 2-row batch is dearer than its 4-row one)."""
    curve = CostCurve({1: 0.0005, 3: 0.0027, 4: 0.0016})
    assert curve.cost(3) == pytest.approx(0.0027)
    plan = plan_batch(POLICY, curve, 3, first_arrival=0.0, now=0.0, arrival_rate=0.0)
    assert plan == Plan(1)  # 1 row at 2,000 rows/s beats 3 at 1,111
    curve.observe(3, 0.0012)  # what a size costs is learnt from its executions
    assert curve.cost(3) == pytest.approx(0.0027 + 0.2 * (0.0012 - 0.0027))


def test_many_callers_on_a_shared_machine_count_as_saturation() -> None:
    """Other processes on the core deflate the front end's share; callers that keep half a
    full batch queued still mark a saturated core, a busy front end with few callers does not."""
    now = 0.010
    common = dict(first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND, frontend_cost=FRONTEND,
                  frontend_load=0.3, last_arrival=now, idle_since=now)
    assert plan_batch(POLICY, PEERS_CURVE, 12, reachable_rows=30, **common).rows == 0
    assert plan_batch(POLICY, PEERS_CURVE, 12, reachable_rows=12, **common).rows > 0


def test_a_saturated_core_waits_for_as_many_rows_as_the_callers_have() -> None:
    """30 callers in flight: the batch to wait for is 30 rows, not a 32 that never fills."""
    now = 0.010
    plan = plan_batch(
        POLICY, PEERS_CURVE, 24, first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND,
        frontend_cost=FRONTEND, last_arrival=now, reachable_rows=30, idle_since=now,
    )
    assert plan.rows == 0 and plan.wait_until <= now + 6 * FRONTEND + 1e-9
    assert plan_batch(
        POLICY, PEERS_CURVE, 30, first_arrival=0.0, now=now, arrival_rate=1 / FRONTEND,
        frontend_cost=FRONTEND, last_arrival=now, reachable_rows=30, idle_since=now,
    ) == Plan(30)


def test_a_cpu_bound_process_waits_for_its_few_callers_rows() -> None:
    """c=4 on one core: the front end uses 40 % of it and the model the rest. Dispatching the
    first row alone idles nothing (the front end is decoding the other three meanwhile), so a
    process using all its CPU waits for the 4-row batch that costs less per row; with CPU to
    spare the same queue runs at once."""
    curve = CostCurve({1: 0.0005, 2: 0.0019, 4: 0.0016, 8: 0.0021})
    now = 0.010
    common = dict(first_arrival=now, now=now, arrival_rate=1 / FRONTEND, frontend_cost=FRONTEND,
                  frontend_load=0.4, last_arrival=now, reachable_rows=4, idle_since=now)
    waiting = plan_batch(POLICY, curve, 1, cpu_bound=True, **common)
    assert waiting.rows == 0 and waiting.target == 4
    assert plan_batch(POLICY, curve, 1, cpu_bound=False, **common) == Plan(1)


def test_singles_pay_where_no_batch_the_callers_can_form_is_cheaper_per_row() -> None:
    """On the peers' curve 2 and 4 rows cost more per row than one, 8 less: four callers need
    no plan, eight do; neither does a full queue (it takes a full batch)."""
    assert singles_pay(POLICY, PEERS_CURVE, 3)
    assert singles_pay(POLICY, PEERS_CURVE, 4)
    assert not singles_pay(POLICY, PEERS_CURVE, 8)
    assert not singles_pay(POLICY, PEERS_CURVE, 32)
    assert not singles_pay(POLICY, CostCurve(), 4), "no curve yet: the delay window applies"
    assert not singles_pay(BatchPolicy(max_rows=32, max_delay=0.001, cost_aware=False), PEERS_CURVE, 4)


@settings(max_examples=300, deadline=None)
@given(
    single=st.floats(1e-5, 1e-2),
    # a size's cost per row over a single row's, ties included
    per_row=st.dictionaries(st.integers(2, 32), st.one_of(st.just(1.0), st.floats(0.5, 3.0))),
    reachable=st.integers(1, 40),
    queued=st.integers(1, 40),
    rate=st.floats(0.0, 1e6),
    frontend_cost=st.floats(0.0, 1e-3),
    frontend_load=st.floats(0.0, 1.0),
    since_arrival=st.floats(0.0, 0.01),
    cpu_bound=st.booleans(),
)
# A tie: 9 rows cost exactly 9 single rows, so sizes in between interpolate to a tie, give or
# take a rounding that once made 2 rows look a hair cheaper than 2 single rows.
@example(single=0.009213925010750714, per_row={9: 1.0}, reachable=6, queued=2, rate=0.0,
         frontend_cost=0.0, frontend_load=0.0, since_arrival=0.0, cpu_bound=False)
def test_where_singles_pay_every_plan_takes_one_row_at_once(
    single: float, per_row: dict[int, float], reachable: int, queued: int, rate: float, frontend_cost: float,
    frontend_load: float, since_arrival: float, cpu_bound: bool,
) -> None:
    """The batcher skips planning where ``singles_pay``: that is only sound if the plan, for any
    queue the callers can have and any load, would have been one row now."""
    curve = CostCurve({1: single, **{rows: single * rows * factor for rows, factor in per_row.items()}})
    assume(queued <= reachable and singles_pay(POLICY, curve, reachable))
    plan = plan_batch(
        POLICY, curve, queued, first_arrival=0.0, now=since_arrival, arrival_rate=rate,
        frontend_cost=frontend_cost, frontend_load=frontend_load, last_arrival=since_arrival,
        reachable_rows=reachable, cpu_bound=cpu_bound,
    )
    assert plan == Plan(1)
