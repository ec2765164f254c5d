"""The README's command list on its own: `batchline local up` (which runs the operator with what a local
cluster needs), `kubectl apply` of the example, and the build Job's pod lands on the process node and
starts (not Pending on a missing PersistentVolumeClaim, nor on builder requests no node can hold)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchline.config import parse_bytes
from devcluster import local_operator
from devcluster.controlplane import LocalCluster
from devcluster.local_operator import millicores

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smollm2-int8-cpu.yaml"


def batchline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchline.cli", *args], capture_output=True, text=True,
                          timeout=300)


def kubectl(kubeconfig: str, *args: str) -> str:
    out = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def local_default(tmp_path: Path) -> Iterator[tuple[LocalCluster, str]]:
    """`batchline local up` as the README has it (a cluster of its own, beside the session's)."""
    cluster = LocalCluster("pytest-docs", tmp_path / "cluster")
    try:
        result = batchline("local", "up", "--name", cluster.name, "--state-dir", str(cluster.state_dir))
        assert result.returncode == 0, result.stderr
        yield cluster, result.stdout.strip().splitlines()[-1].removeprefix("KUBECONFIG=")
    finally:
        result = batchline("local", "down", "--name", cluster.name, "--state-dir", str(cluster.state_dir))
        assert result.returncode == 0, result.stderr


def build_pods(kubeconfig: str, namespace: str) -> list[dict[str, Any]]:
    pods = json.loads(kubectl(kubeconfig, "get", "pods", "-n", namespace, "-o", "json",
                              "-l", "app.kubernetes.io/component=builder"))
    return list(pods["items"])


def scheduled_and_started(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
    scheduled = conditions.get("PodScheduled", {}).get("status") == "True"
    return scheduled and pod["status"].get("phase") in ("Running", "Succeeded", "Failed")


def test_the_readme_commands_get_a_build_pod_scheduled_and_started(local_default: tuple[LocalCluster, str]) -> None:
    cluster, kubeconfig = local_default
    status = cluster.status()
    assert status["up"] and status["components"]["operator"]["healthy"]
    settings = dict(line.split("=", 1) for line in cluster.operator_env_file.read_text().splitlines())
    assert settings["BATCHLINE_MODEL_CACHE_HOST_PATH"] == str(local_operator.model_cache())

    namespace = f"docs-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    try:
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(EXAMPLE))
        deadline, pods = time.monotonic() + 120, list[dict[str, Any]]()
        while not any(scheduled_and_started(p) for p in pods):
            assert time.monotonic() < deadline, (
                "no build pod was scheduled and started in 120 s: "
                + json.dumps([p["status"] for p in pods], indent=1)[-3000:]
            )
            time.sleep(1)
            pods = build_pods(kubeconfig, namespace)
        pod = next(p for p in pods if scheduled_and_started(p))
        assert pod["spec"]["nodeName"] == "process-node-0"
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "model-cache"]
        assert volume["hostPath"]["path"] == f"{local_operator.model_cache()}/{namespace}"
        requests = pod["spec"]["containers"][0]["resources"]["requests"]
        assert millicores(requests["cpu"]) == millicores(settings["BATCHLINE_BUILD_CPU"])
        assert parse_bytes(requests["memory"]) == parse_bytes(settings["BATCHLINE_BUILD_MEMORY"])
    finally:
        shutil.rmtree(local_operator.model_cache() / namespace, ignore_errors=True)
