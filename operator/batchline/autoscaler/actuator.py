"""Autoscaler actuation: one Prometheus fetch per tick for every LLMDeployment, one decision each.

The policy (autoscaler.policy) is pure. This module keeps what it remembers between ticks in
memory (a restarted operator re-learns capacity from a minute of traffic) and hands reconcile the
replica count to apply to the Deployment; the LLMDeployment's spec is never touched.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from batchline.autoscaler import AutoscalingSpec, ObjectKey, QueryConfig, ScalerState, Status, decide, fetch
from batchline.autoscaler.policy import MetricSample
from batchline.autoscaler.prometheus import FetchResult, PrometheusLike
from batchline.config import OperatorConfig
from batchline.timestamps import rfc3339

NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")
LATENCY_REPORT_CHANGE = 0.1  # report a new observed latency only when it moved by more than this fraction


@dataclass(frozen=True)
class ScaleView:
    """The last decision for one object, as status and reconcile read it."""

    replicas: int
    reason: str
    metrics: Status
    metrics_detail: str
    latency_ms: int | None = None
    queue_ms: int | None = None
    last_scale_time: str | None = None
    gpu_budget_reached: bool = False
    ttft_ms: int | None = None  # observed, only while spec.autoscaling.targetTimeToFirstTokenMs is set
    tpot_ms: int | None = None  # observed, only while spec.autoscaling.targetTimePerOutputTokenMs is set


@dataclass
class _Memory:
    state: ScalerState
    view: ScaleView
    evaluated_at: float


def _ms(value: float | None) -> int | None:
    return None if value is None or not math.isfinite(value) else round(value)


def _words(reason: str) -> str:
    """A reason without its figures."""
    return NUMBER.sub("#", reason)


def _reported(previous: int | None, observed: int | None) -> int | None:
    """Keep the reported figure unless it moved noticeably: a status write per tick is not worth a few ms."""
    if previous is None or observed is None:
        return observed
    return observed if abs(observed - previous) > LATENCY_REPORT_CHANGE * max(previous, 1) else previous


def _observed_target(target: int | None, previous: int | None, sample: MetricSample | None, name: str) -> int | None:
    """The observed value of a TTFT/TPOT target for status, only while that target is set."""
    if target is None:
        return None
    return _reported(previous, _ms(getattr(sample, name)) if sample else None)


def query_config(config: OperatorConfig) -> QueryConfig:
    """The Prometheus labels that name an LLMDeployment, as the operator's settings give them."""
    return QueryConfig(
        object_label=config.prometheus_object_label,
        namespace_label=config.prometheus_namespace_label or None,
        selector=config.prometheus_selector,
    )


class DecisionCode(StrEnum):
    """Why a decision came out as it did, in a few words fit for a metric label (its reason is free text)."""

    DISABLED = "AutoscalingDisabled"
    NO_METRICS = "MetricsUnavailable"  # Prometheus down, no data, NaN or stale: replicas held
    GPU_BUDGET = "GPUBudgetReached"  # replicas that cannot be scheduled: held
    LATENCY_TARGET = "LatencyTarget"  # sized to hold the latency (and TTFT/TPOT) targets


@dataclass(frozen=True)
class DecisionRecord:
    """One decision, as the operator's metrics record it."""

    namespace: str
    name: str
    current: int
    desired: int
    code: DecisionCode
    observed_latency_s: float | None
    target_latency_s: float


