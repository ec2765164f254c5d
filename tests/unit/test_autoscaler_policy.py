"""The autoscaling policy as an operator would see it: replica counts and reasons per tick."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from batchline.autoscaler.policy import REQUESTS, TOKENS, Decision, MetricSample, ScalerState, decide, pressure
from batchline.autoscaler.spec import AutoscalingSpec

SPEC = AutoscalingSpec(min_replicas=1, max_replicas=20, target_latency_ms=10_000)
NAN = math.nan


def sample(t: float, rate: float, pending: float = 0.0, latency: float = 2000.0) -> MetricSample:
    return MetricSample(timestamp=t, request_rate=rate, pending=pending, latency_ms=latency, queue_ms=50.0)


def learnt(capacity: float, ready: int) -> ScalerState:
    """A policy that has learnt `capacity` req/s per replica on a pool steady since t=0."""
    return ScalerState(unit=REQUESTS, capacity=capacity, ready=ready, ready_since=0.0)


def cliff(per_replica: float) -> float:
    """A batching server's p95: flat until it saturates at 0.8 req/s per replica, then far over."""
    return 2000.0 if per_replica <= 0.8 else 40_000.0


def run_ticks(
    decision_state: ScalerState,
    replicas: int,
    rate: float,
    start: float,
    ticks: int,
    latency: Callable[[float], float] = lambda _: 9000.0,
) -> list[Decision]:
    """Feed the same load every 15 s; the pool instantly becomes what the policy asks for.

    The default latency sits in the band where the policy neither raises nor cuts capacity.
    """
    decisions, state = [], decision_state
    for i in range(ticks):
        now = start + 15 * i
        d = decide([sample(now, rate, latency=latency(rate / replicas))], replicas, replicas, SPEC, state, now)
        decisions.append(d)
        state, replicas = d.state, d.replicas
    return decisions


def test_spec_defaults_and_crd_names() -> None:
    spec = AutoscalingSpec.from_crd({})
    assert (spec.min_replicas, spec.max_replicas, spec.target_latency_ms) == (1, 4, 2000)
    assert (spec.latency_quantile, spec.scale_down_stabilization_seconds, spec.cold_start_seconds) == (0.95, 300, 60)
    assert (spec.max_scale_up_step, spec.max_scale_down_step, spec.tolerance, spec.enabled) == (4, 1, 0.1, True)
    custom = AutoscalingSpec.from_crd({"maxReplicas": 8, "targetLatencyMs": 1500, "latencyQuantile": 0.99})
    assert (custom.max_replicas, custom.target_latency_ms, custom.latency_quantile) == (8, 1500, 0.99)
    assert AutoscalingSpec.from_crd(custom.to_crd()) == custom


@pytest.mark.parametrize(
    ("crd", "message"),
    [
        ({"latencyQuantile": 0.8}, "latencyQuantile"),
        ({"minReplicas": 5, "maxReplicas": 2}, "maxReplicas"),
        ({"maxReplica": 3}, "unknown"),
        ({"enabled": "yes"}, "boolean"),
        ({"minReplicas": 1.5}, "integer"),
    ],
)
def test_spec_rejects_bad_values(crd: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoscalingSpec.from_crd(crd)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (sample(100, NAN), "request_rate is nan"),
        (sample(100, 2.0, pending=NAN), "pending is nan"),
        (sample(10, 2.0), "stale"),
    ],
)
def test_missing_nan_or_stale_signals_hold_with_reason(bad: MetricSample, why: str) -> None:
    d = decide([bad], 5, 5, SPEC, learnt(1.0, 5), now=100)
    assert d.replicas == 5  # never drops to minReplicas by accident
    assert why in d.reason and d.reason.startswith("hold at 5")


def test_no_samples_holds_but_honours_bounds() -> None:
    assert decide([], 3, 3, SPEC, ScalerState(), 0).reason == "hold at 3: no metric samples"
    clamped = decide([], 30, 30, SPEC, ScalerState(), 0)
    assert clamped.replicas == 20 and "min/max" in clamped.reason


def test_disabled_never_changes_replicas() -> None:
    d = decide([sample(0, 50.0, pending=500)], 2, 2, replace(SPEC, enabled=False), ScalerState(), 0)
    assert (d.replicas, d.reason) == (2, "autoscaling disabled")


