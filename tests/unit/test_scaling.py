"""Autoscaler actuation: decisions per fetched sample, GPU budget, and holding without metrics.

Prometheus is a fake here (pure logic); tests/integration/test_autoscaling_loop.py runs the real one.
"""

from __future__ import annotations

from typing import Any

from batchline.autoscaler import QueryConfig, Status
from batchline.autoscaler.actuator import DecisionCode, DecisionRecord, Scaler
from tests.crd_schema import llmd

OBJ = llmd(name="chat", autoscaling={"minReplicas": 1, "maxReplicas": 8, "targetLatencyMs": 1000})
LABELS = {"namespace": "team-a", "llmdeployment": "chat"}


class FakePrometheus:
    """Answers every Triton query with one series for `chat`; `pending` drives the queue signal.

    With `ttft_ms` the in-flight engine's TTFT histogram answers too; other engine and gateway
    series are absent (a Triton-only deployment)."""

    def __init__(
        self,
        pending: float,
        latency_ms: float = 3000.0,
        up: bool = True,
        ttft_ms: float | None = None,
        rate: float = 2.0,
    ) -> None:
        self.pending, self.latency_ms, self.up, self.queries = pending, latency_ms, up, 0
        self.ttft_ms, self.rate = ttft_ms, rate

    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.queries += 1
        if not self.up:
            raise OSError(f"connection refused (attempt {self.queries})")  # real errors differ each time
        at = (params or {}).get("time", 0.0)
        if "batchline_engine_time_to_first_token_seconds_bucket" in query and self.ttft_ms is not None:
            return [{"metric": {**LABELS, "quantile": "0.95"}, "value": [at, str(self.ttft_ms)]}]
        if "batchline_" in query:
            return []
        if "summary" in query:
            return [{"metric": {**LABELS, "quantile": "0.95"}, "value": [at, str(self.latency_ms)]}]
        if "time()" in query:
            value = 1.0  # age of the newest scrape, seconds
        elif "pending_request" in query:
            value = self.pending
        else:
            value = self.rate  # request rate, mean latency and queue time
        return [{"metric": LABELS, "value": [at, str(value)]}]


def _scaler(prom: FakePrometheus) -> Scaler:
    return Scaler(prom, QueryConfig(object_label="llmdeployment"))


def test_a_growing_queue_scales_up_once_per_sample() -> None:
    prom = FakePrometheus(pending=40)
    scaler = _scaler(prom)
    scaler.refresh(now=1000.0)
    view = scaler.tick(OBJ, current=1, ready=1, unschedulable=0, now=1000.0)
    assert view.replicas > 1 and view.metrics is Status.OK and view.last_scale_time
    assert scaler.tick(OBJ, current=view.replicas, ready=1, unschedulable=0, now=1001.0) == view  # no new sample


def test_unschedulable_replicas_hold_the_count_instead_of_asking_for_more() -> None:
    scaler = _scaler(FakePrometheus(pending=40))
    scaler.refresh(now=1000.0)
    view = scaler.tick(OBJ, current=3, ready=3, unschedulable=1, now=1000.0)
    assert view.replicas == 3 and view.gpu_budget_reached
    assert "cannot be scheduled" in view.reason


def test_prometheus_down_holds_replicas_and_says_why() -> None:
    scaler = _scaler(FakePrometheus(pending=40, up=False))
    scaler.refresh(now=1000.0)
    view = scaler.tick(OBJ, current=3, ready=3, unschedulable=0, now=1000.0)
    assert view.replicas == 3
    assert view.metrics is Status.PROMETHEUS_DOWN and "connection refused" in view.metrics_detail


def test_one_query_per_signal_whatever_the_number_of_objects() -> None:
    prom = FakePrometheus(pending=0)
    scaler = _scaler(prom)
    scaler.refresh(now=1000.0)
    for i in range(50):
        scaler.tick(llmd(name=f"m{i}"), current=1, ready=1, unschedulable=0, now=1000.0)
    assert prom.queries == len(QueryConfig().queries())


def test_an_unchanged_outage_does_not_rewrite_what_status_shows() -> None:
    prom = FakePrometheus(pending=0, up=False)
    scaler = _scaler(prom)
    scaler.refresh(now=1000.0)
    first = scaler.tick(OBJ, current=2, ready=2, unschedulable=0, now=1000.0)
    scaler.refresh(now=1015.0)  # same outage, a new error object (its text differs)
    prom.up = False
    second = scaler.tick(OBJ, current=2, ready=2, unschedulable=0, now=1015.0)
    assert (second.reason, second.metrics_detail) == (first.reason, first.metrics_detail)


def test_a_hold_whose_reason_changes_shows_the_new_reason() -> None:
    prom = FakePrometheus(pending=0, rate=0.0, latency_ms=500.0)
    scaler = _scaler(prom)
    scaler.refresh(now=1000.0)
    idle = scaler.tick(OBJ, current=1, ready=1, unschedulable=0, now=1000.0)
    assert idle.replicas == 1 and "no traffic" in idle.reason
    prom.rate = 2.0  # traffic starts, well within the latency target: still one replica
    scaler.refresh(now=1015.0)
    busy = scaler.tick(OBJ, current=1, ready=1, unschedulable=0, now=1015.0)
    assert busy.replicas == 1 and "no traffic" not in busy.reason and "per replica" in busy.reason


def test_each_decision_on_a_new_sample_is_recorded_once_with_a_code_fit_for_a_label() -> None:
    records: list[DecisionRecord] = []
    prom = FakePrometheus(pending=40)
    scaler = Scaler(prom, QueryConfig(object_label="llmdeployment"), on_decision=records.append)
    scaler.refresh(now=1000.0)
    view = scaler.tick(OBJ, current=1, ready=1, unschedulable=0, now=1000.0)
    scaler.tick(OBJ, current=view.replicas, ready=1, unschedulable=0, now=1001.0)  # same sample: no new decision
    assert [(r.current, r.desired, r.code, r.observed_latency_s, r.target_latency_s) for r in records] == [
        (1, view.replicas, DecisionCode.LATENCY_TARGET, 3.0, 1.0)
    ]
    prom.up = False
    scaler.refresh(now=1015.0)
    scaler.tick(OBJ, current=view.replicas, ready=view.replicas, unschedulable=0, now=1015.0)
    assert records[-1].code is DecisionCode.NO_METRICS and records[-1].desired == view.replicas


def test_status_shows_the_observed_value_of_each_target_in_use() -> None:
    ttft_obj = llmd(
        name="chat", autoscaling={"maxReplicas": 8, "targetLatencyMs": 0, "targetTimeToFirstTokenMs": 500}
    )
    scaler = _scaler(FakePrometheus(pending=0, ttft_ms=750.0))
    scaler.refresh(now=1000.0)
    view = scaler.tick(ttft_obj, current=2, ready=2, unschedulable=0, now=1000.0)
    assert view.ttft_ms == 750 and view.tpot_ms is None
    # An object that does not target TTFT does not show it, though the engine reports it.
    plain = _scaler(FakePrometheus(pending=0, ttft_ms=750.0))
    plain.refresh(now=1000.0)
    assert plain.tick(OBJ, current=2, ready=2, unschedulable=0, now=1000.0).ttft_ms is None
