"""The operator against a real control plane: kube-apiserver, etcd, controller-manager, scheduler, KWOK."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from batchline import api
from devcluster.audit import write_events
from devcluster.identities import OPERATOR_USER
from devcluster.nodes import NodeSpec
from devcluster.operator_process import OperatorProcess
from tests.integration.conftest import REPO, TINY_CHECKPOINT, LLMDs, kubectl, reconcile_passes, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

SOURCE = str(TINY_CHECKPOINT)  # built by a real build Job on the process node before pods start
RESYNC = 3  # BATCHLINE_RESYNC_SECONDS in the operator fixture


def _ready(llmds: LLMDs, name: str, replicas: int) -> dict[str, Any] | None:
    obj = llmds.get(name)
    status = obj.get("status") or {}
    ready = llmds.condition(name, "Ready")
    if (
        ready.get("status") == "True"
        and status.get("readyReplicas") == replicas
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    ):
        return obj
    return None


def _operator_writes(cluster: Any, since: float, namespace: str) -> list[str]:
    """The operator's write calls into one namespace, from the API server's audit log."""
    return [
        f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('subresource', '')}"
        f"{e['objectRef'].get('name')}"
        for e in write_events(cluster.state_dir, OPERATOR_USER, since)
        if e["objectRef"].get("namespace") == namespace
    ]


def _ready_pods(kube: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=f"{api.LABEL_LLMD}={name}").items
    return [
        p
        for p in pods
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def test_create_builds_owned_children_ready_pods_and_status(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, cluster: Any
) -> None:
    created = llmds.create("chat", {"model": {"source": SOURCE}, "autoscaling": {"minReplicas": 2}})
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    dep = wait_for(lambda: apps.read_namespaced_deployment("chat", namespace), timeout=150, what="Deployment")
    svc = core.read_namespaced_service("chat", namespace)
    pdb = client.PolicyV1Api(kube).read_namespaced_pod_disruption_budget("chat", namespace)
    for child in (dep, svc, pdb):
        [ref] = child.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller) == (
            "LLMDeployment",
            "chat",
            created["metadata"]["uid"],
            True,
        )
    assert {p.name: p.port for p in svc.spec.ports} == {"http": 8000, "grpc": 8001, "metrics": 8002}

    pods = wait_for(
        lambda: len(_ready_pods(kube, namespace, "chat")) == 2 and _ready_pods(kube, namespace, "chat"),
        timeout=150,
        what="2 ready Triton pods",
    )
    gpu_nodes = {n.metadata.name for n in core.list_node().items if n.metadata.labels.get(api.GPU_PRODUCT_LABEL)}
    assert {p.spec.node_name for p in pods} <= gpu_nodes

    obj = wait_for(lambda: _ready(llmds, "chat", 2), timeout=60, what="Ready status")
    assert obj["status"]["replicaStatus"] == "2/2"
    assert obj["status"]["endpoints"]["grpc"] == f"chat.{namespace}.svc:8001"
    table = kubectl(cluster.kubeconfig, "get", "llmd", "chat", "-n", namespace).stdout.split()
    assert table[:8] == ["NAME", "MODEL", "QUANT", "REPLICAS", "P95(MS)", "READY", "BUILD", "AGE"]
    assert table[8:12] == ["chat", SOURCE, "none", "2/2"]
    assert table[12:14] == ["True", "Ready"]  # P95 stays empty without traffic


def test_idle_passes_make_no_writes(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, cluster: Any, operator_metrics_port: int
) -> None:
    llmds.create("idle", {"model": {"source": SOURCE}})
    wait_for(lambda: _ready(llmds, "idle", 1), timeout=150, what="Ready")
    time.sleep(2)  # let the status write's own watch event come back
    since, passes = time.time(), reconcile_passes(operator_metrics_port, namespace, "idle")
    time.sleep(3 * RESYNC + 1)  # three resync ticks and the watch events in between
    assert _operator_writes(cluster, since, namespace) == []
    assert reconcile_passes(operator_metrics_port, namespace, "idle") - passes >= 2, "the resync ticks ran no pass"


def test_spec_change_rolls_out_and_delete_cascades(kube: client.ApiClient, namespace: str, llmds: LLMDs) -> None:
    llmds.create("roll", {"model": {"source": SOURCE}})
    wait_for(lambda: _ready(llmds, "roll", 1), timeout=150, what="Ready")
    apps = client.AppsV1Api(kube)
    before = apps.read_namespaced_deployment("roll", namespace).spec.template.spec.containers[0].args

    loose = {"minTop1Agreement": 0, "maxPerplexityIncreasePercent": 1000}  # a random tiny model's int8 quality
    llmds.patch_spec("roll", {"quantization": {"mode": "int8-weight-only", "qualityGate": loose}})
    after = wait_for(
        lambda: (
            (a := apps.read_namespaced_deployment("roll", namespace).spec.template.spec.containers[0].args) != before
            and a
        ),
        timeout=150,
        what="new pod template (after the int8 build)",
    )
    assert after != before
    obj = wait_for(
        lambda: _ready(llmds, "roll", 1) if llmds.condition("roll", "Progressing").get("status") == "False" else None,
        timeout=150,
        what="rollout complete at generation 2",
    )
    assert obj["metadata"]["generation"] == 2
    replica_sets = apps.list_namespaced_replica_set(namespace, label_selector=f"{api.LABEL_LLMD}=roll").items
    assert len(replica_sets) == 2  # the old one, scaled to 0, and the new one

    llmds.delete("roll")
    for read in (
        apps.read_namespaced_deployment,
        client.CoreV1Api(kube).read_namespaced_service,
        client.PolicyV1Api(kube).read_namespaced_pod_disruption_budget,
    ):

        def gone(read: Any = read) -> bool:
            try:
                read("roll", namespace)
            except client.ApiException as err:
                return err.status == 404
            return False

        wait_for(gone, timeout=60, what=f"{read.__name__} gone")


def test_gpu_shortage_leaves_pods_pending_and_says_so(kube: client.ApiClient, llmds: LLMDs) -> None:
    llmds.create(
        "big",
        {
            "model": {"source": SOURCE},
            "resources": {"gpu": {"count": 8}},
            "autoscaling": {"minReplicas": 3, "maxReplicas": 3},
        },
    )
    cond = wait_for(
        lambda: (c := llmds.condition("big", "Schedulable")).get("reason") == "InsufficientGPUs" and c,
        timeout=150,
        what="InsufficientGPUs",
    )
    assert cond["status"] == "False"
    assert "request 8 nvidia.com/gpu each, 24 in total" in cond["message"]
    assert "16 allocatable" in cond["message"]
    status = llmds.get("big")["status"]
    assert status["gpus"]["requested"] == 24 and status["gpus"]["allocatable"] == 16
    assert status["gpus"]["unschedulableReplicas"] >= 1
    assert llmds.condition("big", "Degraded")["status"] == "True"


def _event_reasons(kube: client.ApiClient, namespace: str, name: str) -> list[str]:
    events = (
        client.CoreV1Api(kube)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=LLMDeployment"
        )
        .items
    )
    return [e.reason for e in events]


def _deployment_exists(kube: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        client.AppsV1Api(kube).read_namespaced_deployment(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def test_specs_the_cluster_cannot_honour_get_reasons_and_no_hot_loop(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, cluster: Any, operator: OperatorProcess
) -> None:
    llmds.create("b200", {"model": {"source": SOURCE}, "resources": {"gpu": {"product": "NVIDIA-B200"}}})
    llmds.create("s3", {"model": {"source": "s3://bucket/model"}})
    product = wait_for(
        lambda: (c := llmds.condition("b200", "Schedulable")).get("reason") == "GPUProductNotFound" and c,
        what="GPUProductNotFound",
    )
    assert "NVIDIA-H100-80GB-HBM3 (16 GPUs)" in product["message"]
    source = wait_for(
        lambda: (c := llmds.condition("s3", "Ready")).get("reason") == "UnsupportedModelSource" and c,
        what="UnsupportedModelSource",
    )
    assert "hf://org/name" in source["message"]
    wait_for(lambda: "GPUProductNotFound" in _event_reasons(kube, namespace, "b200"), what="Event for b200")
    wait_for(lambda: "UnsupportedModelSource" in _event_reasons(kube, namespace, "s3"), what="Event for s3")
    with pytest.raises(client.ApiException) as err:
        client.AppsV1Api(kube).read_namespaced_deployment("s3", namespace)
    assert err.value.status == 404
    # b200's source is fine: its model builds and its Deployment appears (its pods stay Pending).
    # Let that settle before the quiet window, so that only a retry loop can write in it.
    wait_for(lambda: llmds.condition("b200", "ModelReady").get("status") == "True", timeout=180, what="b200 built")
    wait_for(lambda: _deployment_exists(kube, namespace, "b200"), what="b200 Deployment")

    time.sleep(2)
    since = time.time()
    time.sleep(3 * RESYNC + 1)
    assert _operator_writes(cluster, since, namespace) == [], "an unhonourable spec must not cause a retry loop"
    assert operator.running
    assert _event_reasons(kube, namespace, "s3").count("UnsupportedModelSource") == 1


INVALID = [
    ("no-source", {"model": {}}, "spec.model.source: Required value"),
    ("bad-mode", {"quantization": {"mode": "int3"}}, "spec.quantization.mode: Unsupported value"),
    ("zero-batch", {"serving": {"maxBatchSize": 0}}, "spec.serving.maxBatchSize"),
    ("min-over-max", {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.autoscaling.minReplicas"),
    ("fp8-python", {"quantization": {"mode": "fp8"}}, "fp8 is GPU-only and needs the vllm backend"),
    ("negative-gpus", {"resources": {"gpu": {"count": -1}}}, "spec.resources.gpu.count"),
    ("all-pruned", {"quantization": {"sparsity": 1}}, "spec.quantization.sparsity"),
    ("odd-quantile", {"autoscaling": {"latencyQuantile": 0.3}}, "spec.autoscaling.latencyQuantile"),
    ("bad-task", {"model": {"task": "classification"}}, "spec.model.task: Unsupported value"),
    ("embed-vllm", {"model": {"task": "embeddings"}, "serving": {"backend": "vllm"}}, "spec.serving.backend"),
    ("dyn-on-gpu", {"quantization": {"mode": "int8-dynamic"}}, "int8-dynamic runs on the CPU only"),
    ("bad-memory", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("space-source", {"model": {"source": "hf://a/b c"}}, "spec.model.source"),
    (
        "big-preferred",
        {"serving": {"maxBatchSize": 4, "dynamicBatching": {"preferredBatchSizes": [8]}}},
        "spec.serving.dynamicBatching.preferredBatchSizes",
    ),
    ("typo-field", {"serving": {"maxBatchsize": 4}}, 'unknown field "spec.serving.maxBatchsize"'),
    (
        "vllm-3-gpus",
        {"serving": {"backend": "vllm"}, "resources": {"gpu": {"count": 3}}},
        "spec.resources.gpu.count: the vllm backend splits the model over the replica's GPUs",
    ),
    (
        "vllm-2-instances",
        {"serving": {"backend": "vllm", "instancesPerReplica": 2}},
        "spec.serving.instancesPerReplica: the vllm backend runs one engine per replica",
    ),
    ("build-memory", {"build": {"resources": {"memory": "lots"}}}, "spec.build.resources.memory"),
    ("token-no-name", {"model": {"tokenSecretRef": {"key": "t"}}}, "spec.model.tokenSecretRef.name: Required value"),
    ("x" * 53, {}, "metadata.name must be at most 52 characters"),
]


@pytest.mark.parametrize("name, spec, message", INVALID, ids=[i[0][:20] for i in INVALID])
def test_invalid_specs_are_rejected_with_the_field_named(
    cluster: Any, namespace: str, name: str, spec: dict[str, Any], message: str
) -> None:
    spec = dict(spec)
    model = {"source": SOURCE, **spec.pop("model", {})}
    if name == "no-source":
        model.pop("source")
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": model, **spec},
    }
    result = kubectl(
        cluster.kubeconfig, "create", "--validate=strict", "-f", "-", input=yaml.safe_dump(body), check=False
    )
    assert result.returncode != 0, f"{name} was accepted"
    assert message in result.stderr, result.stderr


@pytest.fixture
def cpu_node(cluster: Any) -> Iterator[str]:
    """A fake node without GPUs (or their taint), where CPU-only replicas can run."""
    cluster.add_node(NodeSpec("cpu-0", gpus=0))
    yield "cpu-0"
    cluster.remove_node("cpu-0")


@pytest.mark.usefixtures("cpu_node")
def test_killed_mid_reconcile_converges_without_duplicates_or_churn(
    kube: client.ApiClient, namespace: str, llmds: LLMDs, cluster: Any, operator: OperatorProcess
) -> None:
    names = [f"m{i}" for i in range(12)]
    for name in names:
        llmds.create(name, {"model": {"source": SOURCE}, "resources": {"gpu": {"count": 0}, "cpu": "100m"}})
    apps = client.AppsV1Api(kube)
    wait_for(lambda: apps.list_namespaced_deployment(namespace).items, timeout=60, what="first Deployment")
    operator.kill()
    # No finalizer holds an LLMDeployment: deleting one needs no operator, and its children go with it.
    llmds.delete(names.pop())
    assert sorted(o["metadata"]["name"] for o in llmds.list()) == sorted(names)
    operator.start()
    operator.wait_for_log("Activity 'startup' succeeded")
    for name in names:
        wait_for(lambda name=name: _ready(llmds, name, 1), timeout=120, what=f"{name} Ready")

    def children() -> tuple[list[str], list[str], int]:
        deployments = apps.list_namespaced_deployment(namespace).items
        services = client.CoreV1Api(kube).list_namespaced_service(namespace).items
        replica_sets = apps.list_namespaced_replica_set(namespace).items
        names_of = sorted(d.metadata.name for d in deployments), sorted(s.metadata.name for s in services)
        return *names_of, len(replica_sets)

    # One Deployment, Service and ReplicaSet each ("a restart must not roll pods"), once m11's are collected.
    wait_for(lambda: children() == (sorted(names), sorted(names), len(names)), timeout=60, what="one of each child")
    time.sleep(2)
    since = time.time()
    time.sleep(2 * RESYNC + 1)
    assert _operator_writes(cluster, since, namespace) == []


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_pass_the_api_servers_validation(cluster: Any, namespace: str, example: Path) -> None:
    out = kubectl(cluster.kubeconfig, "apply", "--dry-run=server", "-n", namespace, "-f", str(example), check=False)
    assert out.returncode == 0, out.stderr


OUTAGE_SECONDS = 30


@pytest.mark.usefixtures("cpu_node")
def test_an_api_server_and_etcd_outage_is_ridden_out_without_a_restart_or_duplicates(
    kube: client.ApiClient,
    namespace: str,
    llmds: LLMDs,
    cluster: Any,
    operator: OperatorProcess,
    request: pytest.FixtureRequest,
) -> None:
    spec = {"model": {"source": SOURCE}, "resources": {"gpu": {"count": 0}, "cpu": "100m"}}
    llmds.create("before", spec)
    wait_for(lambda: _ready(llmds, "before", 1), timeout=180, what="before Ready")
    pid, log_from = operator.pid, len(operator.log_text())
    components = cluster.status()["components"]
    request.addfinalizer(cluster.up)  # whatever happens below, the next tests get their control plane back
    for name in ("kube-apiserver", "etcd"):
        os.kill(components[name]["pid"], signal.SIGKILL)  # a crash, or a control-plane node lost
    wait_for(lambda: not any(cluster.status()["components"][n]["running"] for n in ("kube-apiserver", "etcd")),
             timeout=30, what="the API server and etcd to stop")
    time.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
    cluster.up()
    outage_log = operator.log_text()[log_from:]
    # Work that arrives after the outage: a spec change and a new object.
    llmds.patch_spec("before", {"serving": {"maxBatchSize": 4}})
    llmds.create("after", spec)
    for name in ("before", "after"):
        wait_for(lambda name=name: _ready(llmds, name, 1), timeout=180, what=f"{name} Ready after the outage")
    assert operator.running and operator.pid == pid  # recovered without a restart of its own
    apps = client.AppsV1Api(kube)
    deployments = sorted(d.metadata.name for d in apps.list_namespaced_deployment(namespace).items)
    services = sorted(s.metadata.name for s in client.CoreV1Api(kube).list_namespaced_service(namespace).items)
    assert deployments == services == ["after", "before"]
    # The outage is logged, but not once per retry of every watch: a bounded number of lines.
    noisy = [line for line in outage_log.splitlines() if line.strip()]
    assert any("unreachable" in line for line in noisy), operator.log_text()[-6000:]
    assert len(noisy) <= 20, "\n".join(noisy[:60])
