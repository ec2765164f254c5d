"""The scaling decision: a pure function of samples, replica counts, spec, memory and time.

Sizing is by throughput, not by the HPA's latency ratio: the latency of a batching server is
flat until it saturates and then explodes, so `replicas * latency / target` overshoots on a
burst and undershoots when idle. The policy instead

* estimates arrivals (completions plus the change in the queue) and averages them over
  `demandWindowSeconds`, so short bursts are ridden out by the queue instead of chased with
  replicas that would be ready only after the burst;
* learns the requests/s one ready replica serves within the latency target from the pool's
  own samples (see `_learn_capacity`);
* adds the backlog that will be left when a replica started now is ready (cold start), to be
  drained within one cold-start period, counting replicas that are still starting;
* scales down only past a tolerance band, after the stabilization window, one bounded step at
  a time, and never while the latency is over target;
* holds the current count, saying why, when a signal is missing, NaN or stale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from batchline.autoscaler.spec import AutoscalingSpec

NAN = float("nan")
# A comfortable sample raises the capacity estimate by 5% times target/latency, at most 25%:
# fast when latency is far under target, careful near it.
PROBE_STEP = 0.05
MAX_PROBE_STEP = 0.25
# Probing goes on while demand per replica is at least capacity * min(0.8, PROBE_REACH * latency /
# target), and never past twice that demand: a pool far under target may stretch further than
# one near it, but latency is flat up to the saturation cliff, so not without bound.
PROBE_REACH = 2.0
MIN_PROBE_REACH = 0.5
# An over-target sample cuts the estimate by sqrt(target / latency), but by at most half.
MAX_CAPACITY_CUT = 0.5


@dataclass(frozen=True)
class MetricSample:
    """The signals of one LLMDeployment at one instant, aggregated over its pods.

    Fields are NaN when Prometheus had no value. `window_s` is the range the rates and the
    summaries cover; capacity is learnt only once the ready count has been stable that long.
    """

    timestamp: float
    request_rate: float  # completed requests/s
    pending: float  # requests queued in Triton, not yet executing
    latency_ms: float = NAN  # the spec's quantile of end-to-end latency, worst pod
    queue_ms: float = NAN  # mean queue time per request
    latency_is_mean: bool = False  # summaries absent: latency_ms is the mean
    window_s: float = 60.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes None (a Kubernetes status cannot hold NaN)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricSample:
        values: dict[str, Any] = {k: NAN if v is None else v for k, v in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class ScalerState:
    """What the policy remembers between ticks; `to_dict` gives JSON for the object's status."""

    capacity_rps: float | None = None  # requests/s one ready replica serves within the target
    capacity_ceiling_rps: float | None = None  # an estimate that was seen to miss the target
    ceiling_demand_rps: float = 0.0  # total demand when the ceiling was set
    capacity_cut_at: float = 0.0  # when latency over target last cut capacity_rps
    ready: int = -1  # ready replicas at the last tick
    ready_since: float = 0.0  # when the ready count last changed
    scale_up_at: float | None = None  # last time this policy raised the replica count
    history: tuple[tuple[float, float, float], ...] = ()  # (time, pending, arrivals/s) per tick
    recommendations: tuple[tuple[float, int], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [list(h) for h in self.history]
        d["recommendations"] = [list(r) for r in self.recommendations]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalerState:
        d = dict(d)
        d["history"] = tuple((float(t), float(p), float(a)) for t, p, a in d.get("history", ()))
        d["recommendations"] = tuple((float(t), int(n)) for t, n in d.get("recommendations", ()))
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    state: ScalerState


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

    if ready_replicas != state.ready:
        state = replace(state, ready=ready_replicas, ready_since=now)
    arrival = _arrival_rate(sample, state.history)
    keep = max(sample.window_s, spec.demand_window_seconds)
    history = (*(h for h in state.history if h[0] > now - keep), (now, sample.pending, arrival))
    demand = sum(a for _, _, a in history) / len(history)
    state = _learn_capacity(state, sample, demand, ready_replicas, current_replicas, spec, now)
    raw, why = _recommend(sample, demand, current_replicas, ready_replicas, spec, state, now)
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


def _arrival_rate(sample: MetricSample, history: tuple[tuple[float, float, float], ...]) -> float:
    """Arrivals/s over about the rate window: completions plus the change in the queue."""
    older = [(t, p) for t, p, _ in history if t >= sample.timestamp - sample.window_s]
    if not older or older[0][0] >= sample.timestamp:
        return sample.request_rate
    t0, p0 = older[0]
    return max(0.0, sample.request_rate + (sample.pending - p0) / (sample.timestamp - t0))


def _learn_capacity(
    state: ScalerState,
    sample: MetricSample,
    demand: float,
    ready: int,
    current: int,
    spec: AutoscalingSpec,
    now: float,
) -> ScalerState:
    """Per-replica demand that the pool serves within the target, learnt from what it just did.

    Only a steady pool teaches: every replica ready, and the ready count unchanged for the
    window that rates and summaries span (a pool that changed size inside it mixes two sizes).
    The first estimate is the observed per-replica rate (a lower bound). The operating point is
    the average demand per ready replica, the figure the sizing uses, so bursts inside the demand
    window count against capacity.

    * Latency well under target, at a load close enough to plan, raises the estimate; the
      farther under target, the bigger the step and the farther below plan it may start.
    * Latency over target at a load the estimate called fine cuts it, at most once per window so
      a cut shows before the next. The estimate that failed becomes a ceiling, so the search
      does not repeat at constant load; it lapses once the demand moves by 2x tolerance.
    * Over target at a load above plan says nothing: the pool was known to be short.
    """
    latency = sample.latency_ms
    steady = ready == current and now - state.ready_since >= sample.window_s
    if not steady or ready <= 0 or sample.request_rate <= 0 or not math.isfinite(latency):
        return state
    target = spec.target_latency_ms
    capacity, ceiling = state.capacity_rps, state.capacity_ceiling_rps
    if capacity is None:
        first = sample.request_rate / ready * max(MAX_CAPACITY_CUT, min(1.0, target / latency))
        return replace(state, capacity_rps=first, capacity_cut_at=now)
    per_replica = demand / ready
    if ceiling is not None and abs(demand - state.ceiling_demand_rps) > 2 * spec.tolerance * state.ceiling_demand_rps:
        ceiling = None  # the load has moved since that miss: the ceiling no longer applies
    comfortable = latency < target * (1 - 2 * spec.tolerance)
    reach = min(1 - 2 * spec.tolerance, max(MIN_PROBE_REACH, PROBE_REACH * latency / target))
    if comfortable and per_replica >= capacity * reach:
        capacity = max(capacity, per_replica) * (1 + min(MAX_PROBE_STEP, PROBE_STEP * target / latency))
        if ceiling is not None:
            capacity = max(per_replica, min(capacity, ceiling * (1 - spec.tolerance)))
        return replace(state, capacity_rps=capacity, capacity_ceiling_rps=ceiling)
    near_plan = per_replica <= capacity * (1 + spec.tolerance)
    if latency > target * (1 + spec.tolerance) and near_plan and now - state.capacity_cut_at >= sample.window_s:
        return replace(
            state,
            capacity_rps=capacity * max(MAX_CAPACITY_CUT, math.sqrt(target / latency)),
            capacity_ceiling_rps=capacity if ceiling is None else min(ceiling, capacity),
            ceiling_demand_rps=demand,
            capacity_cut_at=now,
        )
    return replace(state, capacity_ceiling_rps=ceiling)


def _recommend(
    sample: MetricSample,
    demand: float,
    current: int,
    ready: int,
    spec: AutoscalingSpec,
    state: ScalerState,
    now: float,
) -> tuple[int, str]:
    """Replicas needed now (before stabilization and step limits) and why."""
    if sample.request_rate == 0 and sample.pending == 0:
        return 0, "no traffic"
    capacity = state.capacity_rps
    if capacity is None:
        if sample.pending > ready and ready >= current:
            return current + spec.max_scale_up_step, "queue building before capacity is known"
        return current, "capacity not learnt yet (needs a minute of traffic on a steady pool)"
    backlog = _projected_backlog(sample.pending, demand, current, ready, capacity, spec, state, now)
    drain_s = max(spec.cold_start_seconds, spec.target_latency_ms / 1000)
    need = demand + backlog / drain_s
    why = (
        f"need {need:.2f} req/s (arrivals {demand:.2f} + backlog {backlog:.0f} over {drain_s:.0f}s)"
        f" at {capacity:.2f} req/s per replica"
    )
    ratio = need / (capacity * max(current, 1))
    if ratio > 1 + spec.tolerance or current == 0:
        return math.ceil(need / capacity), why
    if sample.latency_ms > spec.target_latency_ms * (1 + spec.tolerance):
        kind = "mean latency" if sample.latency_is_mean else "latency"
        return current, why + f"; {kind} {sample.latency_ms:.0f}ms over target, no scale-down"
    if ratio * (1 + spec.tolerance) < 1:
        return math.ceil(need * (1 + spec.tolerance) / capacity), why + " (with tolerance margin)"
    return current, why + " (within tolerance)"


def _projected_backlog(
    pending: float,
    demand: float,
    current: int,
    ready: int,
    capacity: float,
    spec: AutoscalingSpec,
    state: ScalerState,
    now: float,
) -> float:
    """Queue left when a replica added now is ready: the ready replicas serve until the starting
    ones are up, then all of them; capacity is the conservative within-target figure."""
    cold = float(spec.cold_start_seconds)
    starting_left = 0.0
    if current > ready and state.scale_up_at is not None:
        starting_left = min(cold, max(0.0, state.scale_up_at + cold - now))
    backlog = max(0.0, pending + (demand - ready * capacity) * starting_left)
    return max(0.0, backlog + (demand - max(current, ready) * capacity) * (cold - starting_left))


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
