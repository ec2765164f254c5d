"""The scaling decision: a pure function of samples, replica counts, spec, memory and time.

Sizing is by throughput, not by the HPA's latency ratio: the latency of a batching server is
flat until it saturates and then explodes, so `replicas * latency / target` overshoots on a
burst and undershoots when idle. The policy instead

* measures demand as work: output tokens/s plus prompt tokens/s weighted by what a prompt token
  costs the engine relative to an output token (measured from the engine's own TTFT and TPOT,
  see `_learn_prompt_weight`), so a shift of prompt or output lengths is a shift of demand, not
  of capacity; without token counters (the static engine) demand is requests/s;
* estimates arrivals (completions plus the change in requests in flight) and sizes for their mean
  over `demandWindowSeconds`, so bursts shorter than a cold start are ridden out by the queue (and
  the backlog term below) instead of chased with replicas that would be ready only after them;
* learns the work/s one ready replica serves within every SLO that is set (end-to-end latency,
  time to first token, time per output token) from the pool's own samples (`_learn_capacity`),
  and does not scale up on its first, lower-bound estimate while every SLO is well met; while
  requests wait with every SLO under half its target (held by a limit that is not the latency's,
  such as the gateway's in flight per replica), the estimate is at least what the pool completes;
* adds the backlog that will be left when a replica started now is ready (cold start), to be
  drained within one cold-start period, counting replicas that are still starting;
* never adds replicas when no request arrived (a queue left when traffic stopped drains on the
  replicas that hold it), scales down only past a tolerance band, after the stabilization window,
  one bounded step at a time, and never while an SLO is missed;
* writes off a miss that does not ease with less load per replica (no more cuts, no hold on
  scale-down), but only for the load it was seen at: while it lasts, the pool does not shrink
  past that load per replica;
* does not count a miss against the load (no cut, no hold on scale-down) when, within the demand
  window, the pool met every SLO well at a higher load per replica: latency does not fall as load
  rises, so such a miss is a few slow requests at the quantile, which more replicas would not speed;
* holds the current count, saying why, when a signal is missing, NaN or stale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from batchline.autoscaler.spec import AutoscalingSpec

NAN = float("nan")
# A comfortable sample raises the capacity estimate by 5% times target/observed, at most 40%:
# fast when far under every target, careful near one.
PROBE_STEP = 0.05
MAX_PROBE_STEP = 0.4
# Probing goes on while demand per replica is at least capacity * min(0.8, PROBE_REACH * pressure),
# and never past twice that demand: a pool far under target may stretch further than one near
# it, but latency is flat up to the saturation cliff, so not without bound.
PROBE_REACH = 2.0
MIN_PROBE_REACH = 0.5
# While requests wait, a pool whose every SLO is under this share of its target is on the flat part of
# the latency curve, so the wait is not the knee: what it completes, it serves within every SLO.
FAR_UNDER_TARGET = 0.5
# An over-target sample cuts the estimate by sqrt(1 / pressure), but by at most half.
MAX_CAPACITY_CUT = 0.5
# The prompt-token weight (a prompt token's cost in output tokens) follows its measurements with
# this gain per tick (a time constant of about 10 minutes at a 15 s tick), within these bounds:
# slow, because each measurement rests on one instant's running gauge, and every move of the
# weight shifts the units that the capacity estimate was learnt in. This gain and the largest
# probe step were chosen on the code trace's jittered copies (docs/autoscaling.md, change 10).
PROMPT_WEIGHT_GAIN = 0.025
PROMPT_WEIGHT_BOUNDS = (1e-3, 10.0)
TOKENS, REQUESTS = "output-token-equivalents/s", "req/s"


@dataclass(frozen=True)
class MetricSample:
    """The signals of one LLMDeployment at one instant, aggregated over its pods.

    Fields are NaN when Prometheus had no value. `window_s` is the range the rates and the
    quantiles cover; capacity is learnt only once the ready count has been stable that long.
    Latency, TTFT and TPOT are at the spec's quantile (cluster-wide from histograms, or the
    worst pod's summary); the means come from the histograms' sums and counts.
    """

    timestamp: float
    request_rate: float  # completed requests/s
    pending: float  # requests waiting (at the gateway or in an engine's queue), not yet running
    latency_ms: float = NAN  # end-to-end latency at the spec's quantile
    queue_ms: float = NAN  # mean queue time per request
    latency_is_mean: bool = False  # quantiles absent: latency_ms is the mean
    window_s: float = 60.0
    prompt_tokens_rate: float = NAN  # prompt tokens/s of completed requests
    output_tokens_rate: float = NAN  # output tokens/s of completed requests
    running: float = NAN  # requests in the engines' running batches
    ttft_ms: float = NAN  # time to first token at the spec's quantile
    tpot_ms: float = NAN  # time per output token at the spec's quantile
    ttft_mean_ms: float = NAN
    tpot_mean_ms: float = NAN

    def tokens_known(self) -> bool:
        return math.isfinite(self.prompt_tokens_rate) and math.isfinite(self.output_tokens_rate)

    def in_flight(self) -> float:
        return self.pending + (self.running if math.isfinite(self.running) else 0.0)

    def observed(self) -> dict[str, float]:
        """The observed value for each SLO kind ("latency", "ttft", "tpot"); NaN when absent."""
        return {"latency": self.latency_ms, "ttft": self.ttft_ms, "tpot": self.tpot_ms}


@dataclass(frozen=True)
class ScalerState:
    """What the policy remembers between ticks (in the operator's memory: a restart re-learns it)."""

    unit: str = TOKENS  # what demand and capacity are counted in: TOKENS or REQUESTS
    capacity: float | None = None  # demand (in `unit`) one ready replica serves within every SLO
    capacity_ceiling: float | None = None  # an estimate that was seen to miss an SLO
    capacity_cut_at: float = 0.0  # when a missed SLO last cut `capacity`
    cut_from: float | None = None  # `capacity` before the last cut
    cut_pressure: float = 0.0  # pressure that caused the last cut
    cut_per_replica: float = 0.0  # demand per ready replica at the last cut
    miss_not_load: bool = False  # the miss did not ease with less load per replica: not a capacity problem
    not_load_per_replica: float = 0.0  # load per ready replica when `miss_not_load` was judged
    prompt_weight: float | None = None  # cost of a prompt token in output tokens, measured
    work_per_request: float | None = None  # demand units per request, last measured
    ready: int = -1  # ready replicas at the last tick
    ready_since: float = 0.0  # when the ready count last changed
    steady_seen: bool = False  # capacity has been judged on a steady pool at least once
    scale_up_at: float | None = None  # last time this policy raised the replica count
    history: tuple[tuple[float, float, float], ...] = ()  # (time, in flight, arrivals) per tick
    passes: tuple[tuple[float, float], ...] = ()  # (time, demand per replica) of steady ticks well within every SLO
    recommendations: tuple[tuple[float, int], ...] = field(default=())


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    state: ScalerState


@dataclass(frozen=True)
class Tick:
    """What one tick saw: the newest sample, the replica counts, and the demand derived from them."""

    sample: MetricSample
    current: int  # replicas asked for
    ready: int  # replicas serving
    demand: float  # mean arrivals over the demand window, in the state's unit
    arrival: float  # arrivals over the last rate window, in the state's unit
    now: float


def decide(
    samples: Sequence[MetricSample],
    current_replicas: int,
    ready_replicas: int,
    spec: AutoscalingSpec,
    state: ScalerState,
    now: float,
) -> Decision:
    """Desired replicas for one LLMDeployment; the newest of `samples` is used."""
    if not spec.enabled:
        return Decision(current_replicas, "autoscaling disabled", state)
    sample = max(samples, key=lambda s: s.timestamp) if samples else None
    problem = _signal_problem(sample, spec, now)
    if problem is not None or sample is None:
        bounded = _clamp(current_replicas, spec.min_replicas, spec.max_replicas)
        return Decision(bounded, _hold_reason(current_replicas, bounded, problem or "no samples"), state)

    unit = TOKENS if sample.tokens_known() else REQUESTS
    if unit != state.unit:  # the engine's counters appeared or vanished: what was learnt is in other units
        state = ScalerState(unit=unit, recommendations=state.recommendations, scale_up_at=state.scale_up_at)
    if ready_replicas != state.ready:
        state = replace(state, ready=ready_replicas, ready_since=now)
    state = _learn_prompt_weight(state, sample, ready_replicas)
    completed = _work(sample, state)
    if sample.request_rate > 0 and math.isfinite(completed):
        state = replace(state, work_per_request=completed / sample.request_rate)
    arrival = _arrival_rate(sample, completed, state)
    keep = max(sample.window_s, spec.demand_window_seconds)
    history = (*(h for h in state.history if h[0] > now - keep), (now, sample.in_flight(), arrival))
    # Arrivals are NaN while the prompt-token weight is unknown (the first samples): those ticks are
    # left out rather than making the whole window unknown.
    known = [a for _, _, a in history if math.isfinite(a)]
    demand = sum(known) / len(known) if known else NAN
    tick = Tick(sample, current_replicas, ready_replicas, demand, arrival, now)
    state = _learn_capacity(state, tick, spec)
    raw, why = _recommend(tick, spec, state)
    window = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    recommendations = tuple((t, n) for t, n in (*state.recommendations, (now, raw)) if t >= now - window)
    desired, limit = _stabilize_and_bound(recommendations, current_replicas, spec, now)
    state = replace(
        state,
        history=history,
        recommendations=recommendations,
        scale_up_at=now if desired > current_replicas else state.scale_up_at,
    )
    return Decision(desired, _reason(current_replicas, desired, raw, why, limit), state)


def pressure(sample: MetricSample, spec: AutoscalingSpec) -> tuple[float, str]:
    """The worst observed/target ratio over the SLOs that are set, and which one it is.

    NaN when none of them has an observation (no request finished in the window).
    """
    observed = sample.observed()
    worst, which = NAN, ""
    for kind, target in spec.targets_ms().items():
        value = observed[kind]
        if math.isfinite(value) and not (value / target <= worst):
            worst, which = value / target, kind
    return worst, which


def _signal_problem(sample: MetricSample | None, spec: AutoscalingSpec, now: float) -> str | None:
    if sample is None:
        return "no metric samples"
    age = now - sample.timestamp
    if age > spec.metrics_staleness_seconds:
        return f"metrics stale ({age:.0f}s old, limit {spec.metrics_staleness_seconds}s)"
    for name in ("request_rate", "pending"):
        value = getattr(sample, name)
        if not math.isfinite(value) or value < 0:
            return f"{name} is {value}"
    return None


def _hold_reason(current: int, bounded: int, problem: str) -> str:
    if bounded != current:
        return f"set {current}->{bounded} to honour min/max; otherwise holding: {problem}"
    return f"hold at {current}: {problem}"


def _learn_prompt_weight(state: ScalerState, sample: MetricSample, ready: int) -> ScalerState:
    """What a prompt token costs the engine, in output tokens, from the engine's own timings.

    With nothing waiting, a request's TTFT is the engine reading its prompt, so the mean TTFT over
    the mean prompt length is the replica-time per prompt token; a step yields one token for each
    running sequence, so the mean TPOT over the running sequences per replica is the replica-time
    per output token. Their ratio moves slowly towards each new measurement. While something waits,
    TTFT includes queueing: such a sample only gives the first estimate (too high, so demand is
    overestimated, never under), and then teaches nothing.
    """
    if state.unit != TOKENS or sample.request_rate <= 0 or ready <= 0:
        return state
    if sample.pending > 0 and state.prompt_weight is not None:
        return state
    values = (sample.ttft_mean_ms, sample.tpot_mean_ms, sample.prompt_tokens_rate)
    # The running gauge is read at one instant; short requests often leave it at 0 between them.
    if not all(math.isfinite(v) and v > 0 for v in values) or not math.isfinite(sample.running):
        return state
    per_prompt_token = sample.ttft_mean_ms / (sample.prompt_tokens_rate / sample.request_rate)
    per_output_token = sample.tpot_mean_ms / max(1.0, sample.running / ready)
    low, high = PROMPT_WEIGHT_BOUNDS
    measured = min(high, max(low, per_prompt_token / per_output_token))
    weight = state.prompt_weight
    if weight is None:
        return replace(state, prompt_weight=measured)
    new = weight + PROMPT_WEIGHT_GAIN * (measured - weight)
    # The load per replica at the last cut is judged against today's (`_learn_capacity`): it follows
    # the units, or a falling weight would read the same load as less. The capacity estimate does not:
    # probes and cuts correct it against the SLOs in whatever units demand is read.
    out, prompt = sample.output_tokens_rate, sample.prompt_tokens_rate
    rescale = (out + new * prompt) / (out + weight * prompt)
    return replace(state, prompt_weight=new, cut_per_replica=state.cut_per_replica * rescale)


def _work(sample: MetricSample, state: ScalerState) -> float:
    """Completed demand per second in the state's unit; NaN while the prompt weight is unknown."""
    if state.unit == REQUESTS:
        return sample.request_rate
    if state.prompt_weight is None:
        return NAN
    return sample.output_tokens_rate + state.prompt_weight * sample.prompt_tokens_rate


def _arrival_rate(sample: MetricSample, completed: float, state: ScalerState) -> float:
    """Arrivals over about the rate window: completions plus the change in requests in flight."""
    if not math.isfinite(completed):
        return NAN
    older = [(t, p) for t, p, _ in state.history if t >= sample.timestamp - sample.window_s]
    per_request = state.work_per_request
    if not older or older[0][0] >= sample.timestamp or per_request is None:
        return completed
    t0, p0 = older[0]
    return max(0.0, completed + (sample.in_flight() - p0) * per_request / (sample.timestamp - t0))


def _learn_capacity(state: ScalerState, tick: Tick, spec: AutoscalingSpec) -> ScalerState:
    """Per-replica demand that the pool serves within every SLO, learnt from what it just did.

    The first estimate is the rate the window completed per ready replica, from the first sample
    that has one, steady pool or not: a lower bound either way. After it only a steady pool
    teaches: every replica ready, and the ready count unchanged for the window that rates and
    quantiles span (a pool that changed size inside it mixes two sizes). The operating point is
    the average demand per ready replica, the figure the sizing uses, so bursts inside the demand
    window count against capacity. `pressure` is the worst observed/target ratio.

    * Every SLO well met, at a load close enough to plan, with nothing waiting, raises the
      estimate; the farther under target, the bigger the step and the farther below plan it may
      start. Requests waiting say the pool is at its limit whatever a lagging quantile says.
    * A ceiling (an estimate that missed, see `_judge_miss`) caps the raise. It lapses only on
      evidence against it: a steady pool serving at least that much per replica with every SLO
      well met and nothing waiting.
    * An SLO missed at a load the estimate called fine is judged by `_judge_miss`, at most once
      per window so a cut shows before the next. A miss at a load above plan says nothing: the
      pool was known to be short.
    * Every SLO well met with nothing waiting is remembered for a demand window, with its load
      per replica (`_served_more_within_slo`).
    * Requests waiting while every SLO is under `FAR_UNDER_TARGET` of its target raise the estimate
      to what the pool completed per ready replica (under any ceiling).
    """
    sample, demand, ready, now = tick.sample, tick.demand, tick.ready, tick.now
    ratio, _ = pressure(sample, spec)
    steady = ready == tick.current and now - state.ready_since >= sample.window_s
    completed = _work(sample, state)
    if ready <= 0 or not completed > 0 or not math.isfinite(ratio) or not math.isfinite(demand):
        return state
    capacity, ceiling = state.capacity, state.capacity_ceiling
    if capacity is None:
        # What the window completed per ready replica: a lower bound, so a changing pool may give it too.
        first = completed / ready * max(MAX_CAPACITY_CUT, min(1.0, 1 / ratio))
        return replace(state, capacity=first, capacity_cut_at=now)
    if not steady:
        return state
    if not state.steady_seen:
        state = replace(state, steady_seen=True)
    per_replica = demand / ready
    comfortable = ratio < 1 - 2 * spec.tolerance
    passes = tuple(p for p in state.passes if p[0] > now - spec.demand_window_seconds)
    if comfortable and sample.pending < 1:
        passes = (*passes, (now, per_replica))
    state = replace(state, passes=passes)
    if ceiling is not None and comfortable and per_replica >= ceiling and sample.pending < 1:
        ceiling = None  # the pool just served what the ceiling said it could not: that miss was not capacity
    if sample.pending >= 1 and ratio < FAR_UNDER_TARGET:
        # Requests wait (at the gateway's in-flight limit, say) far under every target: the pool is at
        # a limit, but not the latency's, so it serves what it completes. Nearer a target the wait may
        # be the knee, which the window's quantile shows only later: the probes decide there.
        served = completed / ready
        if ceiling is not None:
            served = min(served, ceiling * (1 - spec.tolerance))
        capacity = max(capacity, served)
        state = replace(state, capacity=capacity)
    reach = min(1 - 2 * spec.tolerance, max(MIN_PROBE_REACH, PROBE_REACH * ratio))
    # Requests waiting say the pool is at its limit, whatever a lagging quantile says: no probing then.
    if comfortable and per_replica >= capacity * reach and sample.pending < 1:
        capacity = max(capacity, per_replica) * (1 + min(MAX_PROBE_STEP, PROBE_STEP / ratio))
        if ceiling is not None:
            capacity = max(per_replica, min(capacity, ceiling * (1 - spec.tolerance)))
        return replace(state, capacity=capacity, capacity_ceiling=ceiling)
    if ratio <= 1:  # every SLO met: a later miss is judged afresh
        state = replace(state, cut_from=None, miss_not_load=False)
    state = replace(state, capacity_ceiling=ceiling)
    near_plan = per_replica <= capacity * (1 + spec.tolerance)
    if ratio > 1 and near_plan and now - state.capacity_cut_at >= sample.window_s:
        return _judge_miss(state, capacity, tick, ratio, spec)
    return state


def _judge_miss(state: ScalerState, capacity: float, tick: Tick, ratio: float, spec: AutoscalingSpec) -> ScalerState:
    """A steady pool missed an SLO (worst observed/target `ratio`) at a load its estimate called fine.

    * A miss at less load per replica than the pool recently served well is not the load's
      (`_served_more_within_slo`): nothing changes.
    * Normally the estimate is cut by sqrt(1 / ratio), by at most half, and the estimate that
      failed becomes a ceiling that later probes stay under, so the search does not run into the
      same miss again whenever the load moves.
    * A miss that does not ease after a cut, although the load per replica fell by more than the
      tolerance (both the demand window's mean and the last rate window's arrivals: the mean lags
      a rise) and nothing waits, is not a capacity problem (a TTFT target shorter than reading the
      longest prompts takes): the cut is undone, no more cuts follow, and the miss no longer holds
      scale-down, until every SLO is met again (nor lets the pool shrink past this load per replica:
      `_recommend`).
    """
    per_replica = tick.demand / tick.ready
    if _served_more_within_slo(state, tick, spec):
        return state
    load = max(tick.demand, tick.arrival) / tick.ready  # the mean lags a rise: the last minute counts too
    if (
        state.cut_from is not None
        and tick.sample.pending < 1  # requests waiting: more replicas would serve them sooner
        and load < state.cut_per_replica * (1 - spec.tolerance)
        and ratio >= state.cut_pressure * (1 - spec.tolerance)
    ):
        return replace(state, capacity=max(capacity, state.cut_from), miss_not_load=True, not_load_per_replica=load)
    if state.miss_not_load:
        return state
    ceiling = state.capacity_ceiling
    return replace(
        state,
        capacity=capacity * max(MAX_CAPACITY_CUT, math.sqrt(1 / ratio)),
        capacity_ceiling=capacity if ceiling is None else min(ceiling, capacity),
        capacity_cut_at=tick.now,
        cut_from=capacity,
        cut_pressure=ratio,
        cut_per_replica=per_replica,
    )


def _served_more_within_slo(state: ScalerState, tick: Tick, spec: AutoscalingSpec) -> bool:
    """Whether the pool met every SLO, within the demand window, at a load per replica above today's.

    Latency does not fall as load rises, so a miss at a lower load is not the load's doing (a few
    long requests at the quantile, say): more replicas would not help, and it is not held against them.
    """
    if tick.ready <= 0 or tick.sample.pending >= 1 or not math.isfinite(tick.demand):
        return False  # requests waiting: more replicas would serve them sooner
    above = tick.demand / tick.ready * (1 + spec.tolerance)
    return any(t > tick.now - spec.demand_window_seconds and load >= above for t, load in state.passes)


def _recommend(tick: Tick, spec: AutoscalingSpec, state: ScalerState) -> tuple[int, str]:
    """Replicas needed now (before stabilization and step limits) and why."""
    sample, demand, arrival, current, ready = tick.sample, tick.demand, tick.arrival, tick.current, tick.ready
    if sample.request_rate == 0 and sample.in_flight() == 0:
        return 0, "no traffic"
    capacity = state.capacity
    unit = state.unit
    if capacity is None or not math.isfinite(demand):
        if arrival == 0:
            return current, "no requests arriving: nothing to add"
        if sample.pending > ready and ready >= current:
            return current + spec.max_scale_up_step, "queue building before capacity is known"
        return current, "capacity not learnt yet (needs a minute of traffic on a steady pool)"
    backlog = _projected_backlog(tick, capacity, spec, state)
    backlog *= state.work_per_request or 0.0  # requests -> demand units
    targets = spec.targets_ms()
    slowest = max(targets.get("latency", 0), targets.get("ttft", 0)) / 1000
    drain_s = max(spec.cold_start_seconds, slowest, 1.0)
    need = demand + backlog / drain_s
    why = (
        f"need {need:.4g} {unit} (arrivals {demand:.4g} + backlog {backlog:.4g} over {drain_s:.0f}s)"
        f" at {capacity:.4g} per replica"
    )
    ratio_now, kind = pressure(sample, spec)
    if not state.steady_seen and ratio_now < 1 - 2 * spec.tolerance and sample.pending < 1:
        # The first estimate is what a young pool happened to complete, a lower bound: sizing a light
        # load that is still ramping up on it adds replicas that nothing asked for.
        return current, why + "; every SLO well met and nothing waiting before capacity was judged on a steady pool"
    ratio = need / (capacity * max(current, 1))
    over = ""
    if ratio_now > 1 and not state.miss_not_load:
        label = "mean latency" if kind == "latency" and sample.latency_is_mean else kind
        over = f"{label} {sample.observed()[kind]:.0f}ms over target"
        if _served_more_within_slo(state, tick, spec):
            why += f"; {over}, but within every SLO at more load per replica in the last {spec.demand_window_seconds}s"
            over = ""
    if (ratio > 1 + spec.tolerance or current == 0) and arrival == 0:
        return current, why + "; no requests arriving: nothing to add"
    if ratio > 1 + spec.tolerance or current == 0:
        return math.ceil(need / capacity), why
    if over:
        return current, why + f"; {over}, no scale-down"
    if ratio * (1 + spec.tolerance) < 1:
        fewer = math.ceil(need * (1 + spec.tolerance) / capacity)
        if state.miss_not_load and ratio_now > 1:
            # The miss did not ease with less load per replica than at its judgement; nothing says it
            # would not worsen with more, so the pool shrinks no further than that load.
            floor = math.ceil(max(demand, arrival) / (state.not_load_per_replica * (1 + spec.tolerance)))
            if floor > fewer:
                return min(floor, current), why + f"; {kind} over target: no fewer replicas than it was judged at"
        return fewer, why + " (with tolerance margin)"
    return current, why + " (within tolerance)"


def _projected_backlog(tick: Tick, capacity: float, spec: AutoscalingSpec, state: ScalerState) -> float:
    """Requests left waiting when a replica added now is ready: the ready replicas serve until the
    starting ones are up, then all of them; capacity is the conservative within-target figure."""
    pending, demand, current, ready = tick.sample.pending, tick.demand, tick.current, tick.ready
    per_request = state.work_per_request or 0.0
    if per_request <= 0:
        return max(0.0, pending)
    cold = float(spec.cold_start_seconds)
    starting_left = 0.0
    if current > ready and state.scale_up_at is not None:
        starting_left = min(cold, max(0.0, state.scale_up_at + cold - tick.now))
    backlog = max(0.0, pending + (demand - ready * capacity) * starting_left / per_request)
    return max(0.0, backlog + (demand - max(current, ready) * capacity) * (cold - starting_left) / per_request)


def _stabilize_and_bound(
    recommendations: tuple[tuple[float, int], ...], current: int, spec: AutoscalingSpec, now: float
) -> tuple[int, str]:
    """HPA-style windows (lowest recent for up, highest recent for down), then steps and min/max."""
    up = min(n for t, n in recommendations if t >= now - spec.scale_up_stabilization_seconds)
    down = max(n for t, n in recommendations if t >= now - spec.scale_down_stabilization_seconds)
    desired, limit = current, ""
    if up > desired:
        desired = up
    elif down < desired:
        desired = down
    if recommendations[-1][1] < current and desired > recommendations[-1][1]:
        limit = f"scale-down stabilization ({spec.scale_down_stabilization_seconds}s) keeps {desired}"
    stepped = _clamp(desired, current - spec.max_scale_down_step, current + spec.max_scale_up_step)
    if stepped != desired:
        limit = f"step limited from {desired}"
    bounded = _clamp(stepped, spec.min_replicas, spec.max_replicas)
    if bounded != stepped:
        limit = f"bounded by min {spec.min_replicas}/max {spec.max_replicas} from {stepped}"
    return bounded, limit


def _reason(current: int, desired: int, raw: int, why: str, limit: str) -> str:
    if desired == current:
        head = f"hold at {current}"
    else:
        head = f"{'scale up' if desired > current else 'scale down'} {current}->{desired}"
    return f"{head}: recommend {raw}, {why}" + (f"; {limit}" if limit else "")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
