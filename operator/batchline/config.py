"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from batchline.autoscaler import QueryConfig

DEFAULT_IMAGES = {
    "python": "nvcr.io/nvidia/tritonserver:24.10-py3",
    "vllm": "nvcr.io/nvidia/tritonserver:24.10-vllm-python-py3",
}


@dataclass(frozen=True)
class OperatorConfig:
    python_image: str = DEFAULT_IMAGES["python"]
    vllm_image: str = DEFAULT_IMAGES["vllm"]
    model_cache_pvc: str = "batchline-model-cache"
    # Local embedded mode only: mount this node folder instead of the PVC (KWOK nodes have no storage).
    model_cache_host_path: str = ""
    resync_seconds: float = 30.0
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    autoscale_tick_seconds: float = 15.0
    # Prometheus labels that name an LLMDeployment: PodMonitor podTargetLabels gives these two.
    prometheus_object_label: str = "batchline_dev_llmdeployment"
    prometheus_namespace_label: str = "namespace"
    prometheus_selector: str = ""

    def query_config(self) -> QueryConfig:
        return QueryConfig(
            object_label=self.prometheus_object_label,
            namespace_label=self.prometheus_namespace_label or None,
            selector=self.prometheus_selector,
        )

    def image_for(self, backend: str) -> str:
        return self.vllm_image if backend == "vllm" else self.python_image

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            python_image=e.get("BATCHLINE_PYTHON_IMAGE", d.python_image),
            vllm_image=e.get("BATCHLINE_VLLM_IMAGE", d.vllm_image),
            model_cache_pvc=e.get("BATCHLINE_MODEL_CACHE_PVC", d.model_cache_pvc),
            model_cache_host_path=e.get("BATCHLINE_MODEL_CACHE_HOST_PATH", d.model_cache_host_path),
            resync_seconds=float(e.get("BATCHLINE_RESYNC_SECONDS", d.resync_seconds)),
            prometheus_url=e.get("BATCHLINE_PROMETHEUS_URL", d.prometheus_url),
            autoscale_tick_seconds=float(e.get("BATCHLINE_AUTOSCALE_TICK_SECONDS", d.autoscale_tick_seconds)),
            prometheus_object_label=e.get("BATCHLINE_PROMETHEUS_OBJECT_LABEL", d.prometheus_object_label),
            prometheus_namespace_label=e.get("BATCHLINE_PROMETHEUS_NAMESPACE_LABEL", d.prometheus_namespace_label),
            prometheus_selector=e.get("BATCHLINE_PROMETHEUS_SELECTOR", d.prometheus_selector),
        )
