"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

DEFAULT_IMAGES = {
    # docker/triton.Dockerfile: NVIDIA's Triton with torch and the transformers the in-flight engine needs.
    "python": "ghcr.io/batchline/batchline-triton:0.1.0",
    "vllm": "nvcr.io/nvidia/tritonserver:24.10-vllm-python-py3",
    "builder": "ghcr.io/batchline/batchline-builder:0.1.0",
    # The Triton pods' init step and the cache clean-up Job (docker/checker.Dockerfile): its own image and
    # tag, so that a new builder image does not change, and so roll, every Triton Deployment.
    "checker": "ghcr.io/batchline/batchline-checker:0.1.0",
    # The operator's own image, which also holds the gateway: the chart sets it to the image it runs.
    "operator": "ghcr.io/batchline/batchline-operator:0.1.0",
}
_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names ("a, b,,c") as a tuple, in order, without blanks or repeats."""
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of label names to values ('{"release": "kube-prometheus-stack"}') as sorted pairs."""
    if not text.strip():
        return ()
    labels = json.loads(text)
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"expected a JSON object of label name to string value, got {text!r}")
    return tuple(sorted(labels.items()))


def parse_bytes(quantity: str) -> int:
    """A Kubernetes-style quantity ("200Gi", "50G", "1024") in bytes."""
    text = quantity.strip()
    for suffix in sorted(_BINARY_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _BINARY_SUFFIXES[suffix])
    return int(float(text))


@dataclass(frozen=True)
class OperatorConfig:
    python_image: str = DEFAULT_IMAGES["python"]
    vllm_image: str = DEFAULT_IMAGES["vllm"]
    builder_image: str = DEFAULT_IMAGES["builder"]
    checker_image: str = DEFAULT_IMAGES["checker"]
    # Secrets (names) for pulling the Triton, builder and checker images, on every workload pod.
    image_pull_secrets: tuple[str, ...] = ()
    # Labels for the PodMonitors the operator creates, e.g. (("release", "kube-prometheus-stack"),).
    monitor_labels: tuple[tuple[str, str], ...] = ()
    model_cache_pvc: str = "batchline-model-cache"
    # Local embedded mode only: mount this node folder instead of the PVC (KWOK nodes have no storage).
    model_cache_host_path: str = ""
    # Unused cache entries are removed, oldest first, while the cache holds more than this.
    model_cache_budget_bytes: int = 150 * 2**30  # below the chart's 200Gi claim
    build_cpu: str = "4"
    build_memory: str = "32Gi"
    build_deadline_seconds: int = 4 * 3600
    build_backoff_limit: int = 2  # pod retries inside one Job
    build_retry_seconds: float = 60.0  # wait before a failed build's next Job; doubles per attempt, max 1 h
    # A build pod that cannot start for this long is reported (BuildBlocked) instead of shown as progress.
    build_blocked_seconds: float = 120.0
    # A Secret with key HF_TOKEN for gated hf:// models, mounted into builders when it exists.
    hf_token_secret: str = "hf-token"
    resync_seconds: float = 30.0
    prometheus_url: str = "http://prometheus-operated.monitoring:9090"
    autoscale_tick_seconds: float = 15.0
    # Prometheus labels that name an LLMDeployment: PodMonitor podTargetLabels gives these two.
    prometheus_object_label: str = "batchline_dev_llmdeployment"
    prometheus_namespace_label: str = "namespace"
    prometheus_selector: str = ""
    # Whether the cluster serves PodMonitors (Prometheus Operator); the operator checks at startup.
    pod_monitors: bool = True
    # Whether the cluster serves InferencePools (Gateway API Inference Extension); checked at startup. Where
    # it does, each LLMDeployment gets one, and its pods an OpenAI port (the gateway beside Triton).
    inference_pools: bool = False
    operator_image: str = DEFAULT_IMAGES["operator"]
    # The endpoint picker (EPP) Service that each InferencePool names; {name} is the LLMDeployment's name.
    endpoint_picker: str = "{name}-epp"
    endpoint_picker_port: int = 9002

    def image_for(self, backend: str) -> str:
        return self.vllm_image if backend == "vllm" else self.python_image

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        d = cls()
        return cls(
            python_image=e.get("BATCHLINE_PYTHON_IMAGE", d.python_image),
            vllm_image=e.get("BATCHLINE_VLLM_IMAGE", d.vllm_image),
            builder_image=e.get("BATCHLINE_BUILDER_IMAGE", d.builder_image),
            checker_image=e.get("BATCHLINE_CHECKER_IMAGE", d.checker_image),
            image_pull_secrets=parse_names(e.get("BATCHLINE_IMAGE_PULL_SECRETS", "")) or d.image_pull_secrets,
            monitor_labels=parse_labels(e.get("BATCHLINE_MONITOR_LABELS", "")) or d.monitor_labels,
            operator_image=e.get("BATCHLINE_OPERATOR_IMAGE", d.operator_image),
            endpoint_picker=e.get("BATCHLINE_INFERENCE_POOL_ENDPOINT_PICKER", d.endpoint_picker),
            endpoint_picker_port=int(e.get("BATCHLINE_INFERENCE_POOL_ENDPOINT_PICKER_PORT", d.endpoint_picker_port)),
            model_cache_pvc=e.get("BATCHLINE_MODEL_CACHE_PVC", d.model_cache_pvc),
            model_cache_host_path=e.get("BATCHLINE_MODEL_CACHE_HOST_PATH", d.model_cache_host_path),
            model_cache_budget_bytes=parse_bytes(
                e.get("BATCHLINE_MODEL_CACHE_BUDGET", str(d.model_cache_budget_bytes))
            ),
            build_cpu=e.get("BATCHLINE_BUILD_CPU", d.build_cpu),
            build_memory=e.get("BATCHLINE_BUILD_MEMORY", d.build_memory),
            build_deadline_seconds=int(e.get("BATCHLINE_BUILD_DEADLINE_SECONDS", d.build_deadline_seconds)),
            build_backoff_limit=int(e.get("BATCHLINE_BUILD_BACKOFF_LIMIT", d.build_backoff_limit)),
            build_retry_seconds=float(e.get("BATCHLINE_BUILD_RETRY_SECONDS", d.build_retry_seconds)),
            build_blocked_seconds=float(e.get("BATCHLINE_BUILD_BLOCKED_SECONDS", d.build_blocked_seconds)),
            hf_token_secret=e.get("BATCHLINE_HF_TOKEN_SECRET", d.hf_token_secret),
            resync_seconds=float(e.get("BATCHLINE_RESYNC_SECONDS", d.resync_seconds)),
            prometheus_url=e.get("BATCHLINE_PROMETHEUS_URL", d.prometheus_url),
            autoscale_tick_seconds=float(e.get("BATCHLINE_AUTOSCALE_TICK_SECONDS", d.autoscale_tick_seconds)),
            prometheus_object_label=e.get("BATCHLINE_PROMETHEUS_OBJECT_LABEL", d.prometheus_object_label),
            prometheus_namespace_label=e.get("BATCHLINE_PROMETHEUS_NAMESPACE_LABEL", d.prometheus_namespace_label),
            prometheus_selector=e.get("BATCHLINE_PROMETHEUS_SELECTOR", d.prometheus_selector),
        )
