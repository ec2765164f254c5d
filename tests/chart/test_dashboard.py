"""The Grafana dashboard: provisioning-safe JSON, valid PromQL, and only metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchline.report import metrics
from batchline.resources.serving import triton_args
from tests.chart.chart import CHART
from tests.crd_schema import defaulted

DASHBOARD = json.loads((CHART / "dashboards" / "batchline.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]
# Triton's metrics the dashboard reads; the summaries need --metrics-config=summary_latencies=true.
TRITON_METRICS = {
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
}
# The in-flight engine's custom metrics, which the Triton model itself exports on the metrics port
# (model_repo_builder/templates/model_inflight.py), as Prometheus names them.
ENGINE_FAMILIES = {
    "batchline_engine_time_to_first_token_seconds": "histogram",
    "batchline_engine_time_per_output_token_seconds": "histogram",
    "batchline_engine_request_duration_seconds": "histogram",
    "batchline_engine_requests_running": "gauge",
    "batchline_engine_requests_waiting": "gauge",
    "batchline_engine_kv_cache_blocks_used": "gauge",
    "batchline_engine_kv_cache_blocks_total": "gauge",
    "batchline_engine_prompt_tokens_total": "counter",
    "batchline_engine_generation_tokens_total": "counter",
}
ENGINE_METRICS = {
    f"{name}_{suffix}"
    for name, kind in ENGINE_FAMILIES.items()
    if kind == "histogram"
    for suffix in ("bucket", "count", "sum")
} | {name for name, kind in ENGINE_FAMILIES.items() if kind != "histogram"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$llmdeployment": ".*"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:batchline|nv)_[a-z0-9_]+)\s*[{[]", expr))  # a metric, not a label: a selector follows


def _exported_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        names |= {sample.name for sample in family.samples}
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
    return names


def test_provisioning_safe_datasource() -> None:
    """Sidecar provisioning does not resolve __inputs/${DS_...}; a datasource variable works everywhere."""
    assert "__inputs" not in DASHBOARD
    [ds] = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "datasource"]
    assert (ds["name"], ds["query"]) == ("datasource", "prometheus")
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_layout_ids_and_uid() -> None:
    assert DASHBOARD["uid"] == "batchline-overview"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24


def test_panels_cover_what_operators_watch() -> None:
    titles = " | ".join(p["title"] for p in PANELS).lower()
    for topic in ("p95", "queue", "throughput", "replicas", "autoscaler decisions"):
        assert topic in titles
    assert any('nv_inference_request_summary_us{quantile="0.95"' in e for e in EXPRS)


def test_every_metric_exists() -> None:
    referenced = set().union(*map(_metric_names, EXPRS))
    operator_metrics = {m for m in referenced if m.startswith("batchline_") and not m.startswith("batchline_engine_")}
    assert operator_metrics and operator_metrics <= _exported_names()
    engine_metrics = {m for m in referenced if m.startswith("batchline_engine_")}
    assert engine_metrics and engine_metrics <= ENGINE_METRICS
    assert {m for m in referenced if m.startswith("nv_")} <= TRITON_METRICS
    spec = defaulted({"model": {"source": "hf://org/model"}})
    assert "--metrics-config=summary_latencies=true" in triton_args(spec)


def test_engine_metrics_are_the_ones_the_inflight_model_exports() -> None:
    """The list above against the template's MetricFamily declarations (name and kind), so neither drifts;
    tests/builder/test_inflight_serving.py scrapes them from a real tritonserver."""
    template = (CHART.parents[1] / "model_repo_builder" / "templates" / "model_inflight.py").read_text()
    declared = dict(re.findall(r'"(batchline_engine_\w+)",\s*"[^"]*",\s*(histogram|gauge|counter)', template))
    assert declared == ENGINE_FAMILIES
    titles = " | ".join(p["title"] for p in PANELS).lower()
    for topic in ("time to first token", "time per output token", "running and waiting", "kv cache"):
        assert topic in titles


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with Debian's prometheus (scripts/setup)")
def test_promql_parses(tmp_path: Path) -> None:
    rules: list[dict[str, Any]] = []
    for i, expr in enumerate(EXPRS + [v["definition"] for v in DASHBOARD["templating"]["list"] if "definition" in v]):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        if expr.startswith("label_values("):  # a Grafana function: check the selector inside it
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
