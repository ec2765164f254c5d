"""Operator-driven builds on the real control plane: build Jobs run `batchline build` for real on the
local process node, the cache catalogue records them, failures back off, and a model update never
leaves the deployment without a ready, serving replica."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from batchline import api
from batchline.observed import BUILD_BLOCKED, build_pod_problem
from tests.integration.conftest import LLMDs, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

LOOSE = {"minTop1Agreement": 0, "maxPerplexityIncreasePercent": 1000}  # a random tiny model's quality


def _jobs(kube: client.ApiClient, namespace: str) -> list[client.V1Job]:
    selector = api.LABEL_BUILD_KEY
    return client.BatchV1Api(kube).list_namespaced_job(namespace, label_selector=selector).items


def _build(llmds: LLMDs, name: str) -> dict[str, Any]:
    return dict((llmds.get(name).get("status") or {}).get("build") or {})


def _catalogue(kube: client.ApiClient, namespace: str) -> dict[str, str]:
    try:
        return dict(client.CoreV1Api(kube).read_namespaced_config_map("batchline-model-cache", namespace).data or {})
    except client.ApiException as err:
        if err.status == 404:
            return {}
        raise


def _serving(llmds: LLMDs, name: str) -> dict[str, Any] | None:
    obj = llmds.get(name)
    ready = llmds.condition(name, "Ready")
    if ready.get("status") == "True" and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
        return obj
    return None


def test_a_build_job_builds_on_the_process_node_then_triton_pods_start(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, tiny_checkpoint: Path, model_cache: Path
) -> None:
    quantization = {"mode": "int8-weight-only", "qualityGate": LOOSE}
    created = llmds.create("chat", {"model": {"source": str(tiny_checkpoint)}, "quantization": quantization})
    building = wait_for(lambda: (b := _build(llmds, "chat")).get("phase") == "Building" and b, timeout=30)
    assert llmds.condition("chat", "ModelReady")["reason"] == "Building"
    obj = wait_for(lambda: _serving(llmds, "chat"), timeout=150, what="build, then Ready")
    build = obj["status"]["build"]
    assert build["phase"] == "Ready" and build["key"] == building["key"] == build["servingKey"]
    report = build["report"]
    assert report["mode"] == "int8-weight-only" and report["qualityGatePassed"] is True
    assert float(report["compressionRatio"].rstrip("x")) > 1.5 and "top1Agreement" in report
    [job] = _jobs(kube, namespace)
    assert job.status.succeeded == 1 and job.metadata.owner_references[0].uid == created["metadata"]["uid"]
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}")
    node = client.CoreV1Api(kube).read_node(pods.items[0].spec.node_name)
    assert node.metadata.labels.get("batchline.dev/node-runner") == "process"  # it really ran
    assert build["key"] in _catalogue(kube, namespace)
    assert (model_cache / namespace / build["key"] / "repository" / "model" / "config.pbtxt").is_file()
    args = client.AppsV1Api(kube).read_namespaced_deployment("chat", namespace).spec.template.spec.containers[0].args
    assert f"--model-repository=/models/{build['key']}/repository" in args
    assert llmds.condition("chat", "ModelReady")["status"] == "True"


def test_same_inputs_share_one_build_and_a_cached_build_starts_no_job(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, tiny_checkpoint: Path
) -> None:
    spec = {"model": {"source": str(tiny_checkpoint)}}
    llmds.create("a", spec)
    llmds.create("b", spec)
    for name in ("a", "b"):
        wait_for(lambda name=name: _serving(llmds, name), timeout=150, what=f"{name} Ready")
    [job] = _jobs(kube, namespace)
    assert sorted(ref.name for ref in job.metadata.owner_references) == ["a", "b"]
    llmds.create("c", spec)
    wait_for(lambda: _serving(llmds, "c"), timeout=60, what="c Ready from the cache")
    assert len(_jobs(kube, namespace)) == 1  # c found its build in the catalogue
    assert _build(llmds, "c")["report"] == _build(llmds, "a")["report"]


def test_a_failing_build_is_degraded_with_the_builders_message_and_backs_off(
    kube: client.ApiClient, namespace: str, llmds: LLMDs
) -> None:
    llmds.create("broken", {"model": {"source": "/nonexistent/checkpoint"}})
    degraded = wait_for(
        lambda: (c := llmds.condition("broken", "Degraded")).get("reason") == "BuildFailed" and c,
        timeout=90,
        what="Degraded=True BuildFailed",
    )
    assert degraded["status"] == "True" and "does not exist" in degraded["message"]  # the builder's own words
    build = _build(llmds, "broken")
    assert build["phase"] == "Failed" and build["attempt"] == 1 and build["retryAt"]
    time.sleep(8)
    assert [j.metadata.name for j in _jobs(kube, namespace)] == [build["job"]]  # no storm while backing off
    second = wait_for(
        lambda: [j for j in _jobs(kube, namespace) if j.metadata.name.endswith("-2")],
        timeout=60,
        what="second attempt after the backoff",
    )
    assert len(second) == 1
    wait_for(lambda: len(_jobs(kube, namespace)) == 1, timeout=30, what="first attempt's Job replaced")
    events = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="involvedObject.name=broken")
    assert sum(1 for e in events.items if e.reason == "BuildFailed") == 1  # one Event per transition


def _build_pods(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=api.LABEL_BUILD_KEY)
    return [kube.sanitize_for_serialization(p) for p in pods.items]  # as the API server returns them


def test_a_per_model_token_secret_and_key_reach_the_build_and_a_missing_one_names_the_secret(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, tiny_checkpoint: Path
) -> None:
    model = {"source": str(tiny_checkpoint), "tokenSecretRef": {"name": "hf-private", "key": "token"}}
    llmds.create("gated", {"model": model, "build": {"resources": {"cpu": "500m", "memory": "1536Mi"}}})
    [job] = wait_for(lambda: _jobs(kube, namespace), timeout=30, what="the build Job")
    container = job.spec.template.spec.containers[0]
    token = next(e for e in container.env if e.name == "HF_TOKEN").value_from.secret_key_ref
    assert (token.name, token.key, token.optional) == ("hf-private", "token", False)
    assert container.resources.limits["memory"] == "1536Mi" and container.resources.requests["cpu"] == "500m"

    # No such Secret: the pod cannot start (kubelet's CreateContainerConfigError), and the pure function the
    # status uses names the Secret from the pod as the API server holds it.
    def blocked() -> Any:
        return next((p for pod in _build_pods(kube, namespace) if (p := build_pod_problem(pod))), None)

    problem = wait_for(blocked, timeout=60, what="a build pod held by the missing Secret")
    assert problem.reason == BUILD_BLOCKED and problem.secret == "hf-private"
    assert 'Secret "hf-private"' in problem.message and namespace in problem.message
    assert _build(llmds, "gated").get("phase") != "Ready"

    # A Secret holding the token under that key only: the next attempt starts, and builds.
    client.CoreV1Api(kube).create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="hf-private"), string_data={"token": "hf_not_a_real_token"}),
    )
    build = wait_for(lambda: (b := _build(llmds, "gated")).get("phase") == "Ready" and b, timeout=150, what="built")
    assert build["key"] in _catalogue(kube, namespace)
    [built] = [j for j in _jobs(kube, namespace) if j.status.succeeded]
    assert not built.metadata.name.endswith("-1")  # the attempt after the Secret appeared


def _ready_endpoints(kube: client.ApiClient, namespace: str, name: str) -> list[str]:
    """Ready pods' IPs: what the Service's EndpointSlice lists (read from the pods, which also works
    where the process node's pod IPs are loopback addresses that EndpointSlices refuse)."""
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=f"{api.LABEL_LLMD}={name}")
    return [
        p.status.pod_ip
        for p in pods.items
        if p.metadata.deletion_timestamp is None
        and p.status.pod_ip
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _generate(address: str) -> bool:
    # HTTP generate: the in-flight engine's model is decoupled, which HTTP /infer cannot serve.
    body = json.dumps({"text_input": "hello", "max_tokens": 2}).encode()
    request = urllib.request.Request(f"http://{address}:8000/v2/models/model/generate", data=body)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            response.read()
    except Exception:  # a pod going away: the round tries the next endpoint
        return False
    return True


class Watch:
    """Every round: the Deployment's ready replicas, and whether any ready endpoint served a request."""

    def __init__(self, kube: client.ApiClient, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.rounds: list[tuple[int, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        apps = client.AppsV1Api(self.kube)
        while not self.stop.is_set():
            ready = apps.read_namespaced_deployment(self.name, self.namespace).status.ready_replicas or 0
            served = any(_generate(a) for a in _ready_endpoints(self.kube, self.namespace, self.name))
            self.rounds.append((ready, served))
            self.stop.wait(0.3)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


@pytest.mark.triton
def test_a_model_update_keeps_a_ready_replica_serving_throughout_then_collects_the_old_build(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, tiny_checkpoint: Path, model_cache: Path
) -> None:
    spec = {
        "model": {"source": str(tiny_checkpoint)},
        "resources": {"gpu": {"count": 0}, "cpu": "250m", "memory": "1Gi"},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
    }
    llmds.create("live", spec)
    obj = wait_for(lambda: _serving(llmds, "live"), timeout=240, what="a real Triton pod Ready")
    old_key = obj["status"]["build"]["key"]
    assert any(_generate(a) for a in _ready_endpoints(kube, namespace, "live"))

    with Watch(kube, namespace, "live") as watch:
        llmds.patch_spec("live", {"quantization": {"mode": "int8-weight-only", "qualityGate": LOOSE}})
        new = wait_for(
            lambda: (b := _build(llmds, "live")).get("servingKey") not in (None, old_key) and b,
            timeout=180,
            what="the new build served",
        )
        wait_for(
            lambda: _serving(llmds, "live") and llmds.condition("live", "Progressing").get("status") == "False",
            timeout=240,
            what="rollout complete",
        )
        time.sleep(2)
    assert len(watch.rounds) > 20
    assert min(ready for ready, _ in watch.rounds) >= 1, "a moment without a ready replica"
    failed = [i for i, (_, served) in enumerate(watch.rounds) if not served]
    assert not failed, f"rounds {failed} of {len(watch.rounds)} found no endpoint that served"
    assert new["key"] != old_key

    # The old build is used by nothing now; with the test operator's budget of 0 it is collected.
    wait_for(lambda: old_key not in _catalogue(kube, namespace), timeout=60, what="old build out of the catalogue")
    assert not (model_cache / namespace / old_key).exists()
    assert (model_cache / namespace / new["key"] / "repository").is_dir()


CANNOT_START = [
    # The operator set up for a cluster cache (a PVC) that the namespace lacks: unschedulable.
    pytest.param({}, ['persistentvolumeclaim "batchline-model-cache"', "model cache"], id="no-cache-claim"),
    # A builder image no registry serves: the pod is scheduled and its image pull backs off.
    pytest.param({"BATCHLINE_BUILDER_IMAGE": "registry.invalid/batchline-builder:0.1.0", "HOST_PATH": "1"},
                 ["cannot pull registry.invalid/batchline-builder:0.1.0", "ImagePullBackOff", "builder.image"],
                 id="missing-image"),
]


@pytest.mark.parametrize(("env", "words"), CANNOT_START)
def test_a_build_pod_that_cannot_start_is_a_problem_not_progress(
    cluster: Any,
    kube: client.ApiClient,
    namespace: str,
    llmds: LLMDs,
    tiny_checkpoint: Path,
    operator: Any,
    model_cache: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    env: dict[str, str],
    words: list[str],
) -> None:
    """After the grace period, status, Events and Argo CD say that the build cannot start, why, and what
    to do; nothing calls it progress."""
    from devcluster.operator_process import OperatorProcess
    from tests.chart.test_argocd_health import health
    from tests.integration.conftest import OPERATOR_ENV

    operator.stop()  # the suite's operator stands aside for one set up for this case
    request.addfinalizer(lambda: (operator.start(), operator.wait_for_log("Activity 'startup' succeeded")))
    settings = {**OPERATOR_ENV, "BATCHLINE_BUILD_BLOCKED_SECONDS": "5", **env}
    if settings.pop("HOST_PATH", None):
        settings["BATCHLINE_MODEL_CACHE_HOST_PATH"] = str(model_cache)
    case = OperatorProcess(Path(cluster.operator_kubeconfig), tmp_path / "operator.log", env=settings)
    case.start()
    request.addfinalizer(case.stop)
    case.wait_for_log("Activity 'startup' succeeded")
    llmds.create("stuck", {"model": {"source": str(tiny_checkpoint)}})

    def blocked() -> dict[str, Any] | None:
        cond = llmds.condition("stuck", "Degraded")
        return cond if cond.get("reason") == "BuildBlocked" else None

    degraded = wait_for(blocked, timeout=90, what="Degraded=True BuildBlocked")
    assert degraded["status"] == "True"
    for word in words:
        assert word in degraded["message"], degraded["message"]
    assert llmds.condition("stuck", "Progressing")["status"] == "False"
    assert _build(llmds, "stuck")["reason"] == "BuildBlocked"
    assert health(llmds.get("stuck"))["status"] == "Degraded"

    def events() -> list[str]:  # posted right after the status write that flips the conditions
        listed = client.CoreV1Api(kube).list_namespaced_event(namespace, field_selector="reason=BuildBlocked")
        return [e.type for e in listed.items]

    assert wait_for(events, timeout=10, what="the BuildBlocked Event") == ["Warning"]
