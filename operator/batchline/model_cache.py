"""The model cache's catalogue, and which entries to collect: pure functions, no API calls.

The cache volume (a PVC per namespace, or a node folder in local mode) holds the builds; the
catalogue is a ConfigMap beside it with one data entry per build key: what the builder reported
when the build finished (its termination message) and when. A key in the catalogue is a build
that Triton pods can mount now, so the operator never starts a Job for it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from batchline import api
from batchline.config import OperatorConfig
from batchline.manifests import MODEL_MOUNT, RESTRICTED_CONTAINER, Manifest, model_cache_volume


@dataclass(frozen=True)
class CacheEntry:
    key: str
    built_at: str
    summary: Mapping[str, Any]  # the builder's JSON summary (see model_repo_builder.termination)

    @property
    def size_bytes(self) -> int:
        return int(self.summary.get("sizeBytes") or 0)

    @classmethod
    def from_data(cls, key: str, text: str) -> CacheEntry:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            doc = {}
        return cls(key, str(doc.get("builtAt", "")), doc.get("summary") or {})

    def to_data(self) -> str:
        return json.dumps({"builtAt": self.built_at, "summary": self.summary}, sort_keys=True, separators=(",", ":"))


def entries(configmap_data: Mapping[str, str] | None) -> dict[str, CacheEntry]:
    return {key: CacheEntry.from_data(key, text) for key, text in (configmap_data or {}).items()}


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


def collectable(cache: Mapping[str, CacheEntry], in_use: Collection[str], budget_bytes: int) -> list[str]:
    """Unused keys to remove, oldest build first, until the cache fits the budget (or only used ones remain)."""
    total = sum(e.size_bytes for e in cache.values())
    out: list[str] = []
    for entry in sorted((e for k, e in cache.items() if k not in in_use), key=lambda e: (e.built_at, e.key)):
        if total <= budget_bytes:
            break
        out.append(entry.key)
        total -= entry.size_bytes
    return out


def gc_job_name(keys: Collection[str]) -> str:
    return "batchline-cache-gc-" + hashlib.sha256(" ".join(sorted(keys)).encode()).hexdigest()[:12]


def gc_job(namespace: str, keys: Collection[str], config: OperatorConfig) -> Manifest:
    """A Job that deletes the builds of `keys` from the cache volume (builds that no other key uses)."""
    labels = {api.LABEL_CACHE: "gc", api.LABEL_MANAGED_BY: api.MANAGED_BY}
    container = {
        "name": "gc",
        "image": config.builder_image,
        "command": ["batchline"],
        "args": ["cache", "gc", MODEL_MOUNT, *sorted(keys), "--termination-log=/dev/termination-log"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "model-cache", "mountPath": MODEL_MOUNT}],
        "securityContext": RESTRICTED_CONTAINER,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": gc_job_name(keys), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [model_cache_volume(config, namespace, read_only=False)],
                },
            },
        },
    }  # fmt: skip
