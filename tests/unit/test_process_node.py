"""The process node's pure parts: how a container becomes a process, and the status a kubelet would report."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.container_launch import PodContext, PodSpecError, launch
from devcluster.node_agent import PodAddresses
from devcluster.pod_network import node_subnet
from devcluster.pod_status import (
    ContainerRecord,
    pod_phase,
    pod_status,
    terminated_state,
    termination_message,
)
from devcluster.pod_targets import target_groups
from devcluster.probes import Probe
from devcluster.prometheus import pod_scrape_config

POD_DIR = Path("/work/pods/ns_p_uid")
CTX = PodContext(
    pod_ip="10.77.0.9",
    host_ip="127.0.0.1",
    node_name="process-node-0",
    pod_dir=POD_DIR,
    host_env={"PATH": "/usr/bin"},
    triton_backend_dir=lambda: Path("/work/backends"),
)


def pod(container: dict[str, Any], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = {"name": "p", "namespace": "ns", "uid": "uid", "labels": {"app": "x"}}
    return {"metadata": meta, "spec": {"containers": [container], "volumes": volumes or []}}


MODELS = {"name": "models", "hostPath": {"path": "/srv/cache"}}


def test_batchline_runs_this_interpreter_with_paths_env_and_threads_mapped() -> None:
    container = {
        "name": "job",
        "command": ["batchline", "build"],
        "args": ["/models/ckpt", "--out=/models/out", "--log=/dev/termination-log", "$(WHO)"],
        "env": [
            {"name": "WHO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CACHE", "value": "/models/hf"},
            {"name": "SCRATCH", "value": "/scratch/a"},
        ],
        "resources": {"requests": {"cpu": "1500m"}},
        "volumeMounts": [{"name": "models", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/scratch"}],
    }
    how = launch(pod(container, [MODELS, {"name": "tmp", "emptyDir": {}}]), container, CTX)
    assert how.argv[1:] == [
        "-m",
        "batchline.cli",
        "build",
        "/srv/cache/ckpt",
        "--out=/srv/cache/out",
        f"--log={POD_DIR}/job/termination-log",
        "p",
    ]
    assert how.env["PATH"] == "/usr/bin" and how.env["IP"] == "10.77.0.9" and how.env["APP"] == "x"
    assert how.env["CACHE"] == "/srv/cache/hf" and how.env["SCRATCH"] == f"{POD_DIR}/volumes/tmp/a"
    assert how.env["OMP_NUM_THREADS"] == how.env["MKL_NUM_THREADS"] == "2"
    assert how.cwd == POD_DIR and not how.unsupported


def test_tritonserver_binds_the_pod_ip_and_uses_the_wheel_backends() -> None:
    pytest.importorskip("pytriton")
    container = {"name": "triton", "command": ["tritonserver"], "args": ["--model-repository=/models/repo"]}
    mounts = [{"name": "models", "mountPath": "/models"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    container["volumeMounts"] = mounts
    how = launch(pod(container, [MODELS, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]), container, CTX)
    assert how.argv[0].endswith("/tritonserver/bin/tritonserver")
    assert how.argv[1:] == [
        "--backend-directory=/work/backends",
        "--model-repository=/srv/cache/repo",
        "--http-address=10.77.0.9",
        "--grpc-address=10.77.0.9",
        "--metrics-address=10.77.0.9",
    ]
    assert "nvidia_pytriton.libs" in how.env["LD_LIBRARY_PATH"]
    assert "OMP_NUM_THREADS" not in how.env


def test_other_commands_are_not_run() -> None:
    container = {"name": "sh", "image": "busybox", "command": ["sh", "-c", "echo hi"]}
    how = launch(pod(container), container, CTX)
    assert how.argv == []
    assert "runs only `tritonserver` and `batchline` containers, not 'sh'" in how.unsupported


@pytest.mark.parametrize(
    ("volumes", "env", "message"),
    [
        ([{"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}], [], "local mode uses hostPath"),
        ([], [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}], "valueFrom.configMapKeyRef"),
        ([], [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], "secret 's' has no key 'k'"),
    ],
)
def test_what_the_node_cannot_provide_fails_the_pod(
    volumes: list[dict[str, Any]], env: list[dict[str, Any]], message: str
) -> None:
    container = {"name": "c", "command": ["batchline"], "env": env}
    with pytest.raises(PodSpecError, match=message):
        launch(pod(container, volumes), container, CTX)


def test_service_account_volume_is_accepted_and_not_mapped() -> None:
    container = {"name": "c", "command": ["batchline"], "args": ["/var/run/secrets/x"]}
    container["volumeMounts"] = [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets"}]
    volumes = [{"name": "kube-api-access-abcde", "projected": {"sources": []}}]
    assert launch(pod(container, volumes), container, CTX).argv[-1] == "/var/run/secrets/x"


def running(name: str, ready: bool = True) -> ContainerRecord:
    return ContainerRecord(name, "img", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}, ready=ready, started=True)


def exited(name: str, code: int) -> ContainerRecord:
    return ContainerRecord(name, "img", terminated_state(code, 0.0, 1.0))


def backing_off(name: str) -> ContainerRecord:
    record = ContainerRecord(name, "img", {"waiting": {"reason": "CrashLoopBackOff"}})
    record.last_state = terminated_state(1, 0.0, 1.0)
    return record


@pytest.mark.parametrize(
    ("policy", "init", "main", "phase"),
    [
        ("Always", [], [ContainerRecord("a", "img")], "Pending"),
        ("Always", [running("i")], [ContainerRecord("a", "img")], "Pending"),
        ("Never", [exited("i", 1)], [ContainerRecord("a", "img")], "Failed"),
        ("OnFailure", [exited("i", 1)], [ContainerRecord("a", "img")], "Pending"),
        ("Always", [exited("i", 0)], [running("a")], "Running"),
        ("Always", [], [exited("a", 0)], "Running"),
        ("Always", [], [backing_off("a")], "Running"),
        ("Never", [], [exited("a", 0), exited("b", 0)], "Succeeded"),
        ("Never", [], [exited("a", 0), exited("b", 2)], "Failed"),
        ("Never", [], [exited("a", 0), running("b")], "Running"),
        ("OnFailure", [], [exited("a", 3)], "Running"),
        ("OnFailure", [], [exited("a", 0)], "Succeeded"),
    ],
)
def test_phase_follows_kubelet(
    policy: str, init: list[ContainerRecord], main: list[ContainerRecord], phase: str
) -> None:
    assert pod_phase(policy, init, main) == phase


def test_conditions_keep_transition_times_until_their_status_changes() -> None:
    def status(main: list[ContainerRecord], previous: list[dict[str, Any]], now: float) -> dict[str, Any]:
        return pod_status(
            "Always", [], main, previous_conditions=previous, pod_ip="10.77.0.9", host_ip="127.0.0.1",
            start_time=0.0, now=now,
        )  # fmt: skip

    first = status([running("a", ready=False)], [], 100.0)
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "ContainersNotReady",
        "containers with unready status: [a]",
    )
    assert status([running("a", ready=False)], first["conditions"], 200.0) == first
    second = {c["type"]: c for c in status([running("a")], first["conditions"], 300.0)["conditions"]}
    assert second["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": "1970-01-01T00:05:00Z",
        "reason": None,
        "message": None,
    }
    assert second["Initialized"]["lastTransitionTime"] == "1970-01-01T00:01:40Z"
    assert first["podIPs"] == [{"ip": "10.77.0.9"}] and first["phase"] == "Running"


def test_termination_message_from_the_file_else_from_the_log_on_error() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(200))
    assert termination_message(b"x" * 5000 + b"end", log, 1, fallback_to_logs=True) == ("x" * 4093 + "end")
    assert termination_message(b"", log, 1, fallback_to_logs=False) == ""
    assert termination_message(b"", log, 0, fallback_to_logs=True) == ""
    tail = termination_message(b"", log, 1, fallback_to_logs=True)
    assert tail.splitlines() == [f"line {i}" for i in range(120, 200)]


class _Flaky(http.server.BaseHTTPRequestHandler):
    codes: list[int] = []

    def do_GET(self) -> None:
        self.send_response(self.codes.pop(0) if self.codes else 200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_probe_thresholds_timing_and_named_ports(server: int) -> None:
    _Flaky.codes = [503, 503, 200, 200]
    spec = {
        "httpGet": {"path": "/ready", "port": "http"},
        "initialDelaySeconds": 5,
        "periodSeconds": 2,
        "failureThreshold": 2,
        "successThreshold": 2,
    }
    ports = [{"name": "http", "containerPort": server}]
    probe = Probe("readiness", spec, started=100.0)
    assert not probe.due(104.9) and probe.due(105.0)
    results = []
    for now in (105.0, 107.0, 109.0, 111.0):
        probe.run(now, "127.0.0.1", ports)
        results.append((probe.result, probe.failed))
    assert results == [(False, False), (False, True), (False, False), (True, False)]
    assert probe.next_at == 113.0
    assert Probe("liveness", spec, 0.0).result is True


def test_pod_targets_look_like_kubernetes_sd_and_the_pod_monitor_keeps_metrics_ports() -> None:
    ports = [{"name": "http", "containerPort": 8000}, {"name": "metrics", "containerPort": 8002}]
    served = {
        "metadata": {"name": "a", "namespace": "ns", "uid": "u", "labels": {"batchline.dev/llmdeployment": "chat"}},
        "spec": {"nodeName": "process-node-0", "containers": [{"name": "triton", "ports": ports}]},
        "status": {"podIP": "10.77.0.2", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pending = {"metadata": {"name": "b", "namespace": "ns", "uid": "v"}, "spec": {"containers": []}, "status": {}}
    groups = target_groups([served, pending])
    assert [g["targets"] for g in groups] == [["10.77.0.2:8000"], ["10.77.0.2:8002"]]
    labels = groups[1]["labels"]
    assert labels["__meta_kubernetes_pod_label_batchline_dev_llmdeployment"] == "chat"
    assert labels["__meta_kubernetes_pod_labelpresent_batchline_dev_llmdeployment"] == "true"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "metrics"
    assert (labels["__meta_kubernetes_pod_ready"], labels["__meta_kubernetes_pod_phase"]) == ("true", "Running")
    relabel = pod_scrape_config("http://127.0.0.1:1/", "1s")["relabel_configs"]
    assert {
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": "metrics",
        "action": "keep",
    } in relabel


def test_pod_addresses_are_handed_out_round_robin_within_the_node_subnet() -> None:
    assert node_subnet("10.77.0.0/16", 258) == "10.77.2.0/24"
    addresses = PodAddresses("10.77.5.0/24")
    first, second = addresses.take(), addresses.take()
    assert (first, second) == ("10.77.5.2", "10.77.5.3")
    addresses.give_back(first)
    assert addresses.take("10.77.5.9") == "10.77.5.9"
    assert addresses.take() == "10.77.5.4"  # a freed address waits its turn


def test_secret_values_come_from_the_api_and_optional_ones_may_be_missing() -> None:
    secrets = {("ns", "hf-token"): {"HF_TOKEN": "hf_abc"}}
    ctx = dataclasses.replace(CTX, read_secret=lambda namespace, name: secrets.get((namespace, name)))
    env = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}},
        {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}}},
    ]
    container = {"name": "c", "command": ["batchline"], "env": env}
    how = launch(pod(container), container, ctx)
    assert how.env["HF_TOKEN"] == "hf_abc" and "OTHER" not in how.env


def test_an_image_from_a_registry_that_cannot_resolve_backs_off_like_a_kubelet_pull() -> None:
    from devcluster.pod_runner import pull_failure

    assert pull_failure("ghcr.io/batchline/batchline-builder:0.1.0") is None
    assert pull_failure("busybox") is None and pull_failure("localhost:5000/x:1") is None
    failure = pull_failure("registry.invalid:5000/team/builder:1")
    assert failure is not None and failure["waiting"]["reason"] == "ImagePullBackOff"
    assert "lookup registry.invalid: no such host" in failure["waiting"]["message"]


def test_what_a_container_leaves_in_its_process_group_dies_with_it(tmp_path: Path) -> None:
    """As a runtime kills the rest of a container when its main process exits: here the main process
    leaves a child that ignores SIGTERM (as Triton's python backend stubs do) and exits."""
    from devcluster.container_launch import ContainerLaunch
    from devcluster.pod_runner import ContainerRun, PodRunner

    child_pid = tmp_path / "child.pid"
    leave_a_child = (
        "import signal, subprocess, sys;"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time;"
        " signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']);"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))"
    )
    main = subprocess.Popen([sys.executable, "-c", leave_a_child], start_new_session=True)
    assert main.wait(timeout=30) == 0
    child = int(child_pid.read_text())
    try:
        assert _alive(child)  # left behind, in the container's process group
        how = ContainerLaunch("c", [sys.executable], {}, tmp_path, tmp_path / "termination-log", False)
        run = ContainerRun(spec={}, launch=how, record=ContainerRecord("c", "batchline"), process=main)
        runner = PodRunner(api=None, pod=pod({"name": "c"}), ctx=CTX, on_exit=lambda _: None)  # type: ignore[arg-type]
        runner._exited(run, 0)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        assert run.record.state["terminated"]["exitCode"] == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not a zombie that nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

