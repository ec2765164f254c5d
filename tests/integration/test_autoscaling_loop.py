"""The autoscaler's whole loop with real parts: Triton on the CPU, Prometheus scraping it, the
local control plane and the operator. The Triton pods on the fake nodes add no capacity, so the
served latency stays high under load: what is checked is the operator's reaction to real metrics.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from batchline.report import metrics
from devcluster.operator_process import OperatorProcess
from devcluster.prometheus import PrometheusServer, ScrapeTarget
from model_repo_builder.triton_server import TritonServer
from tests.integration.conftest import OPERATOR_ENV, REPO, LLMDs, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

BATCH_SECONDS = 0.25
MODEL = f"""
import os
import site
import time

for path in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(path)  # the stub's interpreter ignores PYTHONPATH

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({BATCH_SECONDS})  # one batch, whatever its size: a stand-in for a forward pass
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
"""
CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 4
input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [{ kind: KIND_CPU, count: 1 }]
"""
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 4,
    "targetLatencyMs": 400,
    "scaleDownStabilizationSeconds": 10,
    "coldStartSeconds": 4,
    "demandWindowSeconds": 15,
    "metricsStalenessSeconds": 20,
}
TICK = 2


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "slow" / "1").mkdir(parents=True)
    (repo / "slow" / "1" / "model.py").write_text(MODEL)
    (repo / "slow" / "config.pbtxt").write_text(CONFIG)
    with TritonServer([repo]) as server:
        yield server


class Load:
    """Closed-loop clients, each with its own tritonclient (the HTTP client is not thread-safe)."""

    def __init__(self, url: str, clients: int) -> None:
        self.stop = threading.Event()
        self.done = 0
        self.threads = [threading.Thread(target=self._run, args=(url,), daemon=True) for _ in range(clients)]

    def _run(self, url: str) -> None:
        triton = httpclient.InferenceServerClient(url)
        x = httpclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        while not self.stop.is_set():
            triton.infer("slow", [x])
            self.done += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


# Exported only once a pass has raised (its label is the exception's class), which none does here.
ONLY_ON_ERRORS = {"batchline_reconcile_errors_total"}


def _operator_metrics_shown_to_users() -> set[str]:
    """The operator's metrics that docs/observability.md lists and that the Grafana dashboard queries."""
    doc = (REPO / "docs" / "observability.md").read_text().split("## The operator's metrics")[1].split("\n## ")[0]
    named = set(re.findall(r"`(batchline_[a-z_]+)`", doc))
    panels = json.dumps(json.loads((REPO / "charts" / "batchline" / "dashboards" / "batchline.json").read_text()))
    families = {m.name for m in metrics.REGISTRY.collect()}
    for name in set(re.findall(r"\b(batchline_[a-z_]+)", panels)):
        family = re.sub(r"_(bucket|sum|count|total)$", "", name)
        if family in families:  # the gateway's and the engine's metrics come from other exporters
            named.add(name)
    return named - ONLY_ON_ERRORS