def test_growing_queue_scales_up_at_once_in_bounded_steps() -> None:
    state = learnt(1.0, 2)
    calm = decide([sample(0, 2.0)], 2, 2, SPEC, state, 0)
    assert calm.replicas == 2
    burst = decide([sample(15, 2.0, pending=120)], 2, 2, SPEC, calm.state, 15)
    assert burst.replicas == 2 + SPEC.max_scale_up_step
    assert "scale up 2->6" in burst.reason and "step limited" in burst.reason


def test_the_first_sample_gives_a_capacity_and_a_queue_on_it_scales_up() -> None:
    """What the pool completed per ready replica is a lower bound of its capacity, known at once:
    a queue on the very first sample is sized with it instead of waiting for a steady minute."""
    d = decide([sample(15, 1.0, pending=30)], 1, 1, SPEC, ScalerState(), 15)
    assert d.state.capacity == 1.0
    assert d.replicas == 2 and "backlog 30" in d.reason
    starting = decide([sample(30, 1.0, pending=32)], 2, 1, SPEC, d.state, 30)
    assert starting.replicas == 2  # the queue barely grew and a replica is starting: wait for it


def test_replicas_still_starting_count_towards_capacity() -> None:
    state = learnt(1.0, 2)
    d = decide([sample(0, 2.0, pending=300)], 2, 2, SPEC, state, 0)
    assert d.replicas == 6
    # 30 s later the four new replicas are still starting and will drain the queue: add nothing.
    later = decide([sample(30, 2.0, pending=300)], 6, 2, SPEC, d.state, 30)
    assert later.replicas == 6


def test_max_and_min_bound_the_result() -> None:
    small = replace(SPEC, max_replicas=3)
    d = decide([sample(0, 50.0, pending=400)], 2, 2, small, learnt(1.0, 2), 0)
    assert d.replicas == 3 and "max 3" in d.reason
    idle = run_ticks(learnt(1.0, 4), 4, 0.0, 0, 40)
    assert idle[-1].replicas == SPEC.min_replicas
    assert "no traffic" in idle[-1].reason


def test_scale_down_waits_for_window_then_steps_one_at_a_time() -> None:
    high = run_ticks(learnt(1.0, 8), 8, 8.0, 0, 4)
    assert [d.replicas for d in high] == [8, 8, 8, 8]
    low = run_ticks(high[-1].state, 8, 2.0, 60, 60)
    replicas = [d.replicas for d in low]
    first_drop = next(i for i, n in enumerate(replicas) if n < 8)
    assert first_drop * 15 >= SPEC.scale_down_stabilization_seconds
    assert any("stabilization (300s) keeps 8" in d.reason for d in low[:first_drop])
    assert all(a - b <= SPEC.max_scale_down_step for a, b in itertools.pairwise(replicas))
    assert replicas[-1] < 8


def test_small_changes_inside_tolerance_hold() -> None:
    d = run_ticks(learnt(1.0, 4), 4, 3.7, 0, 30)
    assert {x.replicas for x in d} == {4}
    assert "within tolerance" in d[-1].reason


def test_no_scale_down_while_latency_is_over_target() -> None:
    d = run_ticks(learnt(1.0, 8), 8, 1.0, 0, 40, latency=lambda _: 15_000.0)
    assert {x.replicas for x in d} == {8}
    assert "over target, no scale-down" in d[-1].reason


def test_constant_load_gives_zero_scale_events_once_settled() -> None:
    d = run_ticks(learnt(0.5, 1), 1, 3.0, 0, 480, latency=cliff)
    counts = [x.replicas for x in d]
    assert set(counts[240:]) == {4}, counts  # 3 req/s at <= 0.8 per replica, after 1 hour


def test_latency_over_target_near_plan_cuts_capacity_and_sets_ceiling() -> None:
    state = learnt(1.0, 4)
    d = decide([sample(120, 4.0, latency=40_000)], 4, 4, SPEC, state, 120)
    assert d.state.capacity == pytest.approx(0.5)
    assert d.state.capacity_ceiling == pytest.approx(1.0)
    assert d.replicas > 4


