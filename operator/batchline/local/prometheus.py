"""A real Prometheus server (Debian's `prometheus` package) on loopback, scraping given targets."""

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

from batchline.local.process import free_ports


@dataclass(frozen=True)
class ScrapeTarget:
    address: str  # host:port of a /metrics endpoint
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusServer:
    def __init__(self, targets: Sequence[ScrapeTarget], scrape_interval_s: float = 1.0, port: int = 0) -> None:
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.port = port or free_ports(1)[0]
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, object]:
        interval = f"{self.scrape_interval_s:g}s"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "triton",
                    "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in self.targets],
                }
            ],
        }

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run scripts/setup (Debian package 'prometheus')")
        self._dir = Path(tempfile.mkdtemp(prefix="batchline-prometheus-"))
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
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
