"""PromQL for the autoscaler's signals, and one fetch per tick for every LLMDeployment.

Each signal is one query grouped by the labels that name an LLMDeployment, so a tick costs the
same six queries however many objects there are. Label names and an extra selector are template
parameters, so the queries fit a Prometheus Operator PodMonitor (pod label
`batchline.dev/llmdeployment` copied by `podTargetLabels`, which Prometheus sanitizes to
`batchline_dev_llmdeployment`, next to `namespace`) as well as a static scrape config with a
label of your own.

Triton's summaries cannot be aggregated across pods, so the latency quantile is the worst pod's
(`max by`); rates are summed over pods. Every failure comes back as a typed result, never as an
exception: the policy must hold, not crash, when Prometheus is down.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from prometheus_api_client import PrometheusApiClientException

from batchline.autoscaler.policy import MetricSample
from batchline.autoscaler.spec import ALLOWED_QUANTILES

# Placeholders: {by} grouping labels, {m} extra matchers (leading comma or empty),
# {sel} the same matchers without the comma, {w} the rate window, {q} the quantile regex.
TEMPLATES: dict[str, str] = {
    "latency_quantile_ms": '1e-3 * max by ({by}, quantile) (nv_inference_request_summary_us{{quantile=~"{q}"{m}}})',
    "latency_mean_ms": (
        "1e-3 * sum by ({by}) (rate(nv_inference_request_duration_us{{{sel}}}[{w}]))"
        " / sum by ({by}) (rate(nv_inference_request_success{{{sel}}}[{w}]))"
    ),
    "queue_ms": (
        "1e-3 * sum by ({by}) (rate(nv_inference_queue_duration_us{{{sel}}}[{w}]))"
        " / sum by ({by}) (rate(nv_inference_request_success{{{sel}}}[{w}]))"
    ),
    "pending": "sum by ({by}) (nv_inference_pending_request_count{{{sel}}})",
    "request_rate": "sum by ({by}) (rate(nv_inference_request_success{{{sel}}}[{w}]))",
    "age_s": "max by ({by}) (time() - timestamp(nv_inference_pending_request_count{{{sel}}}))",
}


class PrometheusLike(Protocol):
    """The part of prometheus_api_client.PrometheusConnect used here."""

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class QueryConfig:
    """Which labels name an LLMDeployment, and which series to look at.

    `namespace_label` None: a scrape config without namespaces (objects keyed by name only).
    `selector`: extra matchers such as `job="triton"`, added to every metric.
    """

    object_label: str = "llmdeployment"
    namespace_label: str | None = "namespace"
    selector: str = ""
    rate_window_s: int = 60

    def queries(self) -> dict[str, str]:
        """Every signal's PromQL, rendered; one query per signal covers all objects."""
        labels = [label for label in (self.namespace_label, self.object_label) if label]
        sel = self.selector.strip().strip(",")
        fields = {
            "by": ", ".join(labels),
            "m": f", {sel}" if sel else "",
            "sel": sel,
            "w": f"{self.rate_window_s}s",
            "q": "|".join(str(q) for q in ALLOWED_QUANTILES),
        }
        return {name: template.format(**fields) for name, template in TEMPLATES.items()}

    def key(self, labels: Mapping[str, str]) -> ObjectKey:
        namespace = labels.get(self.namespace_label, "") if self.namespace_label else ""
        return ObjectKey(namespace, labels.get(self.object_label, ""))


@dataclass(frozen=True, order=True)
class ObjectKey:
    namespace: str
    name: str


class Status(StrEnum):
    OK = "ok"
    PROMETHEUS_DOWN = "prometheus-down"
    NO_DATA = "no-data"
    NAN = "nan"
    STALE = "stale"


@dataclass
class _Signals:
    quantiles_ms: dict[float, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectMetrics:
    """One object's sample and whether it can be trusted; `detail` says what is wrong."""

    status: Status
    detail: str
    sample: MetricSample | None


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one tick's queries."""

    status: Status  # OK or PROMETHEUS_DOWN
    detail: str
    evaluated_at: float
    window_s: float
    signals: Mapping[ObjectKey, _Signals] = field(default_factory=dict)

    def keys(self) -> list[ObjectKey]:
        return sorted(self.signals)

    def for_object(self, key: ObjectKey, quantile: float, staleness_s: float) -> ObjectMetrics:
        """The sample for `key` at the spec's quantile; summaries absent: the mean latency."""
        if self.status is not Status.OK:
            return ObjectMetrics(self.status, self.detail, None)
        signals = self.signals.get(key)
        if signals is None:
            return ObjectMetrics(Status.NO_DATA, f"no Triton series for {key.namespace}/{key.name}", None)
        values = signals.values
        summary = signals.quantiles_ms.get(quantile, math.nan)
        latency_is_mean = math.isnan(summary)
        age = values.get("age_s", math.nan)
        sample = MetricSample(
            timestamp=self.evaluated_at - (age if math.isfinite(age) else 0.0),
            request_rate=values.get("request_rate", math.nan),
            pending=values.get("pending", math.nan),
            latency_ms=values.get("latency_mean_ms", math.nan) if latency_is_mean else summary,
            queue_ms=values.get("queue_ms", math.nan),
            latency_is_mean=latency_is_mean,
            window_s=self.window_s,
        )
        if math.isfinite(age) and age > staleness_s:
            return ObjectMetrics(Status.STALE, f"newest scrape is {age:.0f}s old (limit {staleness_s:g}s)", sample)
        missing = [name for name in ("request_rate", "pending") if not math.isfinite(getattr(sample, name))]
        if missing:
            return ObjectMetrics(Status.NAN, f"no value for {', '.join(missing)}", sample)
        return ObjectMetrics(Status.OK, "", sample)


def fetch(prom: PrometheusLike, config: QueryConfig, now: float | None = None) -> FetchResult:
    """Run every signal's query once, at one evaluation time, for all objects."""
    at = time.time() if now is None else now
    signals: dict[ObjectKey, _Signals] = {}
    for name, query in config.queries().items():
        try:
            rows = prom.custom_query(query, params={"time": at})
        except (OSError, ValueError, KeyError, PrometheusApiClientException) as exc:
            return FetchResult(Status.PROMETHEUS_DOWN, f"{name} query failed: {_brief(exc)}", at, config.rate_window_s)
        for labels, value in _rows(rows):
            entry = signals.setdefault(config.key(labels), _Signals())
            if name == "latency_quantile_ms":
                entry.quantiles_ms[float(labels.get("quantile", "nan"))] = value
            else:
                entry.values[name] = value
    return FetchResult(Status.OK, "", at, config.rate_window_s, signals)


_URL = re.compile(r" with url: \S+")


def _brief(exc: Exception) -> str:
    """The error without the query URL, whose time parameter changes every tick: status must not churn."""
    return _URL.sub("", str(exc))


def _rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, str], float]]:
    """(labels, value) per instant-vector row; Prometheus sends values as strings, NaN included."""
    out = []
    for row in rows:
        try:
            out.append((row.get("metric", {}), float(row["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    return out
