"""The autoscaler's whole loop with real parts: the in-flight engine in Triton on the CPU, streaming
to real clients, Prometheus scraping its metrics, the local control plane and the operator, on a
time-to-first-token target. The Triton pods on the fake nodes add no capacity, so the served TTFT
stays high under load: what is checked is the operator's reaction to real metrics.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from kubernetes import client

from batchline.autoscaler.policy import TOKENS
from batchline.report import metrics
from batchline_tools.triton_inputs import triton_inputs
from devcluster.operator_process import OperatorProcess
from devcluster.prometheus import PrometheusServer, ScrapeTarget
from model_repo_builder import BatchingOptions, BuildOptions, QualityThresholds, TritonServer, build
from tests.integration.conftest import (
    OPERATOR_ENV,
    REPO,
    LLMDs,
    free_port,
    operator_metrics,
    reconcile_passes,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.prometheus, pytest.mark.torch]

MODEL = "llm"
# Two sequences run at once and each answer is up to 96 tokens: with 12 clients, ten wait, and
# their first token comes only after whole answers before them. Alone, a short prompt on the tiny
# model reads in a few milliseconds.
MAX_RUNNING = 2
MAX_TOKENS = 96
CLIENTS = 12
TTFT_TARGET_MS = 300
AUTOSCALING = {
    "minReplicas": 1,
    "maxReplicas": 8,
    "targetLatencyMs": 0,
    "targetTimeToFirstTokenMs": TTFT_TARGET_MS,
    "scaleDownStabilizationSeconds": 10,
    "coldStartSeconds": 4,
    "demandWindowSeconds": 15,
    "metricsStalenessSeconds": 20,
}
TICK = 2


@pytest.fixture(scope="module")
def triton(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The tiny model built for the in-flight engine (the default), served by one Triton."""
    pytest.importorskip("torch")
    options = BuildOptions(
        model_name=MODEL,
        # A random model has meaningless quality figures.
        quality=QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0),
        torch_threads=1,
        batching=BatchingOptions(max_batch_size=MAX_RUNNING),
        kv_cache_tokens=1024,
        max_batch_tokens=256,
    )
    built = build(tiny_checkpoint, tmp_path_factory.mktemp("builds"), options)
    with TritonServer([built.repository]) as server:
        yield server


