"""The API calls the operator makes, over the dynamic client: plain dicts in, no per-call validation of
arguments into the generated client's models (which cost more CPU than the request itself), no decoding
of replies that nothing reads. Only controller.writer.Writer calls it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError, ResourceNotFoundError

from batchline import api
from batchline.resources.common import Manifest


class KubeClient:
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

    def apply(self, manifest: Manifest) -> None:
        """Server-side apply with Batchline's field manager, forcing conflicts."""
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

    def create(self, manifest: Manifest) -> bool:
        """Creates `manifest`; False if an object of that name exists already."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            response = resource.create(body=manifest, namespace=manifest["metadata"].get("namespace"), serialize=False)
        except ConflictError:
            return False
        _done(response)
        return True

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        """A JSON merge patch of the object (or of its status subresource); the patched object, or None if
        there is no such object."""
        resource = self._resource(api_version, kind)
        path = resource.path(name=name, namespace=namespace) + ("/status" if status else "")
        try:
            response = self._dynamic.request(
                "patch", path, body=body, content_type="application/merge-patch+json", serialize=False
            )
        except NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        return result

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
