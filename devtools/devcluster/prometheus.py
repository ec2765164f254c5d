"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping given targets, and/or
the pods of the local cluster that the operator's PodMonitor would select (pod discovery)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster.pod_targets import PodDiscovery, PodTargetsServer
from devcluster.process import free_ports

LLMD_LABEL = "batchline_dev_llmdeployment"  # the pod label batchline.dev/llmdeployment, as Prometheus names it


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port of a /metrics endpoint
    labels: Mapping[str, str] = field(default_factory=dict)


def pod_scrape_config(targets_url: str, refresh: str) -> dict[str, object]:
    """What the operator's PodMonitor becomes: pods labelled batchline.dev/llmdeployment, their container
    port named `metrics`, labelled with namespace, pod and batchline_dev_llmdeployment. Targets come
    from a PodTargetsServer (the kubernetes_sd_configs stand-in)."""
    return {
        "job_name": "llmdeployment-pods",
        "http_sd_configs": [{"url": targets_url, "refresh_interval": refresh}],
        "relabel_configs": [
            _keep(f"__meta_kubernetes_pod_labelpresent_{LLMD_LABEL}", "true"),
            _keep("__meta_kubernetes_pod_container_port_name", "metrics"),
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Failed|Succeeded", "action": "drop"},
            _copy("__meta_kubernetes_namespace", "namespace"),
            _copy("__meta_kubernetes_pod_name", "pod"),
            _copy(f"__meta_kubernetes_pod_label_{LLMD_LABEL}", LLMD_LABEL),
        ],
    }


def _keep(label: str, regex: str) -> dict[str, object]:
    return {"source_labels": [label], "regex": regex, "action": "keep"}


def _copy(label: str, target: str) -> dict[str, object]:
    return {"source_labels": [label], "target_label": target}


class PrometheusServer:
    """Scrapes `targets` (static), and the cluster's pods too when `pod_discovery` is given."""

    def __init__(
        self,
        targets: Sequence[ScrapeTarget] = (),
        scrape_interval_s: float = 1.0,
        port: int = 0,
        pod_discovery: PodDiscovery | None = None,
    ) -> None:
        self.targets = list(targets)
        self.pod_discovery = pod_discovery
        self.scrape_interval_s = scrape_interval_s
        self.port = port or free_ports(1)[0]
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pod_targets: PodTargetsServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        interval = f"{self.scrape_interval_s:g}s"
        scrape_configs: list[dict[str, object]] = []
        if self.targets:
            static = [{"targets": [t.address], "labels": dict(t.labels)} for t in self.targets]
            scrape_configs.append({"job_name": "triton", "static_configs": static})
        if self._pod_targets:
            scrape_configs.append(pod_scrape_config(self._pod_targets.url, interval))
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": scrape_configs,
        }

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run scripts/setup (Debian package 'prometheus')")
        self._dir = Path(tempfile.mkdtemp(prefix="batchline-prometheus-"))
        if self.pod_discovery:
            self._pod_targets = PodTargetsServer(self.pod_discovery).start()
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(self.config()))
        log = (self._dir / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self._dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=2h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        log = self._dir / "prometheus.log" if self._dir else None
        return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._pod_targets:
            self._pod_targets.stop()
            self._pod_targets = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
