"""The operator's watch caches: kopf indexes that mirror what reconcile reads, and the view over them.

The indexes only compact a body, so they are async: kopf runs them on its event loop, with no hop to
a worker thread for each watch event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import kopf

from batchline import api
from batchline.build import catalogue
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.observed import BuildPodView, DeploymentView, JobView, NodeView, PodView

OWNED = {api.LABEL_LLMD: kopf.PRESENT}
BUILDS = {api.LABEL_BUILD_KEY: kopf.PRESENT}
CATALOGUE = {api.LABEL_CACHE: "catalogue"}
CACHE_GC = {api.LABEL_CACHE: "gc"}
Key = tuple[str, str]

INDEX_NAMES: list[str] = []  # every index below, by the name kopf hands it to handlers under
F = TypeVar("F", bound=Callable[..., Any])


def _index(*resource: str, **filters: Any) -> Callable[[F], F]:
    def register(fn: F) -> F:
        INDEX_NAMES.append(fn.__name__)
        kopf.index(*resource, **filters)(fn)  # registers fn and returns it as it is
        return fn

    return register


def owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key:
    return (namespace or "", labels[api.LABEL_LLMD])


def _hash(body: kopf.Body) -> str | None:
    return body.metadata.annotations.get(api.ANNOTATION_APPLIED_HASH)


def _trimmed(body: kopf.Body) -> dict[str, Any]:
    """What reconcile reads of an LLMDeployment: no managedFields or annotations held per object."""
    keep = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    meta = {k: body.metadata[k] for k in keep if k in body.metadata}
    return {"metadata": meta, "spec": dict(body.spec), "status": dict(body.status)}


@_index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[None, NodeView]:
    return {None: NodeView.from_body(body)}


@_index(api.GROUP, api.VERSION, api.PLURAL)
async def llmds(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", name): _trimmed(body)}


@_index(api.GROUP, api.VERSION, api.PLURAL)
async def llmds_by_key(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    """LLMDeployments by the build they want: the owners of a shared build Job."""
    return {(namespace or "", repository_key(body.spec)): _trimmed(body)}


@_index("batch", "v1", "jobs", labels=BUILDS)
async def build_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, JobView]:
    return {(namespace or "", labels[api.LABEL_BUILD_KEY]): JobView.from_body(body)}


@_index("", "v1", "pods", labels=BUILDS)
async def build_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, BuildPodView]:
    return {(namespace or "", labels[api.LABEL_BUILD_KEY]): BuildPodView.from_body(body)}


@_index("", "v1", "configmaps", labels=CATALOGUE)
async def cache_catalogues(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, dict[str, CacheEntry]]:
    return {namespace or "": catalogue.entries(body.get("data"))}


@_index("batch", "v1", "jobs", labels=CACHE_GC)
async def cache_gc_jobs(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, JobView]:
    return {namespace or "": JobView.from_body(body)}


@_index("apps", "v1", "deployments", labels=OWNED)
async def llmd_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, DeploymentView]:
    return {owner_key(namespace, labels): DeploymentView.from_body(body)}


@_index("", "v1", "pods", labels=OWNED)
async def llmd_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, PodView]:
    return {owner_key(namespace, labels): PodView.from_body(body)}


@_index("", "v1", "services", labels=OWNED)
async def llmd_services(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str | None]:
    return {owner_key(namespace, labels): _hash(body)}


@_index("policy", "v1", "poddisruptionbudgets", labels=OWNED)
async def llmd_pdbs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str | None]:
    return {owner_key(namespace, labels): _hash(body)}


@_index("monitoring.coreos.com", "v1", "podmonitors", labels=OWNED)
async def llmd_podmonitors(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, str | None]:
    return {owner_key(namespace, labels): _hash(body)}


@_index("inference.networking.k8s.io", "v1", "inferencepools", labels=OWNED)
async def llmd_inferencepools(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, str | None]:
    return {owner_key(namespace, labels): _hash(body)}


class IndexView:
    """controller.reconcile.ClusterView over kopf's indexes, plus what the cache clean-up and the handlers read."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._ix = indexes

    def _first(self, index: str, key: Key | str) -> Any:
        store = self._ix[index].get(key)
        return next(iter(store), None) if store else None

    def llmd(self, key: Key) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._first("llmds", key)
        return found

    def llmd_keys(self, namespace: str) -> list[Key]:
        return [k for k in self._ix["llmds"] if k[0] == namespace]

    def nodes(self) -> Sequence[NodeView]:
        return list(self._ix["gpu_nodes"].get(None, []))

    def deployment(self, namespace: str, name: str) -> DeploymentView | None:
        dep: DeploymentView | None = self._first("llmd_deployments", (namespace, name))
        return dep

    def pods(self, namespace: str, name: str) -> Sequence[PodView]:
        return list(self._ix["llmd_pods"].get((namespace, name), []))

    def child_hash(self, namespace: str, name: str, kind: str) -> str | None:
        if kind == "Deployment":
            dep = self.deployment(namespace, name)
            return dep.applied_hash if dep else None
        index = {
            "Service": "llmd_services",
            "PodDisruptionBudget": "llmd_pdbs",
            "PodMonitor": "llmd_podmonitors",
            "InferencePool": "llmd_inferencepools",
        }
        found: str | None = self._first(index[kind], (namespace, name))
        return found

    def cache(self, namespace: str) -> Mapping[str, CacheEntry]:
        found: Mapping[str, CacheEntry] | None = self._first("cache_catalogues", namespace)
        return found or {}

    def build_jobs(self, namespace: str, key: str) -> Sequence[JobView]:
        return list(self._ix["build_jobs"].get((namespace, key), []))

    def build_pods(self, namespace: str, key: str) -> Sequence[BuildPodView]:
        return list(self._ix["build_pods"].get((namespace, key), []))

    def wanting(self, namespace: str, key: str) -> Sequence[Mapping[str, Any]]:
        return list(self._ix["llmds_by_key"].get((namespace, key), []))

    def has_catalogue(self, namespace: str) -> bool:
        return self._first("cache_catalogues", namespace) is not None

    def wanted_keys(self, namespace: str) -> Collection[str]:
        return {key for (ns, key) in self._ix["llmds_by_key"] if ns == namespace}

    def served_keys(self, namespace: str) -> list[str | None]:
        deployments = self._ix["llmd_deployments"]
        return [d.model_key for (ns, _), store in deployments.items() if ns == namespace for d in store]

    def cache_gc_jobs(self, namespace: str) -> list[JobView]:
        return list(self._ix["cache_gc_jobs"].get(namespace, []))
