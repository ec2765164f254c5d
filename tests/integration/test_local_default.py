"""The README's command list on its own: `batchline local up` (which runs the operator with what a local
cluster needs, and the OpenAI-compatible gateway), `kubectl apply` of the example, and the build Job's pod
lands on the process node and starts (not Pending on a missing PersistentVolumeClaim, nor on builder
requests no node can hold); the gateway answers at the printed OPENAI_BASE_URL, and `local down` stops
every process, the gateway's too."""

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

import openai
import pytest

from batchline.config import parse_bytes
from devcluster import local_operator, process
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
def local_default(tmp_path: Path) -> Iterator[tuple[LocalCluster, dict[str, str]]]:
    """`batchline local up` as the README has it (a cluster of its own, beside the session's): its stdout
    as KEY=value lines; `local down` afterwards, which must leave none of its processes running."""
    cluster = LocalCluster("pytest-docs", tmp_path / "cluster")
    pids: list[int] = []
    try:
        result = batchline("local", "up", "--name", cluster.name, "--state-dir", str(cluster.state_dir))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[-1].startswith("KUBECONFIG="), lines  # last, for `export $(batchline local up | tail -1)`
        pids = [c["pid"] for c in cluster.status()["components"].values() if c["pid"]]
        yield cluster, dict(line.split("=", 1) for line in lines)
    finally:
        result = batchline("local", "down", "--name", cluster.name, "--state-dir", str(cluster.state_dir))
        assert result.returncode == 0, result.stderr
    assert pids and not [pid for pid in pids if process.alive(pid)]


def build_pods(kubeconfig: str, namespace: str) -> list[dict[str, Any]]:
    pods = json.loads(kubectl(kubeconfig, "get", "pods", "-n", namespace, "-o", "json",
                              "-l", "app.kubernetes.io/component=builder"))
    return list(pods["items"])


def scheduled_and_started(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
    scheduled = conditions.get("PodScheduled", {}).get("status") == "True"
    return scheduled and pod["status"].get("phase") in ("Running", "Succeeded", "Failed")


def test_the_readme_commands_get_a_build_pod_scheduled_and_started(
    local_default: tuple[LocalCluster, dict[str, str]],
) -> None:
    cluster, printed = local_default
    kubeconfig = printed["KUBECONFIG"]
    status = cluster.status()
    assert status["up"] and status["components"]["operator"]["healthy"]
    assert status["components"]["gateway"]["healthy"]
    base_url = printed["OPENAI_BASE_URL"]
    assert base_url == status["openai_base_url"] == f"http://127.0.0.1:{status['components']['gateway']['port']}/v1"
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
        # The gateway answers OpenAI's API at the printed URL (healthy above: its read-only identity listed
        # LLMDeployments and EndpointSlices). The example has no build yet, so it is not servable: the
        # OpenAI client's NotFoundError naming the model (the demo serves one through it end to end).
        ai = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
        assert f"{namespace}/smollm2" not in {m.id for m in ai.models.list().data}
        with pytest.raises(openai.NotFoundError, match=f"{namespace}/smollm2"):
            ai.chat.completions.create(model=f"{namespace}/smollm2", messages=[{"role": "user", "content": "Hi"}])
        pod = next(p for p in pods if scheduled_and_started(p))
        assert pod["spec"]["nodeName"] == "process-node-0"
        [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "model-cache"]
        assert volume["hostPath"]["path"] == f"{local_operator.model_cache()}/{namespace}"
        requests = pod["spec"]["containers"][0]["resources"]["requests"]
        assert millicores(requests["cpu"]) == millicores(settings["BATCHLINE_BUILD_CPU"])
        assert parse_bytes(requests["memory"]) == parse_bytes(settings["BATCHLINE_BUILD_MEMORY"])
    finally:
        shutil.rmtree(local_operator.model_cache() / namespace, ignore_errors=True)
