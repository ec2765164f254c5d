"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
    resync_seconds: float = 10.0
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"

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
        )
