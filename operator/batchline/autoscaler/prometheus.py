"""PromQL for the autoscaler's signals, and one fetch per tick for every LLMDeployment.

Each signal is one query grouped by the labels that name an LLMDeployment, so a tick costs the
same queries however many objects there are. Label names and an extra selector are template
parameters, so the queries fit a Prometheus Operator PodMonitor (pod label
`batchline.dev/llmdeployment` copied by `podTargetLabels`, which Prometheus sanitizes to
`batchline_dev_llmdeployment`, next to `namespace`) as well as a static scrape config with a
label of your own.

Three sources, the best present wins per object and signal:

* the gateway's histograms (`batchline_gateway_*`, label `model`: the LLMDeployment's name or
  `namespace/name`): TTFT, TPOT and end-to-end latency as clients see them, time held at the
  gateway included, summed over gateway replicas before `histogram_quantile`; its waiting gauge
  adds to the pending requests;
* the in-flight engine's Triton custom metrics (`batchline_engine_time_to_first_token_seconds`,
  `batchline_engine_time_per_output_token_seconds`, `batchline_engine_request_duration_seconds`,
  `batchline_engine_requests_running`, `batchline_engine_requests_waiting`, `batchline_engine_prompt_tokens_total`,
  `batchline_engine_generation_tokens_total`): histograms summed over pods, then the quantile
  (cluster-wide), and the token counters the policy measures demand in;
* Triton's own metrics: per-pod summaries (which cannot be aggregated, so the worst pod's), the
  mean when summaries are off, the pending gauge and the success counter.

Every failure comes back as a typed result, never as an exception: the policy must hold, not
crash, when Prometheus is down.
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
# {sel} the same matchers without the comma, {w} the rate window, {q} the quantile regex;
# {gsel} the gateway's matchers. Histogram quantiles are one query for every allowed quantile,
# each labelled `quantile` by label_replace.
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
    # The in-flight engine (Triton custom metrics of the python backend), per object.
    "engine_latency_q_ms": "hq batchline_engine_request_duration_seconds",
    "engine_ttft_q_ms": "hq batchline_engine_time_to_first_token_seconds",
    "engine_tpot_q_ms": "hq batchline_engine_time_per_output_token_seconds",
    "engine_ttft_mean_ms": (
        "1e3 * sum by ({by}) (rate(batchline_engine_time_to_first_token_seconds_sum{{{sel}}}[{w}]))"
        " / sum by ({by}) (rate(batchline_engine_time_to_first_token_seconds_count{{{sel}}}[{w}]))"
    ),
    "engine_tpot_mean_ms": (
        "1e3 * sum by ({by}) (rate(batchline_engine_time_per_output_token_seconds_sum{{{sel}}}[{w}]))"
        " / sum by ({by}) (rate(batchline_engine_time_per_output_token_seconds_count{{{sel}}}[{w}]))"
    ),
    "engine_request_rate": "sum by ({by}) (rate(batchline_engine_request_duration_seconds_count{{{sel}}}[{w}]))",
    "prompt_tokens_rate": "sum by ({by}) (rate(batchline_engine_prompt_tokens_total{{{sel}}}[{w}]))",
    "output_tokens_rate": "sum by ({by}) (rate(batchline_engine_generation_tokens_total{{{sel}}}[{w}]))",
    "running": "sum by ({by}) (batchline_engine_requests_running{{{sel}}})",
    "engine_waiting": "sum by ({by}) (batchline_engine_requests_waiting{{{sel}}})",
    # The gateway, per model id (all gateway replicas summed).
    "gateway_latency_q_ms": "ghq batchline_gateway_request_duration_seconds",
    "gateway_ttft_q_ms": "ghq batchline_gateway_time_to_first_token_seconds",
    "gateway_tpot_q_ms": "ghq batchline_gateway_time_per_output_token_seconds",
    "gateway_ttft_mean_ms": (
        "1e3 * sum by ({gby}) (rate(batchline_gateway_time_to_first_token_seconds_sum{{{gsel}}}[{w}]))"
        " / sum by ({gby}) (rate(batchline_gateway_time_to_first_token_seconds_count{{{gsel}}}[{w}]))"
    ),
    "gateway_tpot_mean_ms": (
        "1e3 * sum by ({gby}) (rate(batchline_gateway_time_per_output_token_seconds_sum{{{gsel}}}[{w}]))"
        " / sum by ({gby}) (rate(batchline_gateway_time_per_output_token_seconds_count{{{gsel}}}[{w}]))"
    ),
    "gateway_waiting": "sum by ({gby}) (batchline_gateway_requests_waiting{{{gsel}}})",
}
_QUANTILE_SIGNALS = {
    "latency_quantile_ms",
    "engine_latency_q_ms",
    "engine_ttft_q_ms",
    "engine_tpot_q_ms",
    "gateway_latency_q_ms",
    "gateway_ttft_q_ms",
    "gateway_tpot_q_ms",
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
    gateway_model_label: str = "model"
    gateway_selector: str = ""

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
            "gby": self.gateway_model_label,
            "gsel": self.gateway_selector.strip().strip(","),
        }
        out = {}
        for name, template in TEMPLATES.items():
            kind, _, metric = template.partition(" ")
            if kind == "hq":
                out[name] = _histogram_quantiles(metric, fields["by"], fields["sel"], fields["w"])
            elif kind == "ghq":
                out[name] = _histogram_quantiles(metric, fields["gby"], fields["gsel"], fields["w"])
            else:
                out[name] = template.format(**fields)
        return out

    def key(self, labels: Mapping[str, str]) -> ObjectKey:
        namespace = labels.get(self.namespace_label, "") if self.namespace_label else ""
        return ObjectKey(namespace, labels.get(self.object_label, ""))

    def gateway_key(self, labels: Mapping[str, str]) -> ObjectKey:
        """The gateway's model id is `name` or `namespace/name`; a bare name has namespace ""."""
        model = labels.get(self.gateway_model_label, "")
        namespace, _, name = model.rpartition("/")
        return ObjectKey(namespace, name)


