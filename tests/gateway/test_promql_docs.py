"""The PromQL in docs/gateway.md and in the gateway section of docs/observability.md, run by a real
Prometheus that scrapes two gateway replicas in front of a real tritonserver."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.conftest import GatewayProcess, wait_for

pytestmark = [pytest.mark.triton, pytest.mark.prometheus]

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_queries() -> list[str]:
    gateway = (DOCS / "gateway.md").read_text()
    observability = (DOCS / "observability.md").read_text()
    section = observability[observability.index("## The gateway's metrics"):]
    section = section[: section.index("\n## ", 1)]
    queries = []
    for text in (gateway, section):
        for block in re.findall(r"```promql\n(.*?)```", text, flags=re.S):
            queries += [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return queries


@pytest.fixture
def prometheus(gateway_factory: Callable[..., GatewayProcess], triton: object) -> Iterator[tuple[Any, list[str]]]:
    from devcluster.prometheus import PrometheusServer, ScrapeTarget

    gateways = [gateway_factory("--upstream", f"echo={triton.grpc_url}") for _ in range(2)]  # type: ignore[attr-defined]
    targets = [ScrapeTarget(g.url.removeprefix("http://")) for g in gateways]
    server = PrometheusServer(targets, scrape_interval_s=1.0).start()
    try:
        yield server, [g.url for g in gateways]
    finally:
        server.stop()


def _query(server: Any, expression: str) -> dict[str, Any]:
    url = f"{server.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def _traffic(urls: list[str]) -> None:
    for url in urls:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
        for _ in range(3):
            list(api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two three"}],
                                             stream=True))


def test_the_documented_queries_run_and_give_cluster_wide_figures(prometheus: tuple[Any, list[str]]) -> None:
    server, urls = prometheus
    queries = documented_queries()
    assert len(queries) >= 6
    _traffic(urls)
    up = 'sum(batchline_gateway_time_to_first_token_seconds_count{model="echo"})'
    wait_for(lambda: _query(server, up)["data"]["result"], 30, "Prometheus to scrape both gateways", 0.5)
    _traffic(urls)  # after a first scrape, so rate() sees the counters rise
    p95 = queries[0]
    assert "histogram_quantile(0.95" in p95 and "time_to_first_token" in p95

    def figure() -> float | None:
        result = _query(server, p95)["data"]["result"]
        values = [float(r["value"][1]) for r in result if r["metric"].get("model") == "echo"]
        return values[0] if values and math.isfinite(values[0]) else None

    value = wait_for(figure, 30, "a p95 TTFT over both replicas", 0.5)
    assert 0 < float(value) < 5  # type: ignore[arg-type]
    # One series per model, whatever the number of replicas: the sum runs over them.
    assert len(_query(server, p95)["data"]["result"]) == 1
    for query in queries:
        body = _query(server, query)
        assert body["status"] == "success", (query, body)
        if "requests_waiting" in query:  # the demand per LLMDeployment, here nothing held
            assert [(r["metric"]["llmdeployment"], r["value"][1]) for r in body["data"]["result"]] == [("echo", "0")]