def test_a_failed_estimate_stays_a_ceiling_when_the_load_moves() -> None:
    """After a miss at 1 req/s per replica, a busier but comfortable pool probes up to the ceiling, not past
    it: the ceiling used to lapse whenever the demand moved by 2x tolerance, so bursty traffic ran into
    the same miss again and again."""
    missed = decide([sample(120, 4.0, latency=40_000)], 4, 4, SPEC, learnt(1.0, 4), 120)
    assert missed.state.capacity_ceiling == pytest.approx(1.0)
    later = run_ticks(missed.state, missed.replicas, 6.0, 135, 80, latency=lambda _: 1000.0)
    assert max(d.state.capacity or 0 for d in later) == pytest.approx(0.9)  # ceiling x (1 - tolerance)
    assert min(d.replicas for d in later) >= 7  # never shrunk into the load per replica that missed


def test_a_ceiling_lapses_when_the_pool_serves_more_than_it_within_target() -> None:
    state = replace(learnt(0.9, 4), capacity_ceiling=1.0)
    d = decide([sample(120, 4.4, latency=1000)], 4, 4, SPEC, state, 120)  # 1.1 per replica, far under target
    assert d.state.capacity_ceiling is None
    assert d.state.capacity is not None and d.state.capacity > 1.1


def test_comfortable_latency_at_plan_raises_capacity() -> None:
    d = decide([sample(120, 4.0, latency=1000)], 4, 4, SPEC, learnt(1.0, 4), 120)
    assert d.state.capacity is not None and d.state.capacity > 1.0


def test_no_probing_up_while_requests_wait() -> None:
    """A lagging quantile can look comfortable while a queue builds: the queue wins."""
    d = decide([sample(120, 4.0, pending=20, latency=1000)], 4, 4, SPEC, learnt(1.0, 4), 120)
    assert d.state.capacity == 1.0


def test_a_queue_far_under_every_target_raises_the_estimate_to_what_the_pool_completes() -> None:
    """One replica at the gateway's in-flight limit: requests wait, but its latency is a tenth of the
    target, so what it completes it serves within target, and the estimate (a low first bound) rises
    to that instead of growing the pool on it. Near the target a wait may be the knee, which the
    quantile shows only later: there the estimate stays and the queue adds replicas."""
    far = decide([sample(120, 4.0, pending=3, latency=1000)], 1, 1, SPEC, learnt(1.0, 1), 120)
    assert far.state.capacity == pytest.approx(4.0) and far.replicas == 1
    near = decide([sample(120, 4.0, pending=3, latency=7000)], 1, 1, SPEC, learnt(1.0, 1), 120)
    assert near.state.capacity == 1.0 and near.replicas > 1


def test_unsteady_pool_teaches_nothing() -> None:
    state = replace(learnt(1.0, 4), ready_since=100.0)
    d = decide([sample(120, 4.0, latency=40_000)], 6, 4, SPEC, state, 120)
    assert d.state.capacity == 1.0


def token_sample(
    t: float, rate: float, prompt: float, output: float, pending: float = 0.0, running: float = 10.0, **slo: float
) -> MetricSample:
    """A sample from the in-flight engine: requests/s, prompt and output tokens/s, TTFT/TPOT means."""
    return MetricSample(
        timestamp=t,
        request_rate=rate,
        pending=pending,
        prompt_tokens_rate=prompt,
        output_tokens_rate=output,
        running=running,
        ttft_mean_ms=slo.get("ttft_mean", 200.0),
        tpot_mean_ms=slo.get("tpot_mean", 20.0),
        ttft_ms=slo.get("ttft", 400.0),
        tpot_ms=slo.get("tpot", 30.0),
        latency_ms=slo.get("latency", 3000.0),
    )


TTFT_SPEC = AutoscalingSpec(
    min_replicas=1, max_replicas=100, target_time_to_first_token_ms=1000, target_time_per_output_token_ms=50
)


def tokens_learnt(capacity: float, ready: int, weight: float = 0.1) -> ScalerState:
    return ScalerState(unit=TOKENS, capacity=capacity, prompt_weight=weight, ready=ready, ready_since=0.0)


def test_spec_targets_any_subset_and_zero_turns_latency_off() -> None:
    both = AutoscalingSpec.from_crd({"targetTimeToFirstTokenMs": 500, "targetTimePerOutputTokenMs": 40})
    assert both.targets_ms() == {"latency": 2000, "ttft": 500, "tpot": 40}  # 2000: as the API server defaults it
    ttft = AutoscalingSpec.from_crd({"targetLatencyMs": 0, "targetTimeToFirstTokenMs": 500})
    assert ttft.targets_ms() == {"ttft": 500}
    with pytest.raises(ValueError, match="at least one"):
        AutoscalingSpec.from_crd({"targetLatencyMs": 0})
    with pytest.raises(ValueError, match="targetTimePerOutputTokenMs"):
        AutoscalingSpec.from_crd({"targetTimePerOutputTokenMs": -1})