def _histogram_quantiles(metric: str, by: str, sel: str, window: str) -> str:
    """Every allowed quantile of a histogram summed over pods (or gateway replicas), in ms, one series
    per object and quantile."""
    parts = [
        f'label_replace(1e3 * histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{window}]))),'
        f' "quantile", "{q}", "", "")'
        for q in ALLOWED_QUANTILES
    ]
    return " or ".join(parts)


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
    quantiles_ms: dict[float, float] = field(default_factory=dict)  # Triton's summaries
    values: dict[str, float] = field(default_factory=dict)
    histogram_ms: dict[str, dict[float, float]] = field(default_factory=dict)  # signal -> quantile -> ms


def _first(*values: float) -> float:
    """The first finite value (the preferred source first), else NaN."""
    return next((v for v in values if math.isfinite(v)), math.nan)


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
    gateway: Mapping[ObjectKey, _Signals] = field(default_factory=dict)

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
        gateway = self.gateway.get(key) or self.gateway.get(ObjectKey("", key.name)) or _Signals()
        nan = math.nan

        def q(source: _Signals, name: str) -> float:
            return source.histogram_ms.get(name, {}).get(quantile, nan)

        latency = _first(
            q(gateway, "gateway_latency_q_ms"),
            q(signals, "engine_latency_q_ms"),
            signals.quantiles_ms.get(quantile, nan),
        )
        latency_is_mean = math.isnan(latency)
        age = values.get("age_s", nan)
        engine_waiting = values.get("engine_waiting", nan)
        pending = engine_waiting if math.isfinite(engine_waiting) else values.get("pending", nan)
        g = gateway.values
        pending += g.get("gateway_waiting", 0.0) if math.isfinite(pending) else 0.0
        sample = MetricSample(
            timestamp=self.evaluated_at - (age if math.isfinite(age) else 0.0),
            request_rate=_first(values.get("engine_request_rate", nan), values.get("request_rate", nan)),
            pending=pending,
            latency_ms=values.get("latency_mean_ms", nan) if latency_is_mean else latency,
            queue_ms=values.get("queue_ms", nan),
            latency_is_mean=latency_is_mean,
            window_s=self.window_s,
            prompt_tokens_rate=values.get("prompt_tokens_rate", nan),
            output_tokens_rate=values.get("output_tokens_rate", nan),
            running=values.get("running", nan),
            ttft_ms=_first(q(gateway, "gateway_ttft_q_ms"), q(signals, "engine_ttft_q_ms")),
            tpot_ms=_first(q(gateway, "gateway_tpot_q_ms"), q(signals, "engine_tpot_q_ms")),
            ttft_mean_ms=_first(g.get("gateway_ttft_mean_ms", nan), values.get("engine_ttft_mean_ms", nan)),
            tpot_mean_ms=_first(g.get("gateway_tpot_mean_ms", nan), values.get("engine_tpot_mean_ms", nan)),
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
    gateway: dict[ObjectKey, _Signals] = {}
    for name, query in config.queries().items():
        try:
            rows = prom.custom_query(query, params={"time": at})
        except (OSError, ValueError, KeyError, PrometheusApiClientException) as exc:
            return FetchResult(Status.PROMETHEUS_DOWN, f"{name} query failed: {_brief(exc)}", at, config.rate_window_s)
        from_gateway = name.startswith("gateway_")
        for labels, value in _rows(rows):
            if from_gateway:
                entry = gateway.setdefault(config.gateway_key(labels), _Signals())
            else:
                entry = signals.setdefault(config.key(labels), _Signals())
            if name == "latency_quantile_ms":
                entry.quantiles_ms[float(labels.get("quantile", "nan"))] = value
            elif name in _QUANTILE_SIGNALS:
                entry.histogram_ms.setdefault(name, {})[float(labels.get("quantile", "nan"))] = value
            else:
                entry.values[name] = value
    return FetchResult(Status.OK, "", at, config.rate_window_s, signals, gateway)


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
