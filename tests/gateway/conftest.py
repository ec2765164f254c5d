"""Fixtures for the gateway tests: real tritonservers serving the echo models, and the gateway as a
process (`batchline gateway --upstream ...`), as a user would run it."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.echo_model import write_embedding_model, write_generation_model

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[str]
    log: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def start_gateway(log: Path, *args: str, env: dict[str, str] | None = None) -> GatewayProcess:
    command = [sys.executable, "-m", "batchline.cli", "gateway", "--host", "127.0.0.1", "--port", "0", *args]
    stderr = log.open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO,
                               env={**os.environ, **(env or {})})
    stderr.close()
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(START_TIMEOUT_S):
        process.kill()
        raise AssertionError(f"the gateway did not start within {START_TIMEOUT_S:g} s:\n{log.read_text()}")
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise AssertionError(f"the gateway did not start: {line}\n{log.read_text()}")
    return GatewayProcess(line.split()[4], process, log)


def stop_gateway(gateway: GatewayProcess) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(10)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = start_gateway(tmp_path / f"gateway-{len(started)}.log", *args, env=env)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        stop_gateway(gateway)


@dataclass
class EchoRepository:
    path: Path
    events: Path  # one line per cancelled generation, from every model of the repository

    def cancellations(self) -> int:
        return len(self.events.read_text().splitlines()) if self.events.is_file() else 0


@pytest.fixture(scope="session")
def echo_repository(tmp_path_factory: pytest.TempPathFactory) -> EchoRepository:
    root = tmp_path_factory.mktemp("echo-models")
    events = root / "events.txt"
    repository = root / "repository"
    write_generation_model(repository, "echo", delay_ms=2, events_file=events)  # quick answers
    write_generation_model(repository, "slow", delay_ms=40, events_file=events)  # tokens one can watch
    write_generation_model(repository, "fast", delay_ms=0.2, events_file=events)  # floods a slow reader
    write_generation_model(repository, "stuck", delay_ms=4000, events_file=events)  # silent past a timeout
    write_embedding_model(repository, "embed")
    return EchoRepository(repository, events)


@pytest.fixture(scope="session")
def triton(echo_repository: EchoRepository) -> Iterator[object]:
    from model_repo_builder.triton_server import TritonServer

    with TritonServer([echo_repository.path]) as server:
        yield server


def kill(server: object) -> None:
    """SIGKILL a TritonServer's process group (the server and its model stubs), as a node failure would."""
    process = server._process  # type: ignore[attr-defined]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
