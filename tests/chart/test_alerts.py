"""The chart's PrometheusRule: valid rules, metrics the operator exports, and each alert evaluated by a real
Prometheus rule engine (`promtool test rules`) on sample series, including series scraped from the
operator's own registry after `metrics.record_status`."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from batchline.report import metrics
from tests.chart.chart import CHART, one, render

RULES_FILE = CHART / "alerts" / "batchline.rules.yaml"
RULES = yaml.safe_load(RULES_FILE.read_text())
ALERTS = {r["alert"]: r for g in RULES["groups"] for r in g["rules"]}
ACTIVE = 'instance="operator-1:8080"'  # the replica that reconciles
STANDBY = 'instance="operator-0:8080"'  # stood down: its counters stay flat, its gauges keep their last values
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus (scripts/setup)"
)


def _rule_render(sets: list[str]) -> dict[str, Any]:
    return one(render(sets=["monitoring.prometheusRule.enabled=true", *sets]), "PrometheusRule")


def _annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations as Prometheus expands them: they use only {{ $labels.NAME }}."""
    return {
        key: re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], text)
        for key, text in ALERTS[alert]["annotations"].items()
    }


def _expected(alert: str, labels: dict[str, str]) -> dict[str, Any]:
    full = {**labels, **ALERTS[alert]["labels"]}
    return {"exp_labels": full, "exp_annotations": _annotations(alert, full)}


def _series(name: str, labels: dict[str, str], instance: str, values: str) -> dict[str, str]:
    body = ",".join([*(f'{k}="{v}"' for k, v in labels.items()), instance])
    return {"series": f"{name}{{{body}}}", "values": values}


def _operator_series(instance: str, active: bool) -> dict[str, str]:
    """batchline_reconcile_total of a replica: rising on the active one, flat on a standby."""
    return _series("batchline_reconcile_total", {"namespace": "x", "llmdeployment": "x", "result": "success"},
                   instance, "0+20x60" if active else "500x60")


def _condition(obj: str, ctype: str, status: str, reason: str, instance: str = ACTIVE) -> dict[str, str]:
    labels = {"namespace": "llm", "llmdeployment": obj, "type": ctype, "status": status, "reason": reason}
    return _series("batchline_condition", labels, instance, "1x60")


def _promtool_test(tmp_path: Path, rules: dict[str, Any], tests: list[dict[str, Any]]) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def shipped_rules() -> dict[str, Any]:
    """The rules as the chart ships them: the rendered PrometheusRule's spec."""
    return dict(_rule_render([])["spec"])


def test_rule_is_optional_and_carries_the_monitoring_labels() -> None:
    assert not [m for m in render() if m["kind"] == "PrometheusRule"]
    rule = _rule_render(["monitoring.labels.release=kube-prometheus-stack",
                         "monitoring.prometheusRule.additionalLabels.team=ml"])
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rendered) == set(ALERTS)
    for name, alert in rendered.items():
        assert alert["labels"] == {**ALERTS[name]["labels"], "team": "ml"}
        assert alert["expr"] == ALERTS[name]["expr"]


def test_shipped_rules_are_the_rules_file(shipped_rules: dict[str, Any]) -> None:
    assert shipped_rules == RULES


def test_alerts_cover_what_a_platform_team_pages_on() -> None:
    exprs = {name: a["expr"] for name, a in ALERTS.items()}
    assert 'reason="BuildFailed"' in exprs["BatchlineBuildFailed"]
    assert 'type="Degraded"' in exprs["BatchlineDegraded"]
    assert 'type="ScalingActive", status="False"' in exprs["BatchlineAutoscalerWithoutMetrics"]
    assert "batchline_autoscaler_max_replicas" in exprs["BatchlineAtMaxReplicasOverTarget"]


def test_every_metric_in_the_alerts_is_exported() -> None:
    referenced = {m for a in ALERTS.values() for m in re.findall(r"\b(batchline_[a-z0-9_]+)\b", a["expr"])}
    exported = set()
    for family in metrics.REGISTRY.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert referenced and referenced <= exported, referenced - exported


@needs_promtool
def test_promtool_check_rules(tmp_path: Path, shipped_rules: dict[str, Any]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(shipped_rules))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout


