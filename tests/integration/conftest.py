"""Fixtures for tests that run the real operator against the real local control plane."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from batchline import api
from devcluster.operator_process import OperatorProcess
from tests.conftest import TINY_CHECKPOINT as TINY_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "llmdeployment.yaml"
# What the test operator runs with (besides the cache folder): small builds, quick retries, and a
# cache budget of 0 so that every build no LLMDeployment uses is collected at once.
OPERATOR_ENV = {
    "BATCHLINE_RESYNC_SECONDS": "3",
    "BATCHLINE_BUILD_CPU": "500m",
    "BATCHLINE_BUILD_MEMORY": "2Gi",
    "BATCHLINE_BUILD_BACKOFF_LIMIT": "0",
    "BATCHLINE_BUILD_RETRY_SECONDS": "20",
    "BATCHLINE_MODEL_CACHE_BUDGET": "0",
}


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def wait_for(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except client.ApiException as err:
            last = err
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="session")
def kube(cluster: Any) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def crd(cluster: Any) -> Path:
    kubectl(cluster.kubeconfig, "apply", "--server-side", "-f", str(CRD))
    kubectl(cluster.kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{api.PLURAL}.{api.GROUP}")
    return CRD


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local-mode cache root: the operator gives each namespace a folder below it."""
    return tmp_path_factory.mktemp("model-cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def operator_metrics(port: int) -> list[Metric]:
    """The metric families an operator exports on its /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return list(text_string_to_metric_families(text))


def reconcile_passes(port: int, namespace: str, name: str) -> float:
    """Successful reconcile passes of one LLMDeployment so far (every autoscaler tick makes one)."""
    wanted = {"namespace": namespace, "llmdeployment": name, "result": "success"}
    for family in operator_metrics(port):
        for sample in family.samples:
            if sample.name == "batchline_reconcile_total" and wanted.items() <= sample.labels.items():
                return sample.value
    return 0.0


@pytest.fixture(scope="session")
def operator_metrics_port() -> int:
    """A free port for the test operator's /metrics."""
    return free_port()


@pytest.fixture(scope="session")
def operator(
    cluster: Any,
    crd: Path,
    tiny_checkpoint: Path,
    model_cache: Path,
    operator_metrics_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    env = {**OPERATOR_ENV, "BATCHLINE_MODEL_CACHE_HOST_PATH": str(model_cache)}
    env["BATCHLINE_METRICS_PORT"] = str(operator_metrics_port)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(Path(cluster.operator_kubeconfig), log, env=env)
    proc.start()
    proc.wait_for_log("Activity 'startup' succeeded")
    yield proc
    proc.stop()


@pytest.fixture
def namespace(kube: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


class LLMDs:
    """Create, read and patch LLMDeployments in one namespace."""

    def __init__(self, kube: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(kube)
        self.namespace = namespace

    def create(self, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, **metadata}, "spec": spec}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, body
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name
        )
        return obj

    def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": spec}
        )
        return obj

    def list(self) -> list[dict[str, Any]]:
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL
        )
        return list(listed["items"])

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)

    def condition(self, name: str, ctype: str) -> dict[str, Any]:
        for cond in (self.get(name).get("status") or {}).get("conditions") or []:
            if cond["type"] == ctype:
                return dict(cond)
        return {}


@pytest.fixture
def llmds(kube: client.ApiClient, namespace: str) -> LLMDs:
    return LLMDs(kube, namespace)
