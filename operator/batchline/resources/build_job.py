"""Desired state of a model build: the Kubernetes Job that runs `batchline build` into the cache.

One Job per (namespace, build key, attempt), shared by every LLMDeployment that wants that key:
each of them is an owner, so the Job goes when the last one does. The builder writes the build
to <cache>/<content key> and the alias <cache>/<build key> that Triton pods mount.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchline import api
from batchline.config import OperatorConfig
from batchline.resources.common import (
    BUILDER_UID,
    MODEL_MOUNT,
    RESTRICTED_CONTAINER,
    Manifest,
    image_pull_secrets,
    model_cache_volume,
    owner_reference,
    restricted_pod_security,
)

SOURCE_MOUNT = "/source"
# huggingface_hub's cache (hf:// downloads): an emptyDir of the build pod, so the raw checkpoint, which
# may be gated, is never on the shared cache volume that every Triton pod mounts, and goes with the pod.
HF_HOME = "/hf-home"
# Owners of a shared Job: enough that deleting one LLMDeployment rarely stops a build others want,
# few enough that a key shared by hundreds of objects does not grow the Job on every new one.
MAX_OWNERS = 8
# percent in the CRD, a fraction for the builder
_GATE_FLAGS = (
    ("maxPerplexityIncreasePercent", "--max-perplexity-increase", 0.01),
    ("minTop1Agreement", "--min-top1-agreement", 1.0),
    ("minCosineSimilarity", "--min-cosine-similarity", 1.0),
)


def job_name(key: str, attempt: int) -> str:
    return f"batchline-build-{key}-{attempt}"


def _source(source: str) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The builder's source argument, and the volume and mount that a pvc:// source needs."""
    if not source.startswith("pvc://"):
        return source, [], []
    claim, _, path = source.removeprefix("pvc://").partition("/")
    volume = {"name": "source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True}
    return f"{SOURCE_MOUNT}/{path}".rstrip("/"), [volume], [mount]


def builder_args(spec: Mapping[str, Any], key: str, source: str) -> list[str]:
    quant, serving = spec["quantization"], spec["serving"]
    batching = serving["dynamicBatching"]
    args = [
        "build", source, MODEL_MOUNT, f"--alias={key}", "--termination-log=/dev/termination-log",
        f"--mode={quant['mode']}", f"--backend={serving['backend']}", f"--model-name={serving['modelName']}",
        f"--group-size={quant['groupSize']}", f"--sparsity={quant['sparsity']:g}",
        f"--max-batch-size={serving['maxBatchSize']}",
        f"--max-queue-delay-us={batching['maxQueueDelayMicroseconds']}",
        f"--max-queue-size={batching['maxQueueSize']}",
        f"--queue-timeout-us={batching['queueTimeoutMicroseconds']}",
        f"--instance-kind={'KIND_GPU' if spec['resources']['gpu']['count'] > 0 else 'KIND_CPU'}",
        f"--instance-count={serving['instancesPerReplica']}",
    ]  # fmt: skip
    if serving["backend"] == "vllm" and spec["resources"]["gpu"]["count"] > 1:
        args.append(f"--tensor-parallel-size={spec['resources']['gpu']['count']}")
    args += [f"--preferred-batch-size={size}" for size in batching.get("preferredBatchSizes") or []]
    if not batching["enabled"]:
        args.append("--no-dynamic-batching")
    if serving["responseCache"]:
        args.append("--response-cache")
    if serving.get("engine"):
        args.append(f"--engine={serving['engine']}")
    if serving.get("kvCacheTokens"):
        args.append(f"--kv-cache-tokens={serving['kvCacheTokens']}")
    gate = quant.get("qualityGate") or {}
    args += [f"{flag}={gate[field] * scale:g}" for field, flag, scale in _GATE_FLAGS if field in gate]
    return args


def _owners(owners: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The owners a Job names: the first MAX_OWNERS by name."""
    return sorted(owners, key=lambda o: o["metadata"]["name"])[:MAX_OWNERS]


def token_env(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """HF_TOKEN from spec.model.tokenSecretRef: required, so a missing Secret or key holds the pod
    (CreateContainerConfigError, see build.state.build_pod_problem); else the chart-wide Secret, if any."""
    ref = spec["model"].get("tokenSecretRef")
    if ref:
        key_ref = {"name": ref["name"], "key": ref.get("key") or "HF_TOKEN", "optional": False}
    else:
        key_ref = {"name": config.hf_token_secret, "key": "HF_TOKEN", "optional": True}
    return {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": key_ref}}


def build_resources(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """spec.build.resources over the chart-wide builder.cpu and builder.memory; memory is also the limit."""
    override = (spec.get("build") or {}).get("resources") or {}
    cpu, memory = str(override.get("cpu") or config.build_cpu), str(override.get("memory") or config.build_memory)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def build_job(
    owners: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], key: str, attempt: int, config: OperatorConfig
) -> Manifest:
    """The Job for build `key`; `owners` are all LLMDeployments in the namespace that want it."""
    namespace = owners[0]["metadata"]["namespace"]
    source, volumes, mounts = _source(spec["model"]["source"])
    gpu = spec["quantization"]["mode"] == "fp8" and spec["serving"]["backend"] == "python"
    resources = build_resources(spec, config)
    if gpu:  # fp8 is measured on the GPU it will run on; every other mode builds on CPU
        resources["requests"][api.GPU_RESOURCE] = resources["limits"][api.GPU_RESOURCE] = "1"
    labels = {api.LABEL_BUILD_KEY: key, api.LABEL_MANAGED_BY: api.MANAGED_BY, "app.kubernetes.io/component": "builder"}
    container = {
        "name": "builder",
        "image": config.builder_image,
        "command": ["batchline"],
        "args": builder_args(spec, key, source),
        "env": [{"name": "HF_HOME", "value": HF_HOME}, token_env(spec, config)],
        "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODEL_MOUNT},
            {"name": "hf-home", "mountPath": HF_HOME},
            *mounts,
        ],
        "securityContext": RESTRICTED_CONTAINER,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(BUILDER_UID),
        "containers": [container],
        "volumes": [
            model_cache_volume(config, namespace, read_only=False),
            {"name": "hf-home", "emptyDir": {}},
            *volumes,
        ],
    }
    # The chart's secrets (the builder image is the chart's), then those in the named owners' spec.imagePullSecrets.
    # A Job's template is immutable: an owner that joins a running build with secrets of its own changes it.
    if pull_secrets := image_pull_secrets(config, [o["spec"] for o in _owners(owners)]):
        pod_spec["imagePullSecrets"] = pull_secrets
    if gpu:
        pod_spec["tolerations"] = [{"key": api.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(key, attempt),
            "namespace": namespace,
            "labels": labels,
            "annotations": {api.ANNOTATION_BUILD_ATTEMPT: str(attempt)},
            "ownerReferences": [owner_reference(o, controller=False) for o in _owners(owners)],
        },
        "spec": {
            "backoffLimit": config.build_backoff_limit,
            "activeDeadlineSeconds": config.build_deadline_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