@needs_promtool
def test_build_failed_fires_at_once_and_ignores_a_standby_replicas_stale_condition(
    tmp_path: Path, shipped_rules: dict[str, Any]
) -> None:
    series = [
        _operator_series(ACTIVE, True), _operator_series(STANDBY, False),
        _condition("broken", "ModelReady", "False", "BuildFailed"),
        _condition("fixed", "ModelReady", "True", "Built"),
        _condition("fixed", "ModelReady", "False", "BuildFailed", STANDBY),  # what the standby saw before
        _condition("building", "ModelReady", "False", "Building"),
    ]  # fmt: skip
    firing = [_expected("BatchlineBuildFailed", {"namespace": "llm", "llmdeployment": "broken"})]
    _promtool_test(tmp_path, shipped_rules, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "BatchlineBuildFailed", "exp_alerts": firing},
            {"eval_time": "30m", "alertname": "BatchlineBuildFailed", "exp_alerts": firing},
        ],
    }])  # fmt: skip


@needs_promtool
def test_degraded_fires_after_ten_minutes_and_leaves_build_failures_to_their_own_alert(
    tmp_path: Path, shipped_rules: dict[str, Any]
) -> None:
    series = [
        _operator_series(ACTIVE, True),
        _condition("no-gpus", "Degraded", "True", "InsufficientGPUs"),
        _condition("broken", "Degraded", "True", "BuildFailed"),
        _condition("fine", "Degraded", "False", "AsExpected"),
    ]
    firing = [_expected("BatchlineDegraded", {"namespace": "llm", "llmdeployment": "no-gpus",
                                              "reason": "InsufficientGPUs"})]
    _promtool_test(tmp_path, shipped_rules, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "BatchlineDegraded", "exp_alerts": []},
            {"eval_time": "15m", "alertname": "BatchlineDegraded", "exp_alerts": firing},
        ],
    }])  # fmt: skip


@needs_promtool
def test_scaling_inactive_fires_after_fifteen_minutes_unless_autoscaling_is_off(
    tmp_path: Path, shipped_rules: dict[str, Any]
) -> None:
    series = [
        _operator_series(ACTIVE, True),
        _condition("blind", "ScalingActive", "False", "NoMetrics"),
        _condition("manual", "ScalingActive", "False", "AutoscalingDisabled"),
        _condition("tracking", "ScalingActive", "True", "TrackingLatency"),
    ]
    firing = [_expected("BatchlineAutoscalerWithoutMetrics", {"namespace": "llm", "llmdeployment": "blind",
                                                              "reason": "NoMetrics"})]
    _promtool_test(tmp_path, shipped_rules, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "BatchlineAutoscalerWithoutMetrics", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "BatchlineAutoscalerWithoutMetrics", "exp_alerts": firing},
        ],
    }])  # fmt: skip


def _scaling(obj: str, desired: int, maximum: int, observed_s: float, target_s: float) -> list[dict[str, str]]:
    labels = {"namespace": "llm", "llmdeployment": obj}
    return [
        _series("batchline_desired_replicas", labels, ACTIVE, f"{desired}x60"),
        _series("batchline_autoscaler_max_replicas", labels, ACTIVE, f"{maximum}x60"),
        _series("batchline_autoscaler_observed_latency_seconds", labels, ACTIVE, f"{observed_s}x60"),
        _series("batchline_autoscaler_target_latency_seconds", labels, ACTIVE, f"{target_s}x60"),
    ]


@needs_promtool
def test_at_max_replicas_over_target_needs_both_for_fifteen_minutes(
    tmp_path: Path, shipped_rules: dict[str, Any]
) -> None:
    series = [
        _operator_series(ACTIVE, True), _operator_series(STANDBY, False),
        *_scaling("saturated", 4, 4, 2.5, 2.0),
        *_scaling("headroom", 3, 4, 2.5, 2.0),  # over target, but the autoscaler can still add replicas
        *_scaling("coping", 4, 4, 1.5, 2.0),  # at the ceiling and within target
        # The standby's last values for "coping" were over target; only the active replica counts.
        _series("batchline_autoscaler_observed_latency_seconds", {"namespace": "llm", "llmdeployment": "coping"},
                STANDBY, "9x60"),
    ]  # fmt: skip
    firing = [_expected("BatchlineAtMaxReplicasOverTarget", {"namespace": "llm", "llmdeployment": "saturated"})]
    _promtool_test(tmp_path, shipped_rules, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "BatchlineAtMaxReplicasOverTarget", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "BatchlineAtMaxReplicasOverTarget", "exp_alerts": firing},
        ],
    }])  # fmt: skip


