"""The one write path for children: server-side apply with a fixed field manager.

Each applied manifest carries a hash of itself in an annotation. The reconcile loop compares
that hash with what it last saw in the cluster and skips the call when they match, so a pass
with nothing changed makes no write at all (a no-op apply would still be a PATCH request).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from batchline import api
from batchline.resources.serving import Manifest


def with_hash(manifest: Manifest) -> Manifest:
    """The manifest with its content hash stamped into metadata.annotations. The input is left as it
    was; the copy shares everything below metadata with it (no deep copy: a pass stamps every child)."""
    meta = manifest["metadata"]
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != api.ANNOTATION_APPLIED_HASH}
    out = {**manifest, "metadata": {**meta, "annotations": annotations}}
    digest = hashlib.sha256(json.dumps(out, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    annotations[api.ANNOTATION_APPLIED_HASH] = digest[:20]
    return out


def applied_hash(manifest: Manifest) -> str:
    return str(manifest["metadata"]["annotations"][api.ANNOTATION_APPLIED_HASH])


class Applier:
    """Writes through the dynamic client: plain dicts in, no per-call validation of arguments into the
    generated client's models (which cost more CPU than the request itself), no decoding of replies
    that nothing reads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._dynamic = DynamicClient(api_client)
        self._resources: dict[tuple[str, str], Any] = {}

    def _resource(self, api_version: str, kind: str) -> Any:
        # Discovery's lookup walks every group's resources: once per kind is enough.
        found = self._resources.get((api_version, kind))
        if found is None:
            found = self._resources[(api_version, kind)] = self._dynamic.resources.get(
                api_version=api_version, kind=kind
            )
        return found

    def has_kind(self, api_version: str, kind: str) -> bool:
        try:
            self._resource(api_version, kind)
        except ResourceNotFoundError:
            return False
        return True

    def create(self, manifest: Manifest) -> None:
        """Creates `manifest` (an Event, say); the reply is not decoded."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        _done(resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"), serialize=False))

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of a custom object's status, as CustomObjectsApi's method of that name does it;
        returns the patched object."""
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
        response = self._dynamic.request(
            "patch", path, body=body, content_type="application/merge-patch+json", serialize=False
        )
        result: dict[str, Any] = json.loads(response.data)
        return result

    def apply(self, manifest: Manifest) -> None:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        response = resource.server_side_apply(
            body=manifest,
            name=manifest["metadata"]["name"],
            namespace=manifest["metadata"].get("namespace"),
            field_manager=api.FIELD_MANAGER,
            force_conflicts=True,
            serialize=False,  # the applied object comes back through the watch; do not decode it here
        )
        _done(response)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Deletes with background propagation (a Job's pods go too); False if it was already gone."""
        resource = self._resource(api_version, kind)
        try:
            resource.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"})
        except NotFoundError:
            return False
        return True


def _done(response: Any) -> None:
    response.drain_conn()  # hands the connection back to the pool without decoding the reply
    response.release_conn()
