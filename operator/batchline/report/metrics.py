"""The operator's own Prometheus metrics and the HTTP exporter that serves them.

Per-object series carry the labels `namespace` and `llmdeployment`, the same names the Triton
pods' metrics get from their PodMonitor, so dashboards can join the two (the chart's
ServiceMonitor sets honorLabels so the operator pod's own namespace does not overwrite them).
Call `forget` when an LLMDeployment goes away, or its series would be exported forever.

Everything lives in a registry of its own, so importing this module twice in one process
(tests, the embedded local mode) never collides with the default registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from batchline.autoscaler.actuator import DecisionRecord

METRICS_PORT_ENV = "BATCHLINE_METRICS_PORT"
OBJECT = ("namespace", "llmdeployment")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

RECONCILES = Counter(
    "batchline_reconcile",
    "Reconcile passes, by result (success or error).",
    [*OBJECT, "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "batchline_reconcile_errors",
    "Reconcile passes that raised, by exception class.",
    [*OBJECT, "error"],
    registry=REGISTRY,
)
RECONCILE_WRITES = Counter(
    "batchline_reconcile_writes",
    "API write calls made by reconcile passes (0 for a pass that found nothing to change).",
    OBJECT,
    registry=REGISTRY,
)
WRITES = Counter(
    "batchline_writes",
    "API write calls the operator made, by kind of object (status and Event included).",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "batchline_reconcile_duration_seconds",
    "Wall time of one reconcile pass.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
BUILDS = Counter(
    "batchline_builds",
    "Model repository builds, by result (started, succeeded or failed).",
    [*OBJECT, "result"],
    registry=REGISTRY,
)
BUILD_SECONDS = Histogram(
    "batchline_build_duration_seconds",
    "Wall time of finished model repository builds (download, quantize, check, write).",
    [*OBJECT, "result"],
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
    registry=REGISTRY,
)
BUILDS_RUNNING = Gauge(
    "batchline_builds_running",
    "Model repository builds in progress.",
    OBJECT,
    registry=REGISTRY,
)
SCALE_DECISIONS = Counter(
    "batchline_scale_decisions",
    "Autoscaler decisions, by direction (up, down or hold) and reason.",
    [*OBJECT, "direction", "reason"],
    registry=REGISTRY,
)
DESIRED_REPLICAS = Gauge(
    "batchline_desired_replicas",
    "Triton replicas the operator wants for an LLMDeployment.",
    OBJECT,
    registry=REGISTRY,
)
ACTUAL_REPLICAS = Gauge(
    "batchline_replicas",
    "Triton pods that exist for an LLMDeployment.",
    OBJECT,
    registry=REGISTRY,
)
READY_REPLICAS = Gauge(
    "batchline_ready_replicas",
    "Triton pods that pass their readiness probe.",
    OBJECT,
    registry=REGISTRY,
)
OBSERVED_LATENCY = Gauge(
    "batchline_autoscaler_observed_latency_seconds",
    "Latency at spec.autoscaling.latencyQuantile that the autoscaler last observed.",
    OBJECT,
    registry=REGISTRY,
)
TARGET_LATENCY = Gauge(
    "batchline_autoscaler_target_latency_seconds",
    "spec.autoscaling.targetLatencyMs, in seconds.",
    OBJECT,
    registry=REGISTRY,
)
PER_OBJECT = (
    RECONCILES, RECONCILE_ERRORS, RECONCILE_WRITES, BUILDS, BUILD_SECONDS, BUILDS_RUNNING, SCALE_DECISIONS,
    DESIRED_REPLICAS, ACTUAL_REPLICAS, READY_REPLICAS, OBSERVED_LATENCY, TARGET_LATENCY,
)


@dataclass
class ReconcilePass:
    """Handed out by `reconciling`; set `writes` to what reconcile() returned."""

    writes: int = 0


@contextmanager
def reconciling(namespace: str, name: str) -> Iterator[ReconcilePass]:
    """Time one reconcile pass and count it as success, or as error (the exception propagates)."""
    started = time.perf_counter()
    result = ReconcilePass()
    try:
        yield result
    except Exception as err:
        RECONCILES.labels(namespace, name, "error").inc()
        RECONCILE_ERRORS.labels(namespace, name, type(err).__name__).inc()
        raise
    else:
        RECONCILES.labels(namespace, name, "success").inc()
        RECONCILE_WRITES.labels(namespace, name).inc(result.writes)
    finally:
        RECONCILE_SECONDS.observe(time.perf_counter() - started)


def record_replicas(namespace: str, name: str, desired: int, replicas: int, ready: int) -> None:
    DESIRED_REPLICAS.labels(namespace, name).set(desired)
    ACTUAL_REPLICAS.labels(namespace, name).set(replicas)
    READY_REPLICAS.labels(namespace, name).set(ready)


def build_started(namespace: str, name: str) -> None:
    BUILDS.labels(namespace, name, "started").inc()
    BUILDS_RUNNING.labels(namespace, name).inc()


def build_finished(namespace: str, name: str, succeeded: bool, seconds: float) -> None:
    result = "succeeded" if succeeded else "failed"
    BUILDS.labels(namespace, name, result).inc()
    BUILD_SECONDS.labels(namespace, name, result).observe(seconds)
    BUILDS_RUNNING.labels(namespace, name).dec()


def record_scale_decision(decision: DecisionRecord) -> None:
    """One autoscaler decision on a new sample (autoscaler.actuator.Scaler calls it). Its label is the
    decision's code, a short CamelCase constant, never free text: each distinct value is a time series."""
    namespace, name = decision.namespace, decision.name
    change = decision.desired - decision.current
    direction = "up" if change > 0 else "down" if change < 0 else "hold"
    SCALE_DECISIONS.labels(namespace, name, direction, decision.code).inc()
    DESIRED_REPLICAS.labels(namespace, name).set(decision.desired)
    if decision.observed_latency_s is not None:
        OBSERVED_LATENCY.labels(namespace, name).set(decision.observed_latency_s)
    TARGET_LATENCY.labels(namespace, name).set(decision.target_latency_s)


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted LLMDeployment."""
    for metric in PER_OBJECT:
        metric.remove_by_labels({"namespace": namespace, "llmdeployment": name})
    for gauge in STATUS_GAUGES:
        gauge.remove_by_labels({"namespace": namespace, "llmdeployment": name})
    _CONDITION_SERIES.pop((namespace, name), None)


def exporter_port(env: Mapping[str, str] | None = None) -> int | None:
    """The port from BATCHLINE_METRICS_PORT, or None when unset or 0 (no exporter: local runs
    start several operators on one machine, so only the chart turns it on)."""
    raw = (os.environ if env is None else env).get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    return int(raw) or None


def start_exporter(port: int | None = None, addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve /metrics in a daemon thread on `port` (default: exporter_port(); 0 picks a free port).

    Returns the server (its server_port is the bound port), or None when the exporter is off."""
    port = exporter_port() if port is None else port
    if port is None:
        return None
    server, _thread = start_http_server(port, addr, registry=REGISTRY)
    return server


