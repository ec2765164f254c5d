"""The model cache's own objects: its catalogue ConfigMap and the Job that removes unused builds from its volume."""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

from batchline import api
from batchline.config import OperatorConfig
from batchline.resources.common import (
    BUILDER_UID,
    MODEL_MOUNT,
    Manifest,
    cache_tool_container,
    image_pull_secrets,
    model_cache_volume,
    restricted_pod_security,
)


def catalogue(namespace: str, config: OperatorConfig) -> Manifest:
    """The empty catalogue; it has no owner, because the cache outlives every LLMDeployment."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config.model_cache_pvc,
            "namespace": namespace,
            "labels": {api.LABEL_CACHE: "catalogue", api.LABEL_MANAGED_BY: api.MANAGED_BY},
        },
        "data": {},
    }


def gc_job_name(keys: Collection[str]) -> str:
    return "batchline-cache-gc-" + hashlib.sha256(" ".join(sorted(keys)).encode()).hexdigest()[:12]


def gc_job(namespace: str, keys: Collection[str], config: OperatorConfig) -> Manifest:
    """A Job that deletes the builds of `keys` from the cache volume (builds that no other key uses).

    It runs the chart's checker image, so it gets the chart's image pull secrets (it belongs to no LLMDeployment)."""
    labels = {api.LABEL_CACHE: "gc", api.LABEL_MANAGED_BY: api.MANAGED_BY}
    container = cache_tool_container("gc", ["gc", MODEL_MOUNT, *sorted(keys)], config, read_only=False)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(BUILDER_UID),
        "containers": [container],
        "volumes": [model_cache_volume(config, namespace, read_only=False)],
    }
    if pull_secrets := image_pull_secrets(config):
        pod_spec["imagePullSecrets"] = pull_secrets
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": gc_job_name(keys), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }  # fmt: skip