def test_pressure_is_the_worst_target_that_is_set() -> None:
    s = token_sample(0, 1.0, 1000, 100, ttft=1500.0, tpot=20.0, latency=90_000.0)
    assert pressure(s, TTFT_SPEC) == (1.5, "ttft")  # the e2e latency is not a target here
    assert pressure(replace(s, ttft_ms=NAN, tpot_ms=NAN), TTFT_SPEC)[1] == ""


def test_demand_is_counted_in_tokens_so_shorter_requests_are_not_more_load() -> None:
    # 4 req/s of 2,000 prompt and 100 output tokens; the same tokens as 16 req/s of a quarter the size.
    few = run_token_ticks(tokens_learnt(300.0, 4), 4, rate=4.0, prompt=8000.0, output=400.0)
    many = run_token_ticks(tokens_learnt(300.0, 4), 4, rate=16.0, prompt=8000.0, output=400.0)
    # (400 + 0.1 * 8000) / 300 per replica = 4, whatever the request count.
    assert {d.replicas for d in few} == {d.replicas for d in many} == {4}
    assert few[-1].state.capacity == many[-1].state.capacity == 300.0
    # Four times the output tokens at the same request rate is more demand: (1600 + 800) / 300 = 8.
    longer = run_token_ticks(tokens_learnt(300.0, 4), 4, rate=4.0, prompt=8000.0, output=1600.0)
    assert longer[-1].replicas >= 8


def run_token_ticks(state: ScalerState, replicas: int, ticks: int = 12, **load: float) -> list[Decision]:
    decisions = []
    for i in range(ticks):
        now = 15.0 * i
        # Queue steady, SLOs inside the band where capacity is neither raised nor cut.
        s = token_sample(now, load["rate"], load["prompt"], load["output"], pending=1.0, ttft=850.0, tpot=42.0)
        d = decide([s], replicas, replicas, TTFT_SPEC, state, now)
        decisions.append(d)
        state, replicas = d.state, d.replicas
    return decisions


def test_a_missed_ttft_cuts_capacity_and_holds_scale_down() -> None:
    state = tokens_learnt(300.0, 4)
    d = decide([token_sample(120, 4.0, 8000, 400, ttft=4000.0)], 4, 4, TTFT_SPEC, state, 120)
    assert d.state.capacity is not None and d.state.capacity < 300.0
    low = decide([token_sample(135, 0.5, 1000, 50, ttft=4000.0)], 4, 4, TTFT_SPEC, state, 135)
    assert low.replicas == 4 and "ttft 4000ms over target, no scale-down" in low.reason


def test_prompt_weight_is_measured_from_ttft_and_tpot_when_nothing_waits() -> None:
    # 2 req/s of 1,000-token prompts: 100 ms TTFT is 0.1 ms per prompt token; TPOT 20 ms with 10
    # sequences running on one replica is 2 ms per output token: a prompt token weighs 0.05.
    s = token_sample(0, 2.0, 2000, 200, running=10.0, ttft_mean=100.0, tpot_mean=20.0)
    d = decide([s], 1, 1, TTFT_SPEC, ScalerState(), 0)
    assert d.state.prompt_weight == pytest.approx(0.05)
    queued = decide([replace(s, pending=5.0, ttft_mean_ms=5000.0)], 1, 1, TTFT_SPEC, d.state, 15)
    assert queued.state.prompt_weight == pytest.approx(0.05)  # queueing inside TTFT teaches nothing


def test_prompt_weight_is_measured_when_the_running_gauge_reads_zero() -> None:
    """Short requests often leave the running gauge at 0 at the scrape: one sequence per replica."""
    s = token_sample(0, 2.0, 2000, 200, running=0.0, ttft_mean=100.0, tpot_mean=2.0)
    assert decide([s], 1, 1, TTFT_SPEC, ScalerState(), 0).state.prompt_weight == pytest.approx(0.05)


def test_ticks_before_the_prompt_weight_is_known_do_not_blind_the_demand_window() -> None:
    """Demand is unknown on a tick without the TTFT and TPOT means; the next tick with them
    counts demand, and so learns capacity, at once rather than after the whole demand window."""
    first = decide([token_sample(0, 2.0, 2000, 200, ttft_mean=NAN)], 1, 1, TTFT_SPEC, ScalerState(), 0)
    assert first.state.prompt_weight is None and first.state.capacity is None
    second = decide([token_sample(15, 2.0, 2000, 200)], 1, 1, TTFT_SPEC, first.state, 15)
    assert second.state.capacity is not None and "output-token-equivalents/s" in second.reason