# What the alerts (the chart's PrometheusRule) need from an LLMDeployment's status and spec.
CONDITION = Gauge(
    "batchline_condition",
    "An LLMDeployment's status conditions: 1 for each condition type's current status and reason.",
    [*OBJECT, "type", "status", "reason"],
    registry=REGISTRY,
)
MIN_REPLICAS = Gauge(
    "batchline_autoscaler_min_replicas",
    "spec.autoscaling.minReplicas.",
    OBJECT,
    registry=REGISTRY,
)
MAX_REPLICAS = Gauge(
    "batchline_autoscaler_max_replicas",
    "spec.autoscaling.maxReplicas.",
    OBJECT,
    registry=REGISTRY,
)
STATUS_GAUGES = (CONDITION, MIN_REPLICAS, MAX_REPLICAS)
# (namespace, name) -> the label values of its condition series now exported, so a pass removes the old ones.
_CONDITION_SERIES: dict[tuple[str, str], set[tuple[str, str, str]]] = {}


def record_status(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Export what a reconcile pass just computed for an LLMDeployment: each condition in status.conditions
    as batchline_condition{type, status, reason} 1 (one series per type: a changed status or reason replaces
    the old series) and spec.autoscaling's replica bounds. The reasons are the operator's CamelCase constants
    (batchline.conditions.Reason), so the series stay few."""
    current = {(c["type"], c["status"], c.get("reason") or "") for c in status.get("conditions") or []}
    for ctype, cstatus, reason in _CONDITION_SERIES.get((namespace, name), set()) - current:
        CONDITION.remove_by_labels(
            {"namespace": namespace, "llmdeployment": name, "type": ctype, "status": cstatus, "reason": reason}
        )
    for ctype, cstatus, reason in current:
        CONDITION.labels(namespace, name, ctype, cstatus, reason).set(1)
    _CONDITION_SERIES[(namespace, name)] = current
    autoscaling = spec.get("autoscaling") or {}
    if "minReplicas" in autoscaling:
        MIN_REPLICAS.labels(namespace, name).set(autoscaling["minReplicas"])
    if "maxReplicas" in autoscaling:
        MAX_REPLICAS.labels(namespace, name).set(autoscaling["maxReplicas"])