class Scaler:
    def __init__(
        self,
        prom: PrometheusLike,
        query: QueryConfig,
        on_decision: Callable[[DecisionRecord], None] | None = None,
    ) -> None:
        self._prom = prom
        self._query = query
        self._on_decision = on_decision  # once per decision on a new sample
        self._latest = FetchResult(Status.NO_DATA, "no Prometheus query has run yet", 0.0, query.rate_window_s)
        self._memory: dict[str, _Memory] = {}
        self._lock = threading.Lock()

    def refresh(self, now: float | None = None) -> FetchResult:
        """The tick's queries, for all objects at once."""
        result = fetch(self._prom, self._query, now)
        with self._lock:
            self._latest = result
        return result

    def view(self, uid: str) -> ScaleView | None:
        with self._lock:
            memory = self._memory.get(uid)
        return memory.view if memory else None

    def forget(self, uid: str) -> None:
        with self._lock:
            self._memory.pop(uid, None)

    def tick(
        self, llmd: Mapping[str, Any], current: int, ready: int, unschedulable: int, now: float | None = None
    ) -> ScaleView:
        """Decide once per fetched sample; a tick with no new sample returns the last decision."""
        now = time.time() if now is None else now
        meta, spec = llmd["metadata"], AutoscalingSpec.from_crd(llmd["spec"]["autoscaling"])
        with self._lock:
            latest, memory = self._latest, self._memory.get(meta["uid"])
        if memory and memory.evaluated_at == latest.evaluated_at:
            return memory.view
        metrics = latest.for_object(
            ObjectKey(meta["namespace"], meta["name"]), spec.latency_quantile, spec.metrics_staleness_seconds
        )
        state = memory.state if memory else ScalerState()
        samples = [metrics.sample] if metrics.sample and metrics.status is Status.OK else []
        decision = decide(samples, current, ready, spec, state, now)
        replicas, reason = decision.replicas, decision.reason
        if metrics.status is not Status.OK:
            reason = f"{reason} ({metrics.detail})"
        budget = replicas > current and unschedulable > 0
        if budget:
            replicas = current
            reason = f"held at {current}: {unschedulable} replicas cannot be scheduled (GPU budget reached)"
        previous = memory.view if memory else None
        scaled = replicas != current
        # Reason and detail carry figures (and error texts) that move every tick; status shows them
        # anew only when the decision, the metrics' state or the reason's words change (a hold for
        # "no traffic" becoming a hold "within tolerance"), so a steady object is not rewritten.
        same = (
            previous
            if previous
            and not scaled
            and (previous.replicas, previous.metrics) == (replicas, metrics.status)
            and (metrics.status is not Status.OK or _words(previous.reason) == _words(reason))
            else None
        )
        view = ScaleView(
            replicas=replicas,
            reason=same.reason if same else reason,
            metrics=metrics.status,
            metrics_detail=same.metrics_detail if same else metrics.detail,
            latency_ms=_reported(
                previous.latency_ms if previous else None, _ms(metrics.sample.latency_ms) if metrics.sample else None
            ),
            queue_ms=_reported(
                previous.queue_ms if previous else None, _ms(metrics.sample.queue_ms) if metrics.sample else None
            ),
            last_scale_time=rfc3339(now) if scaled else (previous.last_scale_time if previous else None),
            gpu_budget_reached=budget,
            ttft_ms=_observed_target(
                spec.target_time_to_first_token_ms, previous.ttft_ms if previous else None, metrics.sample, "ttft_ms"
            ),
            tpot_ms=_observed_target(
                spec.target_time_per_output_token_ms, previous.tpot_ms if previous else None, metrics.sample, "tpot_ms"
            ),
        )
        with self._lock:
            self._memory[meta["uid"]] = _Memory(decision.state, view, latest.evaluated_at)
        if self._on_decision is not None:
            code = (
                DecisionCode.DISABLED if not spec.enabled
                else DecisionCode.NO_METRICS if metrics.status is not Status.OK
                else DecisionCode.GPU_BUDGET if budget
                else DecisionCode.LATENCY_TARGET
            )  # fmt: skip
            latency = metrics.sample.latency_ms if metrics.sample else math.nan
            observed = latency / 1000 if math.isfinite(latency) else None
            target_s = (spec.target_latency_ms or 0) / 1000  # 0: no end-to-end target
            self._on_decision(
                DecisionRecord(meta["namespace"], meta["name"], current, replicas, code, observed, target_s)
            )
        return view