class Load:
    """Closed-loop clients streaming over gRPC, each with its own client (one stream per client)."""

    def __init__(self, url: str, clients: int) -> None:
        self.stop = threading.Event()
        self.done = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(url, i), daemon=True) for i in range(clients)]

    def _run(self, url: str, index: int) -> None:
        triton = grpcclient.InferenceServerClient(url)
        responses: queue.Queue[Any] = queue.Queue()
        triton.start_stream(callback=lambda result, error: responses.put(error or result))
        try:
            while not self.stop.is_set():
                prompt = f"Request {index}-{self.done}: tell a long story"
                triton.async_stream_infer(MODEL, triton_inputs(grpcclient, prompt, max_tokens=MAX_TOKENS, stream=True))
                while True:
                    item = responses.get(timeout=120)
                    if isinstance(item, Exception):
                        self.errors.append(str(item))
                        return
                    if item.as_numpy("finish_reason") is not None:
                        break
                self.done += 1
        finally:
            triton.stop_stream(cancel_requests=True)
            triton.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


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
    out = set()
    for family in operator_metrics(port):
        if family.samples:
            out |= {family.name} | {s.name for s in family.samples}
    return out


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
    metrics_port = free_port()
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

        def reason() -> str:
            return str((llmds.get("chat")["status"].get("autoscaling") or {}).get("reason", ""))

        def explained(check: Callable[[], Any], timeout: float, what: str) -> None:
            try:
                wait_for(check, timeout=timeout, what=what)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the policy says: {reason()}") from None

        # Light load first (as many clients as the engine runs at once, so nothing waits): the policy
        # learns, in output-token equivalents, what one replica serves within the TTFT target.
        with Load(triton.grpc_url, clients=MAX_RUNNING) as light:
            explained(lambda: TOKENS in reason(), timeout=150, what=f"capacity learnt in {TOKENS}")
        assert light.done > 0 and not light.errors, light.errors[:3]
        before = _replicas(kube, namespace, "chat")

        with Load(triton.grpc_url, clients=CLIENTS) as load:
            # The capacity learnt at light load is only cut once a TTFT miss is seen on a pool of steady
            # size for a rate window (60 s); with the queue's backlog it scales up then.
            # (Unless the light phase already reached the maximum: its first estimate is a lower bound.)
            floor = min(before, AUTOSCALING["maxReplicas"] - 1)
            explained(lambda: _replicas(kube, namespace, "chat") > floor, timeout=150, what="scale-up under load")
            # The pass writes status after it has scaled the Deployment.
            status = wait_for(
                lambda: (
                    (a := llmds.get("chat")["status"].get("autoscaling") or {}).get("desiredReplicas", 0) > floor
                    and a.get("observedTimeToFirstTokenMs", 0) > TTFT_TARGET_MS
                    and a
                ),
                timeout=30,
                what="the scale-up and the observed TTFT p95 over target in status",
            )
            assert status["lastScaleTime"] and status["reason"]
            scaled_up = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=ScaledUp")
            assert scaled_up.items, "every scale decision posts an Event"
            # Sized from token demand and the learnt capacity, not from the queue alone.
            assert any(TOKENS in e.message for e in scaled_up.items), [e.message for e in scaled_up.items]

            # Prometheus goes away under load: the count holds, and the condition says why.
            prometheus.stop()
            cond = wait_for(
                lambda: (c := llmds.condition("chat", "ScalingActive")).get("reason") == "PrometheusUnavailable" and c,
                timeout=60,
                what="ScalingActive=False PrometheusUnavailable",
            )
            assert cond["status"] == "False" and "held at" in cond["message"]
            held = _replicas(kube, namespace, "chat")
            # A hold is the absence of a change: watched over three more passes, each of which decided it.
            passes = reconcile_passes(metrics_port, namespace, "chat")
            wait_for(
                lambda: reconcile_passes(metrics_port, namespace, "chat") >= passes + 3, timeout=60, what="3 passes"
            )
            assert _replicas(kube, namespace, "chat") == held > 1, "replicas must hold while Prometheus is down"
        idle_from = time.monotonic()
        assert load.done > 0 and not load.errors, load.errors[:3]
        assert operator.running
        # Every operator metric the docs and the dashboard show a user is exported once the operator has scaled.
        missing = _operator_metrics_shown_to_users() - _exported(metrics_port)
        assert not missing, f"documented or charted but not exported: {sorted(missing)}"
        # GitOps: scaling changed the Deployment, never what Argo CD compares on the LLMDeployment.
        scaled = llmds.get("chat")
        assert scaled["spec"] == created["spec"]
        assert scaled["metadata"].get("labels") == created["metadata"]["labels"]
        assert scaled["metadata"].get("annotations") == created["metadata"]["annotations"]
        assert scaled["metadata"]["generation"] == 1

        # Prometheus back (same address, an empty store), no traffic: down to the minimum after the window.
        prometheus.start()
        wait_for(lambda: _replicas(kube, namespace, "chat") == 1, timeout=120, what="scale-down when idle")
        events = sorted(
            client.CoreV1Api(kube).list_namespaced_event(namespace).items, key=lambda e: e.metadata.creation_timestamp
        )
        trace = "\n".join(f"{e.metadata.creation_timestamp:%H:%M:%S} {e.reason}: {e.message}" for e in events)
        assert time.monotonic() - idle_from >= AUTOSCALING["scaleDownStabilizationSeconds"] - TICK, (
            f"scaled down from {held} to 1 before the stabilization window:\n{trace}"
        )
        assert llmds.condition("chat", "ScalingActive").get("status") == "True"
    finally:
        operator.stop()
        prometheus.stop()
