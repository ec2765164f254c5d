"""The gateway's Kubernetes discovery against the real local control plane: LLMDeployments, the
Service the operator's own builder makes, and pods that KWOK marks ready, so the EndpointSlices are
the ones kube-controller-manager writes."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from batchline import api
from batchline.resources.serving import common_labels, selector_labels, service
from tests.gateway.conftest import GatewayProcess, metric_value, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kube(cluster: Any) -> client.ApiClient:
    subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "apply", "--server-side", "-f",
                    str(REPO / "crds" / "llmdeployment.yaml")], check=True, capture_output=True, timeout=120)
    subprocess.run(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "wait", "--for=condition=Established",
                    "--timeout=60s", f"crd/{api.PLURAL}.{api.GROUP}"], check=True, capture_output=True, timeout=120)
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ValueError):
        return None


def _ready(gateway: GatewayProcess) -> bool:
    try:
        with urllib.request.urlopen(f"{gateway.url}/readyz", timeout=10) as response:
            return bool(response.status == 200)
    except urllib.error.URLError:
        return False


def _models(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    body = _get(f"{gateway.url}/v1/models") or {"data": []}
    return {model["id"]: model for model in body["data"]}


def _llmd(custom: client.CustomObjectsApi, namespace: str, name: str, phase: str) -> dict[str, Any]:
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name},
            "spec": {"model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                     "quantization": {"mode": "int8-weight-only"}, "serving": {"modelName": "llm"}}}
    created: dict[str, Any] = custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace,
                                                                     api.PLURAL, body)
    status = {"status": {"build": {"phase": phase, "report": {"compressionRatio": "3.90", "top1Agreement": "0.977",
                                                              "qualityGatePassed": True}}}}
    custom.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.PLURAL, name, status)
    return created


def _pods(name: str, replicas: int) -> dict[str, Any]:
    """Pods with the Triton pods' labels on KWOK's fake GPU nodes, which report them ready."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": selector_labels(name)},
            "template": {"metadata": {"labels": common_labels(name)}, "spec": {
                "nodeSelector": {"type": "kwok"},
                "tolerations": [{"key": api.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "triton", "image": "triton",
                                "ports": [{"name": n, "containerPort": p} for n, p in api.TRITON_PORTS.items()]}],
            }},
        },
    }


def test_the_gateway_follows_llmdeployments_and_their_ready_pods(
    kube: client.ApiClient, namespace: str, cluster: Any, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    custom, core, apps = client.CustomObjectsApi(kube), client.CoreV1Api(kube), client.AppsV1Api(kube)
    gateway = gateway_factory("--kubeconfig", str(cluster.kubeconfig), "-n", namespace, "--hold-timeout", "2")
    wait_for(lambda: _ready(gateway), 30, "the gateway to have listed the cluster")
    assert _models(gateway) == {}
    chat = _llmd(custom, namespace, "chat", "Ready")
    _llmd(custom, namespace, "first-build", "Building")  # nothing to serve yet: not listed
    core.create_namespaced_service(namespace, service(chat))  # what the operator applies
    wait_for(lambda: "chat" in _models(gateway), 30, "the model to be listed")
    listed = _models(gateway)
    assert set(listed) == {"chat"}
    assert listed["chat"]["quantization"] == "int8-weight-only"
    assert listed["chat"]["build"]["compressionRatio"] == "3.90" and listed["chat"]["ready_replicas"] == 0

    # No ready pod: the request is held, then 503.
    request = urllib.request.Request(f"{gateway.url}/v1/completions", method="POST",
                                     data=json.dumps({"model": "chat", "prompt": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
    held: dict[str, Any] = {}

    def send() -> None:
        try:
            urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            held["status"] = exc.code

    sender = threading.Thread(target=send)
    sender.start()
    # While it is held, the demand shows per LLMDeployment (what the operator reads to scale from zero).
    wait_for(lambda: metric_value(gateway.metrics(), "batchline_gateway_requests_waiting", llmdeployment="chat",
                                  llmdeployment_namespace=namespace) == 1, 10, "the held request in the metrics")
    sender.join(30)
    assert held == {"status": 503}
    assert metric_value(gateway.metrics(), "batchline_gateway_requests_waiting", llmdeployment="chat") == 0

    apps.create_namespaced_deployment(namespace, _pods("chat", 2))
    wait_for(lambda: _models(gateway).get("chat", {}).get("ready_replicas") == 2, 60, "two ready replicas")
    apps.patch_namespaced_deployment_scale(namespace=namespace, name="chat", body={"spec": {"replicas": 1}})
    wait_for(lambda: _models(gateway).get("chat", {}).get("ready_replicas") == 1, 60,
             "the removed pod to leave the table")
    custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, "chat")
    wait_for(lambda: "chat" not in _models(gateway), 30, "the deleted model to leave the table")
