"""The model cache's catalogue entries, and which of them to collect: pure functions, no API calls.

The cache volume (a PVC per namespace, or a node folder in local mode) holds the builds; the
catalogue is a ConfigMap beside it with one data entry per build key: what the builder reported
when the build finished (its termination message) and when. A key in the catalogue is a build
that Triton pods can mount now, so the operator never starts a Job for it again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CacheEntry:
    key: str
    built_at: str
    summary: Mapping[str, Any]  # the builder's JSON summary (see model_repo_builder.termination)

    @property
    def size_bytes(self) -> int:
        return int(self.summary.get("sizeBytes") or 0)

    @property
    def content_key(self) -> str:
        """The build folder this key is an alias of (specs that differ only in how the build Job runs,
        e.g. its token Secret or resources, share one)."""
        return str(self.summary.get("key") or self.key)

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


def collectable(cache: Mapping[str, CacheEntry], in_use: Collection[str], budget_bytes: int) -> list[str]:
    """Unused keys to remove, oldest build first, until the cache fits the budget (or only used ones remain).

    A build folder counts once however many keys alias it, and frees its bytes only with its last key
    (`batchline cache gc` keeps a folder that another alias still names). Raw downloads never stay on
    the volume (the build pod's emptyDir), and the builder removes killed builds' staging folders.
    """
    sizes = {e.content_key: e.size_bytes for e in cache.values()}
    aliases = Counter(e.content_key for e in cache.values())
    total = sum(sizes.values())
    out: list[str] = []
    for entry in sorted((e for k, e in cache.items() if k not in in_use), key=lambda e: (e.built_at, e.key)):
        if total <= budget_bytes:
            break
        out.append(entry.key)
        aliases[entry.content_key] -= 1
        if not aliases[entry.content_key]:
            total -= sizes[entry.content_key]
    return out
