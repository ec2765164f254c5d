"""The key that names a model repository in the cache, from the spec fields that shape it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def repository_inputs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec subset that changes the built repository or the build Job's pod; anything else must not
    cause a rebuild."""
    serving = spec["serving"]
    gpus = spec["resources"]["gpu"]["count"]
    inputs: dict[str, Any] = {
        "model": {"source": spec["model"]["source"], "task": spec["model"]["task"]},
        # The quality gate is a build input: loosening it after a failed build must build again now.
        # dequantizeAtLoad (deprecated, no effect) lost its CRD default `false`: filled in here so that the
        # keys of objects without it stay what they were, and those that set it keep theirs too.
        "quantization": {"dequantizeAtLoad": False, **spec["quantization"]},
        "backend": serving["backend"],
        "modelName": serving["modelName"],
        "maxBatchSize": serving["maxBatchSize"],
        "dynamicBatching": serving["dynamicBatching"],
        "instancesPerReplica": serving["instancesPerReplica"],
        "responseCache": serving["responseCache"],
        # The in-flight engine and its KV cache size are in the repository's config.pbtxt. Only when set,
        # so the repositories of LLMDeployments that leave them unset keep their keys.
        **{name: serving[name] for name in ("engine", "kvCacheTokens") if serving.get(name) is not None},
        "device": "gpu" if gpus > 0 else "cpu",
    }
    # Added only when they apply, so that the keys of specs without them stay what they were.
    if serving["backend"] == "vllm" and gpus > 1:
        inputs["tensorParallelSize"] = gpus  # model.json's tensor_parallel_size
    if spec["quantization"]["mode"] == "none" and gpus > 0:
        inputs["precision"] = "checkpoint"  # none keeps the checkpoint's dtype on GPUs (float32 before)
    # Not repository inputs, but they shape the build Job's pod, which cannot change once the Job exists:
    # a change starts a new build (the builder finds the same content and only links it).
    if token := spec["model"].get("tokenSecretRef"):
        inputs["tokenSecretRef"] = dict(token)
    if resources := (spec.get("build") or {}).get("resources"):
        inputs["buildResources"] = {k: str(v) for k, v in resources.items()}
    return inputs


def repository_key(spec: Mapping[str, Any]) -> str:
    blob = json.dumps(repository_inputs(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
