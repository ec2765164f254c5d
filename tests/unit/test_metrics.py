"""The operator's metrics: what each recording function exports, and the HTTP exporter."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchline.autoscaler.actuator import DecisionCode, DecisionRecord
from batchline.report import metrics


@pytest.fixture
def obj() -> tuple[str, str]:
    """A fresh (namespace, name), so series from other tests never add up with this one's."""
    return ("ns", f"llmd-{uuid.uuid4().hex[:8]}")


def value(name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels or {})


def test_reconciling_counts_success_writes_and_duration(obj: tuple[str, str]) -> None:
    ns, name = obj
    before = value("batchline_reconcile_duration_seconds_count") or 0.0
    with metrics.reconciling(ns, name) as run:
        run.writes = 3
    with metrics.reconciling(ns, name):
        pass
    labels = {"namespace": ns, "llmdeployment": name}
    assert value("batchline_reconcile_total", {**labels, "result": "success"}) == 2
    assert value("batchline_reconcile_writes_total", labels) == 3
    assert value("batchline_reconcile_total", {**labels, "result": "error"}) is None
    assert value("batchline_reconcile_duration_seconds_count") == before + 2


def test_reconciling_counts_errors_by_class_and_reraises(obj: tuple[str, str]) -> None:
    ns, name = obj
    with pytest.raises(KeyError), metrics.reconciling(ns, name):
        raise KeyError("spec")
    labels = {"namespace": ns, "llmdeployment": name}
    assert value("batchline_reconcile_total", {**labels, "result": "error"}) == 1
    assert value("batchline_reconcile_errors_total", {**labels, "error": "KeyError"}) == 1
    assert value("batchline_reconcile_writes_total", labels) is None


def test_builds_count_results_time_and_running(obj: tuple[str, str]) -> None:
    ns, name = obj
    labels = {"namespace": ns, "llmdeployment": name}
    metrics.build_started(ns, name)
    metrics.build_started(ns, name)
    assert value("batchline_builds_running", labels) == 2
    metrics.build_finished(ns, name, succeeded=True, seconds=95.0)
    metrics.build_finished(ns, name, succeeded=False, seconds=12.0)
    assert value("batchline_builds_running", labels) == 0
    assert value("batchline_builds_total", {**labels, "result": "started"}) == 2
    assert value("batchline_builds_total", {**labels, "result": "succeeded"}) == 1
    assert value("batchline_builds_total", {**labels, "result": "failed"}) == 1
    ok = {**labels, "result": "succeeded"}
    assert value("batchline_build_duration_seconds_sum", ok) == 95.0
    assert value("batchline_build_duration_seconds_bucket", {**ok, "le": "60.0"}) == 0
    assert value("batchline_build_duration_seconds_bucket", {**ok, "le": "120.0"}) == 1


@pytest.mark.parametrize(
    ("current", "desired", "direction"),
    [pytest.param(1, 3, "up", id="up"), pytest.param(3, 2, "down", id="down"), pytest.param(2, 2, "hold", id="hold")],
)
def test_scale_decisions_by_direction(obj: tuple[str, str], current: int, desired: int, direction: str) -> None:
    ns, name = obj
    labels = {"namespace": ns, "llmdeployment": name}
    metrics.record_scale_decision(DecisionRecord(ns, name, current, desired, DecisionCode.LATENCY_TARGET, 2.4, 2.0))
    assert value("batchline_scale_decisions_total", {**labels, "direction": direction,
                                                     "reason": "LatencyTarget"}) == 1
    assert value("batchline_desired_replicas", labels) == desired
    assert value("batchline_autoscaler_observed_latency_seconds", labels) == 2.4
    assert value("batchline_autoscaler_target_latency_seconds", labels) == 2.0


def test_replicas_and_forget(obj: tuple[str, str]) -> None:
    ns, name = obj
    other = (ns, f"{name}-other")
    labels = {"namespace": ns, "llmdeployment": name}
    metrics.record_replicas(ns, name, desired=4, replicas=3, ready=2)
    metrics.record_replicas(*other, desired=1, replicas=1, ready=1)
    with metrics.reconciling(ns, name):
        pass
    assert (value("batchline_desired_replicas", labels), value("batchline_replicas", labels),
            value("batchline_ready_replicas", labels)) == (4, 3, 2)
    metrics.forget(ns, name)
    exported = metrics.REGISTRY.collect()
    assert not [s for m in exported for s in m.samples if s.labels.get("llmdeployment") == name]
    assert value("batchline_desired_replicas", {"namespace": ns, "llmdeployment": other[1]}) == 1


@pytest.mark.parametrize(
    ("env", "port"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"BATCHLINE_METRICS_PORT": ""}, None, id="empty"),
        pytest.param({"BATCHLINE_METRICS_PORT": "0"}, None, id="zero"),
        pytest.param({"BATCHLINE_METRICS_PORT": " 8080 "}, 8080, id="set"),
    ],
)
def test_exporter_port_from_env(env: dict[str, str], port: int | None) -> None:
    assert metrics.exporter_port(env) == port


def test_exporter_serves_the_registry(obj: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.METRICS_PORT_ENV, raising=False)
    assert metrics.start_exporter() is None
    ns, name = obj
    metrics.record_replicas(ns, name, desired=2, replicas=2, ready=1)
    server = metrics.start_exporter(port=0, addr="127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as rsp:
            text = rsp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [ready] = [s for s in families["batchline_ready_replicas"].samples if s.labels["llmdeployment"] == name]
    assert ready.value == 1
    assert "process_cpu_seconds" in families  # the process collector is registered too
    assert "batchline_reconcile" in families and families["batchline_reconcile"].type == "counter"
