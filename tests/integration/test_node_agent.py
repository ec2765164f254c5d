"""The process node on the real local control plane: pods bound to it run as local processes, so a
Job's `batchline` really runs and a Deployment's `tritonserver` really serves, on the pod's own IP,
behind the Service's EndpointSlice, scraped by a Prometheus that discovers pods as a PodMonitor would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devcluster import process
from devcluster.controlplane import LocalCluster
from devcluster.kubeapi import ApiError, KubeApi
from devcluster.prometheus import PrometheusServer

pytestmark = pytest.mark.cluster

T = TypeVar("T")
NODE = "process-node-0"
ON_PROCESS_NODE = {"nodeSelector": {"batchline.dev/node-runner": "process"}}
MODEL = "tiny"
LLMD = "tiny-llm"  # the batchline.dev/llmdeployment label of the Triton pods
TRACE = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
    f"2023-11-16 18:15:{second:02d}.000000,{100 + second},{20 + second}\n" for second in range(0, 40, 2)
)


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return value


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> KubeApi:
    return cluster.api()


@pytest.fixture(scope="module")
def namespace(api: KubeApi) -> Iterator[str]:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})

    def service_account() -> bool:
        try:
            return bool(api.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"))
        except ApiError:
            return False

    wait_until(service_account, "the default service account")
    yield name
    api.request("DELETE", f"/api/v1/namespaces/{name}")


def pods(api: KubeApi, namespace: str, selector: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"labelSelector": selector})
    items: list[dict[str, Any]] = api.get(f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
    return items


def job_condition(api: KubeApi, namespace: str, name: str) -> dict[str, Any] | None:
    job = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    wanted = ("Complete", "Failed")
    return next((c for c in job["status"].get("conditions", []) if c["type"] in wanted and c["status"] == "True"), None)


def run_job(api: KubeApi, namespace: str, name: str, container: dict[str, Any], volume: Path, backoff: int) -> None:
    template = {
        "metadata": {"labels": {"job": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container | {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "hostPath": {"path": str(volume)}}],
            **ON_PROCESS_NODE,
        },
    }
    body = {"metadata": {"name": name}, "spec": {"backoffLimit": backoff, "template": template}}
    api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def test_job_running_batchline_completes(cluster: LocalCluster, api: KubeApi, namespace: str, tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text(TRACE)
    args = ["autoscale", "simulate", "--trace", "/data/trace.csv", "--policy", "batchline"]
    container = {
        "name": "simulate",
        "image": "batchline",
        "command": ["batchline"],
        "args": [*args, "--target-latency-ms", "2000", "--json"],
        "resources": {"limits": {"cpu": "1"}},
    }
    run_job(api, namespace, "simulate", container, tmp_path, backoff=0)
    condition = wait_until(lambda: job_condition(api, namespace, "simulate"), "the Job to finish", timeout=90)
    assert condition["type"] == "Complete"
    [pod] = pods(api, namespace, "job=simulate")
    assert pod["spec"]["nodeName"] == NODE and pod["status"]["phase"] == "Succeeded"
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (0, "Completed")
    meta = pod["metadata"]
    log = cluster.layout.node_dir(NODE) / "pods" / f"{namespace}_{meta['name']}_{meta['uid']}" / "simulate" / "0.log"
    result = json.loads(log.read_text().splitlines()[-1])
    assert (result["policy"], result["requests"]) == ("batchline", 20)


@pytest.mark.triton
def test_failing_job_shows_its_termination_message_and_fails_after_its_backoff_limit(
    api: KubeApi, namespace: str, tmp_path: Path
) -> None:
    model = tmp_path / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "broken"\nbackend: "no_such_backend"\n')
    container = {
        "name": "triton",
        "image": "tritonserver",
        "command": ["tritonserver"],
        # Triton's error log goes to the termination message file.
        "args": [
            "--model-repository=/data",
            "--log-info=false",
            "--log-warning=false",
            "--log-file",
            "/dev/termination-log",
        ],
    }
    run_job(api, namespace, "broken", container, tmp_path, backoff=1)
    condition = wait_until(lambda: job_condition(api, namespace, "broken"), "the Job to fail", timeout=120)
    assert (condition["type"], condition["reason"]) == ("Failed", "BackoffLimitExceeded")
    failed = pods(api, namespace, "job=broken")
    assert len(failed) == 2 and {p["status"]["phase"] for p in failed} == {"Failed"}
    for pod in failed:
        assert terminated(pod)["exitCode"] == 1
        assert "unable to find backend library for backend 'no_such_backend'" in terminated(pod)["message"]


def test_unknown_command_fails_the_container_with_a_clear_message(api: KubeApi, namespace: str) -> None:
    container = {"name": "shell", "image": "busybox", "command": ["sh", "-c", "echo hello"]}
    pod = {
        "metadata": {"name": "shell"},
        "spec": {"restartPolicy": "Never", "containers": [container], **ON_PROCESS_NODE},
    }
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    path = f"/api/v1/namespaces/{namespace}/pods/shell"
    failed = wait_until(lambda: (p := api.get(path))["status"]["phase"] == "Failed" and p, "the pod to fail")
    state = terminated(failed)
    assert (state["exitCode"], state["reason"]) == (127, "ContainerCannotRun")
    assert "runs only `tritonserver` and `batchline` containers, not 'sh'" in state["message"]


def idle_triton(name: str, repository: Path, restart: str, **probes: Any) -> dict[str, Any]:
    """A Pod running tritonserver on an empty model repository: ready in a fraction of a second, runs until stopped."""
    container = {
        "name": "triton",
        "image": "tritonserver",
        "command": ["tritonserver"],
        "args": ["--model-repository=/models"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
        **probes,
    }
    volumes = [{"name": "models", "hostPath": {"path": str(repository)}}]
    spec = {"restartPolicy": restart, "containers": [container], "volumes": volumes, **ON_PROCESS_NODE}
    return {"metadata": {"name": name}, "spec": spec}


def container_status(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    statuses = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"].get("containerStatuses") or [{}]
    status: dict[str, Any] = statuses[0]
    return status


@pytest.mark.triton
def test_failing_liveness_probe_restarts_the_container(api: KubeApi, namespace: str, tmp_path: Path) -> None:
    liveness = {"httpGet": {"path": "/no-such-path", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2}
    pod = idle_triton("unhealthy", tmp_path, "Always", livenessProbe=liveness)
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    restarted = wait_until(
        lambda: (s := container_status(api, namespace, "unhealthy")).get("restartCount") == 1 and s,
        "a restart after the liveness probe failed",
        timeout=60,
    )
    last = restarted["lastState"]["terminated"]
    assert last["message"].startswith("Liveness probe failed: HTTP probe failed with statuscode: 404")
    assert "running" in restarted["state"] or restarted["state"]["waiting"]["reason"] == "CrashLoopBackOff"


@pytest.mark.triton
def test_restarted_agent_runs_always_pods_again_and_fails_never_pods(
    cluster: LocalCluster, api: KubeApi, namespace: str, tmp_path: Path
) -> None:
    for name, restart in (("always", "Always"), ("never", "Never")):
        api.request("POST", f"/api/v1/namespaces/{namespace}/pods", idle_triton(name, tmp_path, restart))
    for name in ("always", "never"):
        wait_until(lambda name=name: container_status(api, namespace, name).get("ready"), f"{name} to be ready")
    agent = cluster.status()["components"][NODE]["pid"]
    os.kill(agent, signal.SIGTERM)  # the agent stops its pods' processes
    wait_until(lambda: not process.alive(agent), "the agent to stop", timeout=30)
    cluster.up()

    never = wait_until(
        lambda: (p := api.get(f"/api/v1/namespaces/{namespace}/pods/never"))["status"]["phase"] == "Failed" and p,
        "the Never pod to fail",
    )
    assert (terminated(never)["exitCode"], terminated(never)["reason"]) == (255, "Unknown")
    always = wait_until(
        lambda: (s := container_status(api, namespace, "always")).get("ready") and s["restartCount"] == 1 and s,
        "the Always pod to be ready again",
    )
    assert always["lastState"]["terminated"]["reason"] == "Unknown"


# Triton: one tiny repository, one Deployment, for the rest of the module.


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build of a tiny random checkpoint (the folder that holds repository/)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from model_repo_builder import BuildOptions, QualityThresholds, build
    from model_repo_builder.testing import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))
    loose = QualityThresholds(max_perplexity_increase=1.0, min_top1_agreement=0.0, min_cosine_similarity=0.0)
    options = BuildOptions(model_name=MODEL, quality=loose, torch_threads=1, warmup=False)
    return build(checkpoint, tmp_path_factory.mktemp("builds"), options).path


@pytest.fixture(scope="module")
def deployment(api: KubeApi, namespace: str, repository: Path) -> str:
    """A Deployment of tritonserver (1 replica) and its Service; returns the Deployment's API path."""
    container = {
        "name": "triton",
        "image": "nvcr.io/nvidia/tritonserver:24.10-py3",
        "command": ["tritonserver"],
        "args": [
            "--model-repository=/models/repository",
            "--strict-readiness=true",
            "--allow-metrics=true",
            "--http-port=8000",
            "--grpc-port=8001",
            "--metrics-port=8002",
        ],
        "ports": [{"name": n, "containerPort": p} for n, p in (("http", 8000), ("grpc", 8001), ("metrics", 8002))],
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    volumes = [
        {"name": "models", "hostPath": {"path": str(repository), "type": "Directory"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    labels = {"app": "triton", "batchline.dev/llmdeployment": LLMD}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [container], "volumes": volumes, **ON_PROCESS_NODE},
    }
    spec = {"replicas": 1, "selector": {"matchLabels": {"app": "triton"}}, "template": template}
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    api.request("POST", path, {"metadata": {"name": "triton"}, "spec": spec})
    ports = [{"name": "http", "port": 8000, "targetPort": "http"}]
    service = {"metadata": {"name": "triton"}, "spec": {"selector": {"app": "triton"}, "ports": ports}}
    api.request("POST", f"/api/v1/namespaces/{namespace}/services", service)
    return f"{path}/triton"


def ready_pods(api: KubeApi, namespace: str, count: int) -> list[dict[str, Any]]:
    items = [p for p in pods(api, namespace, "app=triton") if not p["metadata"].get("deletionTimestamp")]
    ready = [
        p
        for p in items
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    return ready if len(ready) == count == len(items) else []


def generate(ip: str, prompt: str = "Hello") -> str:
    # HTTP generate: the in-flight engine's model is decoupled, which HTTP /infer cannot serve.
    body = json.dumps({"text_input": prompt, "max_tokens": 4}).encode()
    request = urllib.request.Request(f"http://{ip}:8000/v2/models/{MODEL}/generate", data=body)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return str(json.loads(response.read())["text_output"])


def health(ip: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{ip}:8000/v2/health/ready", timeout=5) as response:
        return int(response.status)


@pytest.mark.triton
@pytest.mark.torch
def test_deployment_becomes_ready_and_serves_on_its_pod_ip_behind_its_service(
    cluster: LocalCluster, api: KubeApi, namespace: str, deployment: str
) -> None:
    [pod] = wait_until(lambda: ready_pods(api, namespace, 1), "a Ready Triton pod", timeout=240, interval=1)
    ip = pod["status"]["podIP"]
    assert pod["spec"]["nodeName"] == NODE
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.status()["pod_range"])
    assert health(ip) == 200
    assert isinstance(generate(ip), str)

    def endpoints() -> list[tuple[str, bool]]:
        query = urllib.parse.urlencode({"labelSelector": "kubernetes.io/service-name=triton"})
        slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?{query}")["items"]
        found = [
            (a, e["conditions"]["ready"]) for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]
        ]
        return found

    assert wait_until(endpoints, "the EndpointSlice to list the pod", timeout=30) == [(ip, True)]
    assert api.get(deployment)["status"]["readyReplicas"] == 1


@pytest.mark.triton
@pytest.mark.torch
@pytest.mark.prometheus
def test_scaled_pods_serve_on_distinct_ips_and_prometheus_discovers_them(
    cluster: LocalCluster, api: KubeApi, namespace: str, deployment: str
) -> None:
    api.request("PATCH", deployment, {"spec": {"replicas": 2}}, "application/merge-patch+json")
    two = wait_until(lambda: ready_pods(api, namespace, 2), "two Ready Triton pods", timeout=240, interval=1)
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in two}
    assert len(set(ips.values())) == 2
    assert {generate(ip) for ip in ips.values()} == {generate(next(iter(ips.values())))}  # same model, greedy

    with PrometheusServer(pod_discovery=cluster.pod_discovery()) as prometheus:
        query = f'nv_inference_count{{namespace="{namespace}",batchline_dev_llmdeployment="{LLMD}",model="{MODEL}"}}'

        def series() -> dict[str, float]:
            url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
            found = {r["metric"]["pod"]: float(r["value"][1]) for r in result}
            return found if set(found) == set(ips) else {}

        counts = wait_until(series, "Prometheus to scrape both pods", timeout=60, interval=1)
    assert all(count >= 1 for count in counts.values())


@pytest.mark.triton
@pytest.mark.torch
def test_deleting_a_pod_stops_its_process_and_removes_it(api: KubeApi, namespace: str, deployment: str) -> None:
    pod = wait_until(lambda: ready_pods(api, namespace, 2), "two Ready Triton pods", timeout=240, interval=1)[0]
    meta, ip = pod["metadata"], pod["status"]["podIP"]
    path = f"/api/v1/namespaces/{namespace}/pods/{meta['name']}"
    api.request("DELETE", path)

    def gone() -> bool:
        try:
            return api.get(path)["metadata"]["uid"] != meta["uid"]
        except ApiError as err:
            return err.status == 404

    wait_until(gone, "the pod object to go", timeout=60)
    with pytest.raises(ConnectionRefusedError), socket.create_connection((ip, 8000), timeout=5):
        pass
