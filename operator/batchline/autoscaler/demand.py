"""Demand the Batchline gateway holds for a model with no ready replica: what wakes a model scaled to zero.

A model at zero replicas has no Triton pod, so none of the autoscaler's signals exist for it. The gateway
holds its requests and exports how many wait, per LLMDeployment; one query per tick reads that for all of
them. Nothing is written to the LLMDeployment (its spec, labels and annotations stay what GitOps applied).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_api_client import PrometheusApiClientException

from batchline.autoscaler.prometheus import PrometheusLike

# The gateway names the LLMDeployment in labels of its own: Prometheus sets `namespace` to the gateway's.
WAITING_QUERY = "sum by (llmdeployment_namespace, llmdeployment) (batchline_gateway_requests_waiting)"


def parse_waiting(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for row in rows:
        metric = row.get("metric") or {}
        value = row.get("value") or [0, "nan"]
        if not isinstance(metric, Mapping) or not isinstance(value, list | tuple):
            continue
        waiting = float(value[1])
        if math.isfinite(waiting) and waiting > 0:
            out[(str(metric.get("llmdeployment_namespace", "")), str(metric.get("llmdeployment", "")))] = waiting
    return out


class HeldDemand:
    """The newest count of held requests per (namespace, name); none while Prometheus cannot tell."""

    def __init__(self, prom: PrometheusLike) -> None:
        self._prom = prom
        self._waiting: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def refresh(self) -> str | None:
        """One query for every LLMDeployment; returns what went wrong, if anything (nothing then wakes)."""
        try:
            waiting = parse_waiting(self._prom.custom_query(WAITING_QUERY))
            error = None
        except (PrometheusApiClientException, OSError, ValueError) as err:
            waiting, error = {}, str(err)
        with self._lock:
            self._waiting = waiting
        return error

    def waiting(self, namespace: str, name: str) -> float:
        with self._lock:
            return self._waiting.get((namespace, name), 0.0)

    def held(self) -> list[tuple[str, str]]:
        """The (namespace, name) of every model with requests held for it now."""
        with self._lock:
            return list(self._waiting)


def wake(desired: int, waiting: float, woken_at: float | None, now: float, hold_seconds: float) -> bool:
    """Whether a model the autoscaler would keep at zero must run one replica: requests are held for it now,
    or were within `hold_seconds` (its scale-down window), so that it is not stopped again before its new
    replica has served them and shown metrics of its own."""
    if desired > 0:
        return False
    return waiting > 0 or (woken_at is not None and now - woken_at < hold_seconds)
