"""The one write path for children: server-side apply with a fixed field manager.

Each applied manifest carries a hash of itself in an annotation. The reconcile loop compares
that hash with what it last saw in the cluster and skips the call when they match, so a pass
with nothing changed makes no write at all (a no-op apply would still be a PATCH request).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from batchline import api
from batchline.manifests import Manifest


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with its content hash stamped into metadata.annotations."""
    out = copy.deepcopy(manifest)
    out["metadata"].setdefault("annotations", {}).pop(api.ANNOTATION_APPLIED_HASH, None)
    digest = hashlib.sha256(json.dumps(out, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    out["metadata"]["annotations"][api.ANNOTATION_APPLIED_HASH] = digest[:20]
    return out


def applied_hash(manifest: Manifest) -> str:
    return str(manifest["metadata"]["annotations"][api.ANNOTATION_APPLIED_HASH])


class Applier:
    def __init__(self, api_client: client.ApiClient) -> None:
        self._dynamic = DynamicClient(api_client)

    def has_kind(self, api_version: str, kind: str) -> bool:
        try:
            self._dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            return False
        return True

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        resource = self._dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        result = resource.server_side_apply(
            body=manifest,
            name=manifest["metadata"]["name"],
            namespace=manifest["metadata"].get("namespace"),
            field_manager=api.FIELD_MANAGER,
            force_conflicts=True,
        )
        return dict(result.to_dict())

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Deletes with background propagation (a Job's pods go too); False if it was already gone."""
        resource = self._dynamic.resources.get(api_version=api_version, kind=kind)
        try:
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"})
        except NotFoundError:
            return False
        return True
