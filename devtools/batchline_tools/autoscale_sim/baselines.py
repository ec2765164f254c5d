"""Controllers the simulator compares: Batchline's policy, the Kubernetes HPA, KEDA, and a
concurrency target (requests in flight per replica, as KubeAI and Knative scale).

The HPA follows pkg/controller/podautoscaler (calcPlainMetricReplicas,
GetExternalPerPodMetricReplicas, stabilizeRecommendationWithBehaviors,
convertDesiredReplicasWithBehaviorRate) in kubernetes/kubernetes, with the autoscaling/v2 default behaviors
(https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#default-behavior).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from batchline.autoscaler.policy import ScalerState, decide
from batchline.autoscaler.spec import AutoscalingSpec
from batchline_tools.autoscale_sim.simulator import PoolView, SimConfig, SimResult, Targets, simulate
from batchline_tools.autoscale_sim.trace import Trace

POLICIES = ("batchline", "hpa", "keda", "concurrency")
# KEDA trigger threshold: pending requests per replica (llm-d's queueLengthThreshold is 5).
DEFAULT_KEDA_THRESHOLD = 5.0
# Concurrency target as a fraction of the engine's sequence slots (Knative's default target
# utilization is 70% of the container concurrency; KubeAI's targetRequests is set per model).
CONCURRENCY_UTILIZATION = 0.7


@dataclass(frozen=True)
class ScalingPolicy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    stabilization_s: float
    policies: tuple[ScalingPolicy, ...]


# autoscaling/v2 defaults (defaults.go); selectPolicy Max in both directions.
DEFAULT_SCALE_UP = ScalingRules(0.0, (ScalingPolicy("Pods", 4, 15.0), ScalingPolicy("Percent", 100, 15.0)))
DEFAULT_SCALE_DOWN = ScalingRules(300.0, (ScalingPolicy("Percent", 100, 15.0),))
DEFAULT_TOLERANCE = 0.1
HPA_SYNC_S = 15.0


class HpaCore:
    """The HPA's behavior handling: stabilization windows and rate policies around a metric rule."""

    def __init__(
        self,
        min_replicas: int,
        max_replicas: int,
        scale_up: ScalingRules = DEFAULT_SCALE_UP,
        scale_down: ScalingRules = DEFAULT_SCALE_DOWN,
    ) -> None:
        self.min_replicas = max(1, min_replicas)
        self.max_replicas = max_replicas
        self.scale_up = scale_up
        self.scale_down = scale_down
        self.recommendations: list[tuple[float, int]] = []
        self.events: list[tuple[float, int]] = []  # (time, replica change)
        self.last_sync = -math.inf

    def due(self, now: float) -> bool:
        return now - self.last_sync >= HPA_SYNC_S - 1e-9

    def reconcile(self, now: float, current: int, metric_desired: int | None) -> int:
        """One sync; `metric_desired` None means the metric could not be computed (no rescale)."""
        self.last_sync = now
        if current == 0:
            return current  # scaling is disabled at 0 replicas when minReplicas > 0
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        elif metric_desired is None:
            return current
        else:
            desired = self._rate_limited(now, current, self._stabilized(now, current, metric_desired))
        if desired != current:
            self.events.append((now, desired - current))
        return desired

    def _stabilized(self, now: float, current: int, desired: int) -> int:
        up_cut = now - self.scale_up.stabilization_s
        down_cut = now - self.scale_down.stabilization_s
        up = min([n for t, n in self.recommendations if t > up_cut], default=desired)
        down = max([n for t, n in self.recommendations if t > down_cut], default=desired)
        up, down = min(up, desired), max(down, desired)
        keep = max(self.scale_up.stabilization_s, self.scale_down.stabilization_s)
        self.recommendations = [(t, n) for t, n in self.recommendations if t > now - keep]
        self.recommendations.append((now, desired))
        return min(max(current, up), down)

    def _changed_within(self, period_s: float, now: float, sign: int) -> int:
        return sum(c for t, c in self.events if t > now - period_s and c * sign > 0) * sign

    def _rate_limited(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(
                self._period_start(current, p.period_s, now) + p.value
                if p.kind == "Pods"
                else math.ceil(self._period_start(current, p.period_s, now) * (1 + p.value / 100))
                for p in self.scale_up.policies
            )
            return min(desired, max(limit, current), self.max_replicas)
        if desired < current:
            limit = min(
                self._period_start(current, p.period_s, now) - p.value
                if p.kind == "Pods"
                else int(self._period_start(current, p.period_s, now) * (1 - p.value / 100))
                for p in self.scale_down.policies
            )
            return max(desired, min(limit, current), self.min_replicas)
        return desired

    def _period_start(self, current: int, period_s: float, now: float) -> int:
        """Replicas at the start of the policy's period: undo the changes made within it."""
        return current - self._changed_within(period_s, now, +1) + self._changed_within(period_s, now, -1)


def pods_metric_replicas(
    pod_values: tuple[float, ...], target: float, current: int, tolerance: float = DEFAULT_TOLERANCE
) -> int | None:
    """calcPlainMetricReplicas for a Pods metric with an AverageValue target.

    NaN marks a pod with no value (starting, or idle so its summary is empty): on scale-down it
    counts as using the target, on scale-up as using nothing, as in the HPA.
    """
    known = [v for v in pod_values if not math.isnan(v)]
    if not known:
        return None  # "did not receive metrics for targeted pods"
    missing = len(pod_values) - len(known)
    ratio = sum(known) / len(known) / target
    if missing == 0:
        return current if abs(1 - ratio) <= tolerance else math.ceil(ratio * len(known))
    filled = sum(known) + missing * (target if ratio < 1 else 0.0)
    new_ratio = filled / len(pod_values) / target
    if abs(1 - new_ratio) <= tolerance or (ratio < 1 < new_ratio) or (ratio > 1 > new_ratio):
        return current
    replicas = math.ceil(new_ratio * len(pod_values))
    if (new_ratio < 1 and replicas > current) or (new_ratio > 1 and replicas < current):
        return current
    return replicas


def external_average_value_replicas(
    value: float, target: float, status_replicas: int, tolerance: float = DEFAULT_TOLERANCE
) -> int:
    """GetExternalPerPodMetricReplicas: an External metric with an AverageValue target."""
    ratio = value / (target * status_replicas) if status_replicas else math.inf
    return math.ceil(value / target) if abs(1 - ratio) > tolerance else status_replicas


class HpaController:
    """HPA on the per-pod quantile of each SLO that is set (one Pods metric each via
    prometheus-adapter, AverageValue targets); with several metrics the HPA takes the largest
    recommendation, and acts only when at least one metric could be computed."""

    name = "hpa"
    reads_pods = True  # per-pod metrics, which only the HPA reads (they cost simulation time)

    def __init__(self, spec: AutoscalingSpec) -> None:
        self.targets_ms = {kind: float(v) for kind, v in spec.targets_ms().items()}
        self.core = HpaCore(spec.min_replicas, spec.max_replicas)

    def desired(self, view: PoolView) -> int:
        if not self.core.due(view.now):
            return view.replicas
        pods = view.pod_metrics_ms or {"latency": view.pod_latency_ms}
        wanted = [
            pods_metric_replicas(pods[kind], target, view.replicas)
            for kind, target in self.targets_ms.items()
            if kind in pods
        ]
        known = [w for w in wanted if w is not None]
        return self.core.reconcile(view.now, view.replicas, max(known) if known else None)


class ConcurrencyController:
    """Requests in flight (running plus waiting) per replica against a target, averaged over a
    60 s window (KubeAI's and Knative's stable window), with the HPA's behaviors around it."""

    name = "concurrency"

    def __init__(self, spec: AutoscalingSpec, target: float, window_s: float = 60.0) -> None:
        self.target = target
        self.window_s = window_s
        self.core = HpaCore(spec.min_replicas, spec.max_replicas)
        self.seen: list[tuple[float, float]] = []

    def desired(self, view: PoolView) -> int:
        self.seen = [(t, v) for t, v in self.seen if t > view.now - self.window_s]
        self.seen.append((view.now, view.sample.in_flight()))
        if not self.core.due(view.now):
            return view.replicas
        average = sum(v for _, v in self.seen) / len(self.seen)
        wanted = external_average_value_replicas(average, self.target, view.replicas)
        return self.core.reconcile(view.now, view.replicas, max(1, wanted))


class KedaController:
    """KEDA Prometheus scaler on the summed pending-request gauge, AverageValue `threshold`.

    KEDA activates (0 -> 1) when the value exceeds the activation threshold, checked every
    pollingInterval, and scales to zero after cooldownPeriod without activity (only when
    minReplicaCount is 0). Between 1 and max, the HPA it creates fetches the metric on its own
    15 s sync. Empty or NaN results count as 0 (ignoreNullValues: true).
    """

    name = "keda"

    def __init__(
        self,
        spec: AutoscalingSpec,
        threshold: float,
        polling_interval_s: float = 30.0,
        cooldown_period_s: float = 300.0,
        activation_threshold: float = 0.0,
    ) -> None:
        self.spec = spec
        self.threshold = threshold
        self.polling_interval_s = polling_interval_s
        self.cooldown_period_s = cooldown_period_s
        self.activation_threshold = activation_threshold
        self.core = HpaCore(spec.min_replicas, spec.max_replicas)
        self.last_poll = -math.inf
        self.last_active = -math.inf

    def desired(self, view: PoolView) -> int:
        value = view.sample.pending if math.isfinite(view.sample.pending) else 0.0
        if view.now - self.last_poll >= self.polling_interval_s - 1e-9:
            self.last_poll = view.now
            if value > self.activation_threshold:
                self.last_active = view.now
                if view.replicas == 0:
                    return 1
            elif (
                self.spec.min_replicas == 0
                and view.replicas > 0
                and view.now - self.last_active >= self.cooldown_period_s
            ):
                return 0
        if view.replicas == 0 or not self.core.due(view.now):
            return view.replicas
        wanted = external_average_value_replicas(value, self.threshold, view.replicas)
        return self.core.reconcile(view.now, view.replicas, wanted)


class BatchlineController:
    """Batchline's policy fed with the aggregated sample of each tick."""

    name = "batchline"

    def __init__(self, spec: AutoscalingSpec) -> None:
        self.spec = spec
        self.state = ScalerState()

    def desired(self, view: PoolView) -> int:
        decision = decide([view.sample], view.replicas, view.ready, self.spec, self.state, view.now)
        self.state = decision.state
        return decision.replicas


AnyController = BatchlineController | HpaController | KedaController | ConcurrencyController


def make_controller(
    policy: str,
    spec: AutoscalingSpec,
    keda_threshold: float = DEFAULT_KEDA_THRESHOLD,
    concurrency_target: float = 32.0,
) -> AnyController:
    factories: dict[str, Callable[[], AnyController]] = {
        "batchline": lambda: BatchlineController(spec),
        "hpa": lambda: HpaController(spec),
        "keda": lambda: KedaController(spec, keda_threshold),
        "concurrency": lambda: ConcurrencyController(spec, concurrency_target),
    }
    if policy not in factories:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    return factories[policy]()


def simulate_policy(
    trace: Trace,
    policy: str,
    spec: AutoscalingSpec,
    config: SimConfig,
    keda_threshold: float = DEFAULT_KEDA_THRESHOLD,
    concurrency_target: float | None = None,
) -> SimResult:
    """Replay `trace` under one policy; the pool's cold start and quantile come from `spec`, the
    SLOs from its targets. The concurrency target defaults to 70% of the engine's sequence slots."""
    config = replace(config, cold_start_s=float(spec.cold_start_seconds), latency_quantile=spec.latency_quantile)
    if concurrency_target is None:
        concurrency_target = max(1.0, CONCURRENCY_UTILIZATION * config.profile.max_num_seqs)
    controller = make_controller(policy, spec, keda_threshold, concurrency_target)
    targets = spec.targets_ms()
    slo = Targets(latency_ms=targets.get("latency"), ttft_ms=targets.get("ttft"), tpot_ms=targets.get("tpot"))
    return simulate(trace, controller, slo, config)
