"""The one owner of the operator's writes: every API write of a pass goes through Writer.

It applies children and Jobs, creates and patches the cache catalogue, writes status and posts Events,
and for each of them knows whether the write is needed:

- an applied object is skipped when its live `applied-hash` annotation (from the watch caches) matches
  the desired one, or when the same hash was applied moments ago and the watch has not shown it yet
  (keyed by kind, namespace and name, one scheme for every kind);
- a status is written only where it differs from the newest of the body and the last write;
- every write is counted (`batchline_writes_total` by kind), and each call says whether it wrote.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

from batchline import api
from batchline.report import metrics
from batchline.resources.common import Manifest
from batchline.resources.event import Event, event_body
from batchline.timestamps import rfc3339

# Seconds to trust our own recent write over a watch cache that has not caught up with it.
INDEX_LAG = 60.0

Ref = tuple[str, str, str]  # kind, namespace, name


class KubeCalls(Protocol):
    """The API calls Writer makes (controller.kube_client.KubeClient; a fake in unit tests)."""

    def apply(self, manifest: Manifest) -> None: ...
    def create(self, manifest: Manifest) -> bool: ...
    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any] | None: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...


class Applied(StrEnum):
    WRITTEN = "written"
    UNCHANGED = "unchanged"  # the live object carries the desired hash
    IN_FLIGHT = "in-flight"  # applied moments ago; the watch cache has not shown it yet


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with its content hash stamped into metadata.annotations. The input is left as it
    was; the copy shares everything below metadata with it (no deep copy: a pass stamps every child)."""
    meta = manifest["metadata"]
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != api.ANNOTATION_APPLIED_HASH}
    out = {**manifest, "metadata": {**meta, "annotations": annotations}}
    annotations[api.ANNOTATION_APPLIED_HASH] = _digest(out)
    return out


def applied_hash(manifest: Manifest) -> str:
    return str(manifest["metadata"]["annotations"][api.ANNOTATION_APPLIED_HASH])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:20]


def _ref(manifest: Manifest) -> Ref:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace", ""), meta["name"])


def merge_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` as a JSON merge patch over `current`: fields that `new` drops are set to null, or they would stay."""
    patch: dict[str, Any] = dict(new)
    for key, old in current.items():
        if key not in new:
            patch[key] = None
        elif isinstance(old, Mapping) and isinstance(new[key], Mapping):
            patch[key] = merge_patch(old, new[key])
    return patch


def _revision(meta: Mapping[str, Any]) -> int:
    # The API server's resourceVersion is an etcd revision; only our own writes are compared to it.
    try:
        return int(meta.get("resourceVersion", 0))
    except ValueError:
        return 0


class Writer:
    """Thread-safe: passes of different LLMDeployments run at once on the operator's pool."""

    def __init__(self, calls: KubeCalls, clock: Callable[[], float] = time.monotonic) -> None:
        self._calls = calls
        self._clock = clock
        self._lock = threading.Lock()
        self._applied: dict[Ref, tuple[str, float]] = {}
        # (resourceVersion, status) of the last status write per object uid: a pass that starts from a
        # body fetched before that write landed must neither write it again nor post its Events twice.
        self._status: dict[str, tuple[int, dict[str, Any]]] = {}

    def _wrote(self, kind: str) -> None:
        metrics.WRITES.labels(kind).inc()

    def _remember(self, ref: Ref, digest: str) -> None:
        with self._lock:
            self._applied[ref] = (digest, self._clock())

    def _recent(self, ref: Ref, digest: str | None = None) -> bool:
        with self._lock:
            record = self._applied.get(ref)
        if record is None or self._clock() - record[1] >= INDEX_LAG:
            return False
        return digest is None or record[0] == digest

    def apply(self, manifest: Manifest, live_hash: str | None) -> Applied:
        """Server-side applies a manifest stamped by with_hash, unless `live_hash` (what the watch cache
        shows) is its hash already, or the same hash was applied moments ago."""
        digest = applied_hash(manifest)
        if live_hash == digest:
            return Applied.UNCHANGED
        ref = _ref(manifest)
        if self._recent(ref, digest):
            return Applied.IN_FLIGHT
        self._calls.apply(manifest)
        self._remember(ref, digest)
        self._wrote(manifest["kind"])
        return Applied.WRITTEN

    def applied_recently(self, kind: str, namespace: str, name: str) -> bool:
        """Whether this operator wrote that object within the last INDEX_LAG seconds."""
        return self._recent((kind, namespace, name))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Deletes an object; False (and no count) if it was gone already."""
        if not self._calls.delete(api_version, kind, namespace, name):
            return False
        with self._lock:
            self._applied.pop((kind, namespace, name), None)
        self._wrote(kind)
        return True

    def ensure_created(self, manifest: Manifest, exists: bool) -> bool:
        """Creates an object the watch cache does not show (`exists`) unless it was created moments ago;
        one that exists already (a lagging cache) is left as it is. Returns whether a call was made."""
        ref = _ref(manifest)
        if exists or self._recent(ref):
            return False
        self._calls.create(manifest)
        self._remember(ref, "")
        self._wrote(manifest["kind"])
        return True

    def patch_data(self, configmap: Manifest, data: Mapping[str, str | None]) -> bool:
        """Merges `data` into a ConfigMap (None removes a key), creating the ConfigMap from `configmap` if it
        is gone; each key's value is skipped while the same value was written moments ago."""
        kind, namespace, name = _ref(configmap)
        todo = {k: v for k, v in data.items() if not self._recent((kind, namespace, f"{name}/{k}"), _digest(v))}
        if not todo:
            return False
        patch = {"data": todo}
        # A ConfigMap deleted since the watch cache last saw it is created anew (or the one a racer made patched).
        created = {**configmap, "data": {k: v for k, v in todo.items() if v is not None}}
        if self._calls.merge_patch("v1", kind, namespace, name, patch) is None and not self._calls.create(created):
            self._calls.merge_patch("v1", kind, namespace, name, patch)
        for key, value in todo.items():
            self._remember((kind, namespace, f"{name}/{key}"), _digest(value))
        self._wrote(kind)
        return True

    def observed_status(self, llmd: Mapping[str, Any]) -> dict[str, Any]:
        """The status as of the newest of the body and our own last write."""
        meta = llmd["metadata"]
        with self._lock:
            written = self._status.get(meta["uid"])
        if written and _revision(meta) < written[0]:
            return written[1]
        body_status: dict[str, Any] = llmd.get("status") or {}
        return body_status

    def write_status(self, llmd: Mapping[str, Any], current: Mapping[str, Any], new: dict[str, Any]) -> bool:
        """A merge patch from `current` (observed_status) to `new`; False if the object is gone."""
        meta = llmd["metadata"]
        result = self._calls.merge_patch(
            api.API_VERSION, api.KIND, meta["namespace"], meta["name"], {"status": merge_patch(current, new)},
            status=True,
        )
        if result is None:
            return False
        with self._lock:
            self._status[meta["uid"]] = (_revision(result["metadata"]), new)
        self._wrote("status")
        return True

    def post_events(self, llmd: Mapping[str, Any], events: Sequence[Event]) -> int:
        for event in events:
            self._calls.create(event_body(llmd, event, rfc3339()))
            self._wrote("Event")
        return len(events)

    def forget(self, uid: str, children: Sequence[Ref]) -> None:
        """Drops what is remembered of a deleted LLMDeployment and its children."""
        with self._lock:
            self._status.pop(uid, None)
            for ref in children:
                self._applied.pop(ref, None)
