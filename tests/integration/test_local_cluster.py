"""The local control plane behind `batchline local` and the `cluster` fixture, against the real API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config

from devcluster import binaries, process
from devcluster.audit import count_writes, write_events
from devcluster.controlplane import LocalCluster
from devcluster.identities import OPERATOR_USER
from devcluster.kubeapi import ApiError, KubeApi
from devcluster.nodes import GPU_RESOURCE, GPU_TAINT, NodeSpec, is_ready

pytestmark = pytest.mark.cluster

T = TypeVar("T")
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)
    return value


def get_or_none(api: KubeApi, path: str) -> Any:
    try:
        return api.get(path)
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def batchline_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchline.cli", "local", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    api = cluster.api()
    name = f"test-{uuid.uuid4().hex[:8]}"
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    # The ServiceAccount admission plugin rejects pods until the controller made this.
    wait_until(
        lambda: get_or_none(api, f"/api/v1/namespaces/{name}/serviceaccounts/default"), "the default service account"
    )
    yield name
    api.request("DELETE", f"/api/v1/namespaces/{name}")


def pod_template(name: str, gpus: int) -> dict[str, Any]:
    container = {
        "name": "server",
        "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
        "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
        # Nothing listens: KWOK fakes pod status, so probes must not hold back readiness.
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8000}},
    }
    return {"metadata": {"labels": {"app": name}}, "spec": {"tolerations": [GPU_TOLERATION], "containers": [container]}}


def test_gpu_nodes_have_gpus_product_label_and_taint(cluster: LocalCluster) -> None:
    items = cluster.api().get("/api/v1/nodes?labelSelector=batchline.dev/local-node%3Dpool")["items"]
    nodes = {n["metadata"]["name"]: n for n in items}
    assert set(nodes) == {"gpu-node-0", "gpu-node-1"}
    for node in nodes.values():
        assert is_ready(node)
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
        assert GPU_TAINT in node["spec"]["taints"]


def test_gpu_deployment_gets_ready_pods_and_is_garbage_collected(cluster: LocalCluster, namespace: str) -> None:
    api = cluster.api()
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    api.request(
        "POST",
        deployments,
        {
            "metadata": {"name": "triton"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "triton"}},
                "template": pod_template("triton", 2),
            },
        },
    )
    wait_until(lambda: api.get(f"{deployments}/triton")["status"].get("readyReplicas") == 3, "3 ready replicas")
    pods = api.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dtriton")["items"]
    assert {p["status"]["phase"] for p in pods} == {"Running"}
    assert {p["spec"]["nodeName"] for p in pods} <= {"gpu-node-0", "gpu-node-1"}

    api.request("DELETE", f"{deployments}/triton")
    wait_until(
        lambda: not api.get(f"/api/v1/namespaces/{namespace}/pods")["items"],
        "the garbage collector to delete the ReplicaSet's pods",
    )


def test_pod_wanting_more_gpus_than_any_node_stays_unschedulable(cluster: LocalCluster, namespace: str) -> None:
    api = cluster.api()
    pod = pod_template("too-big", 9) | {"apiVersion": "v1", "kind": "Pod"}
    pod["metadata"]["name"] = "too-big"
    api.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)

    def scheduled_condition() -> Any:
        conditions = api.get(f"/api/v1/namespaces/{namespace}/pods/too-big")["status"].get("conditions", [])
        return next((c for c in conditions if c["type"] == "PodScheduled"), None)

    condition = wait_until(scheduled_condition, "the scheduler to give up on the pod", timeout=30)
    assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    assert "nvidia.com/gpu" in condition["message"]


def test_job_pods_complete(cluster: LocalCluster, namespace: str) -> None:
    api = cluster.api()
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    template = pod_template("job", 1)
    template["spec"]["restartPolicy"] = "Never"
    api.request("POST", jobs, {"metadata": {"name": "once"}, "spec": {"template": template}})
    wait_until(lambda: api.get(f"{jobs}/once")["status"].get("succeeded") == 1, "the job to succeed")


def test_process_node_is_ready_untainted_and_renews_its_lease(cluster: LocalCluster) -> None:
    api = cluster.api()
    node = api.get("/api/v1/nodes/process-node-0")
    assert is_ready(node) and not node["spec"].get("taints")
    labels = node["metadata"]["labels"]
    assert labels["batchline.dev/node-runner"] == labels["batchline.dev/local-node"] == "process"
    assert labels["kubernetes.io/hostname"] == "process-node-0" and labels["kubernetes.io/os"] == "linux"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert GPU_RESOURCE not in node["status"]["allocatable"] and node["status"]["allocatable"]["pods"] == "32"
    lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/process-node-0"
    renewed = api.get(lease)["spec"]["renewTime"]
    wait_until(lambda: api.get(lease)["spec"]["renewTime"] != renewed, "a lease renewal", timeout=15)


def test_audit_log_attributes_writes_to_the_operator(cluster: LocalCluster, namespace: str) -> None:
    operator = cluster.api("operator")
    since = time.time()
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"
    operator.request("POST", configmaps, {"metadata": {"name": "probe"}, "data": {"a": "1"}})
    operator.get(f"{configmaps}/probe")
    operator.get(configmaps)


    def here(resource: str | None = None) -> list[dict[str, Any]]:
        # An operator from another test may still write elsewhere as the same user: count this namespace.
        events = write_events(cluster.state_dir, OPERATOR_USER, since=since, resource=resource)
        return [e for e in events if e["objectRef"].get("namespace") == namespace]

    wait_until(lambda: here(), "the audit event", timeout=5)
    time.sleep(0.5)  # give a wrongly logged read the chance to show up
    assert len(here()) == 1
    assert len(here("configmaps")) == 1
    assert len(here("pods")) == 0
    assert count_writes(cluster.state_dir, OPERATOR_USER, since=time.time()) == 0
    [event] = here()
    assert (event["verb"], event["objectRef"]["name"]) == ("create", "probe")


def test_kubeconfigs_work_with_the_kubernetes_client(cluster: LocalCluster) -> None:
    for kubeconfig in (cluster.kubeconfig, cluster.operator_kubeconfig):
        api_client = config.new_client_from_config(str(kubeconfig))
        names = {n.metadata.name for n in client.CoreV1Api(api_client).list_node().items if n.metadata}
        assert {"gpu-node-0", "gpu-node-1"} <= names


def test_add_and_remove_a_cpu_node(cluster: LocalCluster) -> None:
    api = cluster.api()
    cluster.add_node(NodeSpec("cpu-node-test", gpus=0, labels={"pool": "cpu"}))
    try:
        node = api.get("/api/v1/nodes/cpu-node-test")
        assert GPU_RESOURCE not in node["status"]["allocatable"]
        assert node["metadata"]["labels"]["pool"] == "cpu"
        assert GPU_TAINT not in node["spec"].get("taints", [])
    finally:
        cluster.remove_node("cpu-node-test")
    wait_until(lambda: get_or_none(api, "/api/v1/nodes/cpu-node-test") is None, "the node to go", timeout=10)


def test_local_up_again_is_fast_and_keeps_the_processes(cluster: LocalCluster) -> None:
    pids = {name: c["pid"] for name, c in cluster.status()["components"].items()}
    started = time.monotonic()
    result = batchline_local("up", "--name", cluster.name, "--state-dir", str(cluster.state_dir), "--no-operator",
                             "--no-gateway")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    assert result.stdout.strip().splitlines() == [f"KUBECONFIG={cluster.kubeconfig}"]  # no OPENAI_BASE_URL
    assert {name: c["pid"] for name, c in cluster.status()["components"].items()} == pids


def test_status_reports_components_nodes_and_gpus(cluster: LocalCluster) -> None:
    status = cluster.status()
    assert status["up"] and cluster.is_up()
    assert set(status["components"]) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "process-node-0",
    }
    assert all(c["healthy"] for c in status["components"].values())
    assert status["gpu_allocatable"] >= 16
    runners = {n["name"]: n["runner"] for n in status["nodes"]}
    assert runners["gpu-node-0"] == runners["gpu-node-1"] == "kwok" and runners["process-node-0"] == "process"
    result = batchline_local("status", "--name", cluster.name, "--state-dir", str(cluster.state_dir))
    assert result.returncode == 0, result.stderr
    assert "gpu-node-1" in result.stdout and "nvidia.com/gpu allocatable: 16" in result.stdout
    assert "pods run as local processes" in result.stdout


def test_up_with_options_then_down_removes_everything(tmp_path: Path) -> None:
    throwaway = LocalCluster("pytest-down", tmp_path / "cluster")
    try:
        throwaway.up(nodes=1, gpus_per_node=4, gpu_product="NVIDIA-A100-SXM4-40GB", process_nodes=2)
        # As a library (the test fixtures) it starts neither the operator nor the gateway unless asked.
        assert not {"operator", "gateway"} & set(throwaway.status()["components"])
        [gpu_node] = [n for n in throwaway.status()["nodes"] if n["gpus"]]
        assert (gpu_node["gpus"], gpu_node["gpu_product"]) == (4, "NVIDIA-A100-SXM4-40GB")
        assert sorted(n["name"] for n in throwaway.status()["nodes"] if n["runner"] == "process") == [
            "process-node-0",
            "process-node-1",
        ]
        retired = throwaway.status()["components"]["process-node-1"]["pid"]
        throwaway.up(nodes=1, gpus_per_node=4, gpu_product="NVIDIA-A100-SXM4-40GB", process_nodes=1)
        assert {n["name"] for n in throwaway.status()["nodes"]} == {"gpu-node-0", "process-node-0"}
        assert not process.alive(retired)
        pids = [c["pid"] for c in throwaway.status()["components"].values()]
    finally:
        result = batchline_local("down", "--name", "pytest-down", "--state-dir", str(throwaway.state_dir))
    assert result.returncode == 0, result.stderr
    assert not throwaway.state_dir.exists()
    assert not any(process.alive(pid) for pid in pids)
    assert not throwaway.status()["up"]


# Before liveness went by start time instead of the command line, 5 of these 12 starts failed under
# first_run_conditions on a 2-core machine, and `local down` twice left a process running; ~10 s each.
START_STOP_CYCLES = 12
COLD_COPIES = ("etcd", "kube-apiserver")


@pytest.fixture
def first_run_conditions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """What a first run after a fresh clone meets: binaries on disk but not in the page cache, so their
    execve waits on the disk (copies of etcd and kube-apiserver, dropped from the cache by the returned
    function). And `sh` as bash where there is one (as on Fedora or Arch): bash lets process.start()
    return before the command's execve, dash while it is in it; either way the first health check can
    meet a process in execve, whose /proc/PID/cmdline reads as empty."""
    bins = tmp_path / "cache" / f"k8s-{binaries.KUBE_VERSION}" / "bin"
    bins.mkdir(parents=True)
    for name in binaries.ALL_BINARIES:
        if name in COLD_COPIES:
            shutil.copy2(binaries.bin_dir() / name, bins / name)
        else:
            (bins / name).symlink_to(binaries.bin_dir() / name)
    (bins.parent / "kwok-stages.yaml").symlink_to(binaries.kwok_stages_file())
    monkeypatch.setenv("BATCHLINE_CACHE", str(tmp_path / "cache"))
    if bash := shutil.which("bash"):
        shell = tmp_path / "shell"
        shell.mkdir()
        (shell / "sh").symlink_to(bash)
        monkeypatch.setenv("PATH", f"{shell}{os.pathsep}{os.environ['PATH']}")

    def drop_from_page_cache() -> None:
        for name in COLD_COPIES:
            fd = os.open(bins / name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    return drop_from_page_cache


def processes_naming(path: Path) -> list[int]:
    """Live processes whose command line names `path` (every process of a local cluster does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process.alive(int(entry.name)):
            try:
                if os.fsencode(f"{path}/") in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def left_running(path: Path, timeout: float) -> list[int]:
    """The processes naming `path` that are still there after `timeout` (none: at once)."""
    deadline = time.monotonic() + timeout
    while (left := processes_naming(path)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def test_the_control_plane_starts_and_stops_many_times_in_a_row(
    tmp_path: Path, first_run_conditions: Callable[[], None]
) -> None:
    throwaway = LocalCluster("pytest-cycles", tmp_path / "cluster")
    failures: list[str] = []
    try:
        for i in range(1, START_STOP_CYCLES + 1):
            first_run_conditions()
            try:
                throwaway.up(nodes=1, process_nodes=1, timeout=120)
                assert throwaway.is_up()
            except (RuntimeError, TimeoutError) as err:
                failures.append(f"start {i}: {err}")
            throwaway.down()
            # Nothing left behind, not even a process that was in execve while `down` looked.
            if left := left_running(throwaway.state_dir, timeout=20):
                failures.append(f"start {i}: `local down` left {len(left)} of its processes running")
                process.stop_all(left, timeout=5)
    finally:
        throwaway.down()
        process.stop_all(processes_naming(throwaway.state_dir), timeout=5)
    assert not failures, f"{len(failures)} failures in {START_STOP_CYCLES} starts:\n" + "\n".join(failures)