def ramp(ttft: float) -> list[Decision]:
    """A new object on one replica while its traffic ramps from 1 to 4 req/s in 45 s."""
    state, replicas, decisions = ScalerState(), 1, []
    for i in range(4):
        rate = 1.0 + i
        s = token_sample(15.0 * i, rate, 1000 * rate, 100 * rate, running=2 * rate, ttft=ttft, tpot=8.0)
        d = decide([s], replicas, 1, TTFT_SPEC, state, 15.0 * i)  # the pool's new replicas are not ready yet
        decisions.append(d)
        state, replicas = d.state, d.replicas
    return decisions


def test_a_young_pool_well_within_every_slo_does_not_grow_on_its_first_lower_bound_estimate() -> None:
    """The first capacity estimate is what one replica completed in its first window, far below
    what it can do while every SLO is far from its target: a ramping load read against it added
    replicas nobody needed (ten for a trace one replica serves). Until capacity is judged on a
    steady pool, a pool well within every SLO with nothing waiting holds; near a target it grows."""
    comfortable = ramp(ttft=100.0)
    assert [d.replicas for d in comfortable] == [1, 1, 1, 1]
    assert "before capacity was judged on a steady pool" in comfortable[-1].reason
    assert "output-token-equivalents/s" in comfortable[-1].reason  # the demand is still read and shown
    pressed = ramp(ttft=900.0)
    assert pressed[-1].replicas > 1


def test_a_miss_with_requests_waiting_is_a_capacity_problem() -> None:
    """TTFT twice the target while requests queue: cuts go on (more replicas would serve the queue)."""
    state, replicas = tokens_learnt(300.0, 4), 4
    for i in range(60):
        now = 15.0 * i
        s = token_sample(now, 4.0, 8000, 400, pending=50.0, running=float(replicas), ttft=2000.0, tpot=20.0)
        d = decide([s], replicas, replicas, TTFT_SPEC, state, now)
        state, replicas = d.state, d.replicas
    assert not state.miss_not_load and replicas > 8


def test_no_replicas_are_added_while_no_request_arrives() -> None:
    """Traffic stopped with a backlog: completions drain it, arrivals are zero, replicas never rise."""
    state, replicas, pending = learnt(1.0, 4), 4, 400.0
    counts = []
    for i in range(40):
        now = 15.0 * i
        rate = 4.0 if pending else 0.0  # the backlog drains at 4 req/s, nothing new arrives
        d = decide([sample(now, rate, pending=pending, latency=60_000)], replicas, replicas, SPEC, state, now)
        state, replicas, pending = d.state, d.replicas, max(0.0, pending - 60.0)
        counts.append(d.replicas)
        if i:
            assert d.replicas <= counts[-2], d.reason
    assert counts[-1] < max(counts)  # and once it is idle it scales down


def test_a_miss_that_more_replicas_do_not_ease_stops_adding_them() -> None:
    """TTFT stays at twice the target however few requests each replica has (prompts that take
    longer to read than the target): after one cut shows no effect, the count stops climbing."""
    state, replicas = tokens_learnt(300.0, 4), 4
    counts = []
    for i in range(120):
        now = 15.0 * i
        s = token_sample(now, 4.0, 8000, 400, running=float(replicas), ttft=2000.0, tpot=20.0)
        d = decide([s], replicas, replicas, TTFT_SPEC, state, now)
        state, replicas = d.state, d.replicas
        counts.append(replicas)
    assert max(counts) <= 8, counts
    assert state.miss_not_load and "no scale-down" not in d.reason


def test_a_miss_written_off_at_one_load_does_not_let_the_pool_shrink_past_it() -> None:
    """A miss was found not to ease with less load per replica, at 0.5 req/s per replica. That says
    nothing about more load per replica: while the miss lasts, the pool scales down only as far as
    that load (plus the tolerance), not to what the capacity estimate alone would allow. With every
    SLO met, the finding is dropped and the pool goes down at least to the estimate's count."""
    written_off = replace(learnt(2.0, 10), miss_not_load=True, not_load_per_replica=0.5)
    missing = run_ticks(written_off, 10, 4.0, 0.0, 60, latency=lambda _: 12_000.0)
    assert missing[-1].replicas == math.ceil(4.0 / (0.5 * 1.1))  # 8, not the estimate's 3
    assert "no fewer replicas" in missing[-1].reason
    met = run_ticks(written_off, 10, 4.0, 0.0, 60, latency=lambda _: 2000.0)
    assert met[-1].replicas <= math.ceil(4.0 * 1.1 / 2.0)