@pytest.fixture
def obj() -> Iterator[tuple[str, str]]:
    ns, name = "alerts", f"llmd-{uuid.uuid4().hex[:8]}"
    yield ns, name
    metrics.forget(ns, name)


def _scraped(namespace: str, name: str, instance: str) -> list[dict[str, str]]:
    """The operator registry's series of one LLMDeployment, as input series that hold for an hour."""
    out = []
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if sample.labels.get("llmdeployment") != name or sample.name.endswith("_created"):
                continue
            labels = {k: v for k, v in sample.labels.items() if k != "namespace"}
            out.append(_series(sample.name, {"namespace": namespace, **labels}, instance, f"{sample.value:g}x60"))
    return out


def _status(**reasons: tuple[str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": s, "reason": r, "message": "m"} for t, (s, r) in reasons.items()]}


def test_record_status_exports_one_series_per_condition_type(obj: tuple[str, str]) -> None:
    ns, name = obj
    spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetLatencyMs": 2000}}
    metrics.record_status(ns, name, spec, _status(ModelReady=("False", "Building"), Degraded=("False", "AsExpected")))
    failed = _status(ModelReady=("False", "BuildFailed"), Degraded=("True", "BuildFailed"))
    metrics.record_status(ns, name, spec, failed)
    conditions = [s for f in metrics.REGISTRY.collect() if f.name == "batchline_condition" for s in f.samples
                  if s.labels["llmdeployment"] == name]
    assert sorted((s.labels["type"], s.labels["status"], s.labels["reason"], s.value) for s in conditions) == [
        ("Degraded", "True", "BuildFailed", 1.0), ("ModelReady", "False", "BuildFailed", 1.0)]
    labels = {"namespace": ns, "llmdeployment": name}
    assert metrics.REGISTRY.get_sample_value("batchline_autoscaler_max_replicas", labels) == 4
    assert metrics.REGISTRY.get_sample_value("batchline_autoscaler_min_replicas", labels) == 1
    metrics.forget(ns, name)
    assert not [s for f in metrics.REGISTRY.collect() for s in f.samples if s.labels.get("llmdeployment") == name]


@needs_promtool
def test_alerts_fire_on_what_the_operator_exports(
    tmp_path: Path, shipped_rules: dict[str, Any], obj: tuple[str, str]
) -> None:
    """End to end from the exporter: record_status, the replica and decision gauges, scraped as text, evaluated."""
    from batchline.autoscaler.actuator import DecisionCode, DecisionRecord

    ns, name = obj
    spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetLatencyMs": 2000}}
    with metrics.reconciling(ns, name):
        metrics.record_status(ns, name, spec, _status(
            ModelReady=("False", "BuildFailed"), ScalingActive=("True", "TrackingLatency")))
    metrics.record_replicas(ns, name, desired=3, replicas=3, ready=3)
    metrics.record_scale_decision(DecisionRecord(
        namespace=ns, name=name, current=3, desired=3, code=next(iter(DecisionCode)),
        observed_latency_s=2.6, target_latency_s=2.0))
    series = [_operator_series(ACTIVE, True), *_scraped("llm", name, ACTIVE)]
    labels = {"namespace": "llm", "llmdeployment": name}
    _promtool_test(tmp_path, shipped_rules, [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "BatchlineBuildFailed",
             "exp_alerts": [_expected("BatchlineBuildFailed", labels)]},
            {"eval_time": "20m", "alertname": "BatchlineAtMaxReplicasOverTarget",
             "exp_alerts": [_expected("BatchlineAtMaxReplicasOverTarget", labels)]},
            {"eval_time": "20m", "alertname": "BatchlineAutoscalerWithoutMetrics", "exp_alerts": []},
        ],
    }])  # fmt: skip