def _exported(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = set()
    for family in text_string_to_metric_families(text):
        if family.samples:
            out |= {family.name} | {s.name for s in family.samples}
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _replicas(kube: client.ApiClient, namespace: str, name: str) -> int:
    return int(client.AppsV1Api(kube).read_namespaced_deployment(name, namespace).spec.replicas)


def test_scales_up_under_load_down_when_idle_and_holds_without_prometheus(
    cluster: Any,
    crd: Path,
    kube: client.ApiClient,
    namespace: str,
    llmds: LLMDs,
    triton: TritonServer,
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    labels = {"namespace": namespace, "batchline_dev_llmdeployment": "chat"}
    prometheus = PrometheusServer([ScrapeTarget(f"127.0.0.1:{triton.metrics_port}", labels)]).start()
    metrics_port = _free_port()
    operator = OperatorProcess(
        Path(cluster.operator_kubeconfig),
        tmp_path / "operator.log",
        env={
            **OPERATOR_ENV,
            "BATCHLINE_METRICS_PORT": str(metrics_port),
            "BATCHLINE_PROMETHEUS_URL": prometheus.url,
            "BATCHLINE_AUTOSCALE_TICK_SECONDS": str(TICK),
            "BATCHLINE_RESYNC_SECONDS": "5",
            "BATCHLINE_MODEL_CACHE_HOST_PATH": str(tmp_path),
        },
    )
    operator.start()
    try:
        operator.wait_for_log("Activity 'startup' succeeded")
        gitops = {
            "labels": {"app.kubernetes.io/instance": "chat-prod"},
            "annotations": {"argocd.argoproj.io/tracking-id": "prod:batchline.dev/LLMDeployment:default/chat"},
        }
        spec = {"model": {"source": str(tiny_checkpoint)}, "autoscaling": AUTOSCALING}
        created = llmds.create("chat", spec, **gitops)
        wait_for(lambda: _replicas(kube, namespace, "chat"), timeout=150, what="the build, then the Deployment")
        wait_for(
            lambda: llmds.condition("chat", "ScalingActive").get("status") == "True",
            timeout=60,
            what="ScalingActive=True from real metrics",
        )
        assert _replicas(kube, namespace, "chat") == 1

        with Load(triton.http_url, clients=12) as load:
            started = time.monotonic()
            wait_for(lambda: _replicas(kube, namespace, "chat") > 1, timeout=60, what="scale-up under load")
            reaction = time.monotonic() - started
            wait_for(
                lambda: (llmds.get("chat")["status"].get("autoscaling") or {}).get("observedLatencyMs", 0) > 400,
                timeout=30,
                what="observed p95 over target in status",
            )
            peak = _replicas(kube, namespace, "chat")
        idle_from = time.monotonic()
        assert load.done > 0
        assert reaction < 45, f"scale-up took {reaction:.0f}s"
        status = llmds.get("chat")["status"]["autoscaling"]
        assert status["lastScaleTime"] and status["reason"]
        assert status["desiredReplicas"] >= 2 and status["currentReplicas"] >= 1
        assert client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=ScaledUp").items, (
            "every scale decision posts an Event"
        )
        # Every operator metric the docs and the dashboard show a user is exported once the operator has scaled.
        missing = _operator_metrics_shown_to_users() - _exported(metrics_port)
        assert not missing, f"documented or charted but not exported: {sorted(missing)}"
        # GitOps: scaling changed the Deployment, never what Argo CD compares on the LLMDeployment.
        scaled = llmds.get("chat")
        assert scaled["spec"] == created["spec"]
        assert scaled["metadata"].get("labels") == created["metadata"]["labels"]
        assert scaled["metadata"].get("annotations") == created["metadata"]["annotations"]
        assert scaled["metadata"]["generation"] == 1

        wait_for(lambda: _replicas(kube, namespace, "chat") == 1, timeout=120, what="scale-down when idle")
        events = sorted(
            client.CoreV1Api(kube).list_namespaced_event(namespace).items, key=lambda e: e.metadata.creation_timestamp
        )
        trace = "\n".join(f"{e.metadata.creation_timestamp:%H:%M:%S} {e.reason}: {e.message}" for e in events)
        assert time.monotonic() - idle_from >= AUTOSCALING["scaleDownStabilizationSeconds"] - TICK, (
            f"scaled down from {peak} to 1 before the stabilization window:\n{trace}"
        )

        with Load(triton.http_url, clients=12):
            wait_for(lambda: _replicas(kube, namespace, "chat") > 1, timeout=60, what="second scale-up")
            prometheus.stop()
            held = _replicas(kube, namespace, "chat")
            cond = wait_for(
                lambda: (c := llmds.condition("chat", "ScalingActive")).get("reason") == "PrometheusUnavailable" and c,
                timeout=60,
                what="ScalingActive=False PrometheusUnavailable",
            )
        assert cond["status"] == "False" and "held at" in cond["message"]
        time.sleep(3 * TICK)
        assert _replicas(kube, namespace, "chat") == held, "replicas must hold while Prometheus is down"
        assert operator.running
    finally:
        operator.stop()
        prometheus.stop()