def test_a_falling_prompt_weight_is_not_read_as_less_load_after_a_cut() -> None:
    """A cut was made at 200 work/s per replica with a prompt token worth 0.1 output tokens. The
    weight then falls towards its measurement (0.01) while the token load and the miss stay as they
    were: in the new units the same load reads smaller, but it is the same load, so the miss is still
    load (cuts go on), not written off as one more replicas cannot fix."""
    spec = replace(TTFT_SPEC, max_replicas=1)  # the pool cannot grow: the load per replica stays
    cut = replace(tokens_learnt(100.0, 1), cut_from=200.0, cut_pressure=4.0, cut_per_replica=200.0)
    state, weights = cut, []
    for i in range(1, 161):  # forty minutes: the weight and the demand window's mean have caught up
        now = 60.0 + 15 * i
        # 1 req/s of 1,500 prompt and 50 output tokens; TTFT p95 4x the target, nothing waiting.
        s = token_sample(now, 1.0, 1500, 50, running=1.0, ttft=4000.0, ttft_mean=150.0, tpot_mean=10.0)
        d = decide([s], 1, 1, spec, state, now)
        state = d.state
        weights.append(state.prompt_weight)
        assert not state.miss_not_load, f"written off at {now:.0f}s, weight {state.prompt_weight:.3f}"
    assert weights[-1] < 0.015  # (50 + 0.015 * 1500) / 200: the same load reads 64% lighter
    assert state.capacity is not None and state.capacity < 100.0


def test_rising_load_after_a_cut_is_not_read_as_a_miss_more_replicas_cannot_fix() -> None:
    """After a cut the load rises: the 300 s mean per replica still looks lower than at the cut, but the
    minute the quantile covers had more per replica. The miss is load, so it keeps holding scale-down and
    cuts again, rather than being written off (which had the pool shrink into a miss that never ended)."""
    window = tuple((300.0 - 15 * k, 0.0, 3.0) for k in range(19, 0, -1))  # 3 req/s for the last 5 minutes
    state = replace(learnt(0.6, 5), cut_from=1.0, cut_pressure=4.0, cut_per_replica=1.0, history=window)
    d = decide([sample(300, 5.5, latency=40_000)], 5, 5, SPEC, state, 300)  # now 1.1 per replica
    assert not d.state.miss_not_load
    assert d.state.capacity is not None and d.state.capacity < 0.6
    assert d.replicas > 5


def test_a_miss_at_less_load_than_the_pool_just_served_well_neither_cuts_nor_holds() -> None:
    """Four minutes ago 8 replicas served 150 work/s each with every SLO well met; now they carry 75
    each, nothing waits, and TTFT p95 is twice the target (a few long prompts at the quantile).
    Latency does not fall as load rises, so this miss is not the load's: the estimate stays and the
    pool may scale down. The same miss with no such memory (or an older one) cuts and holds."""
    window = tuple((300.0 - 15 * k, 0.0, 600.0) for k in range(19, 0, -1))  # 600 work/s: 75 per replica
    fresh = replace(tokens_learnt(300.0, 8), history=window, passes=((60.0, 150.0), (75.0, 150.0)))
    miss = token_sample(300, 2.0, 4000, 200, running=8.0, ttft=2000.0, tpot=20.0)
    d = decide([miss], 8, 8, TTFT_SPEC, fresh, 300)
    assert d.state.capacity == 300.0 and d.replicas < 8, d.reason
    assert "ttft 2000ms over target, but within every SLO at more load per replica in the last 300s" in d.reason
    assert "no scale-down" not in d.reason
    for state in (replace(fresh, passes=()), replace(fresh, passes=((-60.0, 150.0),))):
        held = decide([miss], 8, 8, TTFT_SPEC, state, 300)
        assert held.state.capacity is not None and held.state.capacity < 300.0
        assert held.replicas == 8 and "ttft 2000ms over target, no scale-down" in held.reason
