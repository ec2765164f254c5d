"""Scale from zero, end to end with real parts: the local control plane, the operator, a build Job and a
Triton pod on the process node, the Batchline gateway discovering them, and Prometheus scraping the gateway.

A request for a model at zero replicas is held by the gateway; the operator reads the held demand from
Prometheus (no write to the LLMDeployment), starts one replica, and the held request is answered.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from kubernetes import client

from devcluster.operator_process import OperatorProcess
from devcluster.prometheus import PrometheusServer, ScrapeTarget
from tests.gateway.conftest import metric_value, start_gateway
from tests.integration.conftest import OPERATOR_ENV, LLMDs, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus]

TICK = 2
HOLD_SECONDS = 240  # the gateway's hold timeout: room for a Triton pod to start on a loaded 2-core machine


def _replicas(kube: client.ApiClient, namespace: str, name: str) -> int | None:
    try:
        return int(client.AppsV1Api(kube).read_namespaced_deployment(name, namespace).spec.replicas)
    except client.ApiException:
        return None


def test_a_request_for_a_model_at_zero_is_held_until_the_operator_starts_a_replica(
    cluster: Any,
    kube: client.ApiClient,
    namespace: str,
    llmds: LLMDs,
    tiny_checkpoint: Path,
    operator: OperatorProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # This test's operator reads Prometheus: the suite's own (which does not) stands aside meanwhile.
    operator.stop()
    request.addfinalizer(lambda: (operator.start(), operator.wait_for_log("Activity 'startup' succeeded")))
    gateway = start_gateway(
        tmp_path / "gateway.log", "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
        "--hold-timeout", str(HOLD_SECONDS),
    )  # fmt: skip
    request.addfinalizer(gateway.process.terminate)
    host, port = gateway.url.removeprefix("http://").split(":")
    prometheus = PrometheusServer([ScrapeTarget(f"{host}:{port}", {"job": "batchline-gateway"})]).start()
    request.addfinalizer(prometheus.stop)
    ours = OperatorProcess(
        Path(cluster.operator_kubeconfig),
        tmp_path / "operator.log",
        env={
            **OPERATOR_ENV,
            "BATCHLINE_PROMETHEUS_URL": prometheus.url,
            "BATCHLINE_AUTOSCALE_TICK_SECONDS": str(TICK),
            "BATCHLINE_MODEL_CACHE_HOST_PATH": str(tmp_path / "cache"),
        },
    )
    ours.start()
    request.addfinalizer(ours.stop)
    ours.wait_for_log("Activity 'startup' succeeded")

    spec = {
        "model": {"source": str(tiny_checkpoint)},
        "resources": {"gpu": {"count": 0}, "cpu": "1", "memory": "2Gi"},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "scaleDownStabilizationSeconds": 30},
    }
    created = llmds.create("chat", spec)
    wait_for(lambda: llmds.condition("chat", "Ready").get("reason") == "ScaledToZero", timeout=240,
             what="built, and at zero replicas")
    assert _replicas(kube, namespace, "chat") == 0
    ai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=HOLD_SECONDS + 30)
    wait_for(lambda: "chat" in {m.id for m in ai.models.list().data}, timeout=30, what="the model in /v1/models")

    answer: dict[str, Any] = {}

    def ask() -> None:
        started = time.monotonic()
        try:
            answer["completion"] = ai.completions.create(model="chat", prompt="Hello", max_tokens=4)
        except openai.OpenAIError as err:
            answer["error"] = err
        answer["seconds"] = time.monotonic() - started

    client_thread = threading.Thread(target=ask, daemon=True)
    client_thread.start()
    held = wait_for(
        lambda: metric_value(gateway.metrics(), "batchline_gateway_requests_waiting", llmdeployment="chat") >= 1,
        timeout=10, what="the request held at the gateway",
    )  # fmt: skip
    assert held
    wait_for(lambda: _replicas(kube, namespace, "chat") == 1, timeout=30, what="the operator to start a replica")
    client_thread.join(timeout=HOLD_SECONDS + 60)
    assert "error" not in answer, answer.get("error")
    completion = answer["completion"]
    assert completion.choices[0].finish_reason in ("length", "stop") and completion.usage.completion_tokens >= 1
    events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=ScaledUp").items
    assert any("held by the gateway" in e.message for e in events), [e.message for e in events]
    # GitOps: the demand never touched the LLMDeployment.
    after = llmds.get("chat")
    assert after["spec"] == created["spec"] and after["metadata"]["generation"] == 1
    assert after["metadata"].get("annotations") == created["metadata"].get("annotations")
