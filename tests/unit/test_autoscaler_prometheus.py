"""PromQL templating and the per-tick fetch, against a fake PrometheusConnect."""

from __future__ import annotations

import math
from typing import Any

import pytest
import requests
from prometheus_api_client import PrometheusApiClientException

from batchline.autoscaler.prometheus import TEMPLATES, ObjectKey, QueryConfig, Status, fetch

NOW = 1_700_000_000.0
A = {"namespace": "team-a", "llmdeployment": "chat"}
B = {"namespace": "team-b", "llmdeployment": "code"}


def row(labels: dict[str, str], value: float | str) -> dict[str, Any]:
    return {"metric": labels, "value": [NOW, str(value)]}


class FakePrometheus:
    """Answers each signal's query with canned rows, keyed by the metric it reads."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]], error: Exception | None = None) -> None:
        self.answers = answers
        self.error = error
        self.queries: list[tuple[str, dict[str, Any] | None]] = []

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.queries.append((query, params))
        if self.error is not None:
            raise self.error
        for marker, rows in self.answers.items():
            if marker in query:
                return rows
        return []


def healthy() -> dict[str, list[dict[str, Any]]]:
    return {
        "nv_inference_request_summary_us": [
            row({**A, "quantile": "0.95"}, 2500.0),
            row({**A, "quantile": "0.5"}, 900.0),
            row({**B, "quantile": "0.95"}, "NaN"),
        ],
        "nv_inference_request_duration_us": [row(A, 1100.0), row(B, 700.0)],
        "nv_inference_queue_duration_us": [row(A, 40.0), row(B, 10.0)],
        "time() - timestamp": [row(A, 7.0), row(B, 3.0)],
        "nv_inference_pending_request_count": [row(A, 12.0), row(B, 0.0)],
        "nv_inference_request_success": [row(A, 3.5), row(B, 1.25)],
    }


def test_one_query_per_signal_grouped_by_object_labels() -> None:
    queries = QueryConfig().queries()
    assert set(queries) == set(TEMPLATES)
    per_object = {k: q for k, q in queries.items() if not k.startswith("gateway_")}
    assert all("by (namespace, llmdeployment" in q for q in per_object.values())
    assert all("by (model" in q for k, q in queries.items() if k.startswith("gateway_"))
    assert 'quantile=~"0.5|0.9|0.95|0.99"' in queries["latency_quantile_ms"]
    assert "max by (namespace, llmdeployment, quantile)" in queries["latency_quantile_ms"]
    assert "[60s]" in queries["request_rate"]


def test_label_names_and_selector_are_parameters() -> None:
    podmonitor = QueryConfig(object_label="batchline_dev_llmdeployment", selector='job="triton"')
    q = podmonitor.queries()
    assert "by (namespace, batchline_dev_llmdeployment)" in q["pending"]
    assert 'nv_inference_pending_request_count{job="triton"}' in q["pending"]
    assert 'quantile=~"0.5|0.9|0.95|0.99", job="triton"' in q["latency_quantile_ms"]
    static = QueryConfig(object_label="model_group", namespace_label=None, rate_window_s=30).queries()
    assert "by (model_group)" in static["request_rate"] and "[30s]" in static["request_rate"]
    assert "nv_inference_pending_request_count{}" in static["pending"]


def test_fetch_runs_each_query_once_for_all_objects() -> None:
    prom = FakePrometheus(healthy())
    result = fetch(prom, QueryConfig(), now=NOW)
    assert result.status is Status.OK
    assert len(prom.queries) == len(TEMPLATES)
    assert all(params == {"time": NOW} for _, params in prom.queries)
    assert result.keys() == [ObjectKey("team-a", "chat"), ObjectKey("team-b", "code")]


def test_sample_uses_the_spec_quantile_or_falls_back_to_the_mean() -> None:
    result = fetch(FakePrometheus(healthy()), QueryConfig(), now=NOW)
    chat = result.for_object(ObjectKey("team-a", "chat"), 0.95, staleness_s=60)
    assert chat.status is Status.OK and chat.sample is not None
    s = chat.sample
    assert (s.latency_ms, s.latency_is_mean, s.pending, s.request_rate, s.queue_ms) == (2500.0, False, 12.0, 3.5, 40.0)
    assert s.timestamp == NOW - 7.0 and s.window_s == 60
    median = result.for_object(ObjectKey("team-a", "chat"), 0.5, staleness_s=60).sample
    assert median is not None and median.latency_ms == 900.0
    code = result.for_object(ObjectKey("team-b", "code"), 0.95, staleness_s=60).sample
    assert code is not None and code.latency_is_mean and code.latency_ms == 700.0


@pytest.mark.parametrize(
    "error",
    [requests.ConnectionError("connection refused"), PrometheusApiClientException("HTTP Status Code 503")],
)
def test_prometheus_down_is_reported_not_raised(error: Exception) -> None:
    result = fetch(FakePrometheus({}, error=error), QueryConfig(), now=NOW)
    assert result.status is Status.PROMETHEUS_DOWN and "query failed" in result.detail
    metrics = result.for_object(ObjectKey("team-a", "chat"), 0.95, staleness_s=60)
    assert metrics.status is Status.PROMETHEUS_DOWN and metrics.sample is None


def test_unknown_object_nan_and_stale_signals_are_typed() -> None:
    answers = healthy()
    answers["nv_inference_pending_request_count"] = [row(A, "NaN")]
    answers["time() - timestamp"] = [row(A, 7.0), row(B, 400.0)]
    result = fetch(FakePrometheus(answers), QueryConfig(), now=NOW)
    assert result.for_object(ObjectKey("team-c", "x"), 0.95, 60).status is Status.NO_DATA
    nan = result.for_object(ObjectKey("team-a", "chat"), 0.95, 60)
    assert nan.status is Status.NAN and "pending" in nan.detail
    assert nan.sample is not None and math.isnan(nan.sample.pending)
    stale = result.for_object(ObjectKey("team-b", "code"), 0.95, 60)
    assert stale.status is Status.STALE and "400s old" in stale.detail


def test_empty_prometheus_means_no_data() -> None:
    result = fetch(FakePrometheus({}), QueryConfig(), now=NOW)
    assert result.status is Status.OK and result.keys() == []
    assert result.for_object(ObjectKey("team-a", "chat"), 0.95, 60).status is Status.NO_DATA


def engine_and_gateway() -> dict[str, list[dict[str, Any]]]:
    """Triton's metrics plus the in-flight engine's histograms and counters, and the gateway's."""
    gw_a, gw_b = {"model": "team-a/chat"}, {"model": "code"}
    return {
        "batchline_gateway_time_to_first_token_seconds_bucket": [row({**gw_a, "quantile": "0.95"}, 640.0)],
        "batchline_gateway_time_to_first_token_seconds_sum": [row(gw_a, 300.0)],
        "batchline_gateway_requests_waiting": [row(gw_a, 3.0), row(gw_b, 1.0)],
        "batchline_engine_time_to_first_token_seconds_bucket": [
            row({**A, "quantile": "0.95"}, 500.0),
            row({**B, "quantile": "0.95"}, 450.0),
        ],
        "batchline_engine_time_per_output_token_seconds_bucket": [row({**A, "quantile": "0.95"}, 42.0)],
        "batchline_engine_time_per_output_token_seconds_sum": [row(A, 30.0)],
        "batchline_engine_request_duration_seconds_bucket": [row({**A, "quantile": "0.95"}, 9000.0)],
        "batchline_engine_request_duration_seconds_count": [row(A, 4.0)],
        "batchline_engine_prompt_tokens_total": [row(A, 8000.0)],
        "batchline_engine_generation_tokens_total": [row(A, 900.0)],
        "batchline_engine_requests_running": [row(A, 20.0)],
        "batchline_engine_requests_waiting": [row(A, 5.0), row(B, 0.0)],
        **healthy(),
    }


