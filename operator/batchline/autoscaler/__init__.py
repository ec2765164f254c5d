"""Latency-goal autoscaling of Triton replicas: the policy, its Prometheus signals, a simulator.

What the operator calls each tick (all of it free of numpy and matplotlib):

    result = fetch(prom, QueryConfig())                    # six PromQL queries for all objects
    metrics = result.for_object(ObjectKey(ns, name), spec.latency_quantile, spec.metrics_staleness_seconds)
    decision = decide([metrics.sample] if metrics.sample else [], replicas, ready, spec, state, now)
"""

from batchline.autoscaler.policy import Decision, MetricSample, ScalerState, decide
from batchline.autoscaler.prometheus import FetchResult, ObjectKey, ObjectMetrics, QueryConfig, Status, fetch
from batchline.autoscaler.spec import AutoscalingSpec

__all__ = [
    "AutoscalingSpec",
    "Decision",
    "FetchResult",
    "MetricSample",
    "ObjectKey",
    "ObjectMetrics",
    "QueryConfig",
    "ScalerState",
    "Status",
    "decide",
    "fetch",
]