def test_histogram_quantiles_are_cluster_wide_for_every_allowed_quantile() -> None:
    q = QueryConfig(selector='job="triton"', gateway_selector='job="gateway"').queries()
    ttft = q["engine_ttft_q_ms"]
    metric = 'batchline_engine_time_to_first_token_seconds_bucket{job="triton"}'
    inner = f"sum by (namespace, llmdeployment, le) (rate({metric}[60s]))"
    assert f"histogram_quantile(0.95, {inner})" in ttft
    assert ttft.count("histogram_quantile(") == 4 and '"quantile", "0.99"' in ttft
    gateway = q["gateway_ttft_q_ms"]
    metric = 'batchline_gateway_time_to_first_token_seconds_bucket{job="gateway"}'
    assert f"sum by (model, le) (rate({metric}[60s]))" in gateway


def test_gateway_then_engine_then_triton_signals_fill_the_sample() -> None:
    result = fetch(FakePrometheus(engine_and_gateway()), QueryConfig(), now=NOW)
    chat = result.for_object(ObjectKey("team-a", "chat"), 0.95, staleness_s=60)
    assert chat.status is Status.OK and chat.sample is not None
    s = chat.sample
    # TTFT as clients see it (the gateway's), TPOT and end-to-end from the engine's histograms.
    assert (s.ttft_ms, s.tpot_ms, s.latency_ms, s.latency_is_mean) == (640.0, 42.0, 9000.0, False)
    # Demand in tokens, requests finished by the engine, waiting at the engine and at the gateway.
    assert (s.prompt_tokens_rate, s.output_tokens_rate, s.request_rate) == (8000.0, 900.0, 4.0)
    assert (s.running, s.pending) == (20.0, 5.0 + 3.0)
    # A bare model name at the gateway matches the object of that name; no engine: Triton's figures.
    code = result.for_object(ObjectKey("team-b", "code"), 0.95, staleness_s=60).sample
    assert code is not None and code.ttft_ms == 450.0 and code.pending == 0.0 + 1.0
    assert math.isnan(code.output_tokens_rate) and code.request_rate == 1.25


def test_without_engine_or_gateway_series_token_signals_are_nan() -> None:
    result = fetch(FakePrometheus(healthy()), QueryConfig(), now=NOW)
    s = result.for_object(ObjectKey("team-a", "chat"), 0.95, staleness_s=60).sample
    assert s is not None and not s.tokens_known()
    assert math.isnan(s.ttft_ms) and math.isnan(s.tpot_ms) and s.latency_ms == 2500.0
