"""kopf wiring: indexes that mirror the cluster in memory, and thin handlers that call reconcile()."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes import client, config

from batchline import api
from batchline.apply import Applier
from batchline.config import OperatorConfig
from batchline.events import EventPoster
from batchline.observed import DeploymentView, NodeView, PodView
from batchline.reconcile import Writers, reconcile

CONFIG = OperatorConfig.from_env()
OWNED = {api.LABEL_LLMD: kopf.PRESENT}
Key = tuple[str, str]


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key:
    return (namespace or "", labels[api.LABEL_LLMD])


def _hash(body: kopf.Body) -> str | None:
    return body.metadata.annotations.get(api.ANNOTATION_APPLIED_HASH)


@kopf.index("", "v1", "nodes")
def gpu_nodes(body: kopf.Body, **_: Any) -> dict[None, NodeView]:
    return {None: NodeView.from_body(body)}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def llmds(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", name): dict(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED)
def llmd_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, DeploymentView]:
    return {_owner_key(namespace, labels): DeploymentView.from_body(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
def llmd_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, PodView]:
    return {_owner_key(namespace, labels): PodView.from_body(body)}


@kopf.index("", "v1", "services", labels=OWNED)
def llmd_services(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=OWNED)
def llmd_pdbs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


@kopf.index("monitoring.coreos.com", "v1", "podmonitors", labels=OWNED)
def llmd_podmonitors(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


class IndexView:
    """ClusterView over kopf's indexes (see reconcile.ClusterView)."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._ix = indexes

    def _first(self, index: str, key: Key) -> Any:
        store = self._ix[index].get(key)
        return next(iter(store), None) if store else None

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
        }
        found: str | None = self._first(index[kind], (namespace, name))
        return found


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.execution.max_workers = 8
    settings.posting.enabled = False  # Events come from events.EventPoster, on transitions only
    settings.watching.server_timeout = 300
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api_client = client.ApiClient()
    applier = Applier(api_client)
    memo.writers = Writers(applier, client.CustomObjectsApi(api_client), EventPoster(client.CoreV1Api(api_client)))
    memo.with_pod_monitor = applier.has_kind("monitoring.coreos.com/v1", "PodMonitor")
    memo.locks = {}
    memo.locks_guard = threading.Lock()


def _lock(memo: kopf.Memo, key: Key) -> threading.Lock:
    with memo.locks_guard:
        lock: threading.Lock = memo.locks.setdefault(key, threading.Lock())
        return lock


def _run(llmd: Mapping[str, Any], memo: kopf.Memo, indexes: Mapping[str, Any]) -> None:
    meta = llmd["metadata"]
    if meta.get("deletionTimestamp"):
        return  # children go with their owner through garbage collection
    with _lock(memo, (meta["namespace"], meta["name"])):
        reconcile(llmd, IndexView(indexes), memo.writers, CONFIG, memo.with_pod_monitor)


INDEX_NAMES = (
    "gpu_nodes",
    "llmds",
    "llmd_deployments",
    "llmd_pods",
    "llmd_services",
    "llmd_pdbs",
    "llmd_podmonitors",
)


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {name: kwargs[name] for name in INDEX_NAMES}


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def llmd_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        memo.writers.forget(body.metadata.uid)
    else:
        _run(dict(body), memo, _indexes(kwargs))


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=CONFIG.resync_seconds)
def resync(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _run(dict(body), memo, _indexes(kwargs))


def _owner_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, kwargs: Mapping[str, Any]
) -> None:
    key = _owner_key(namespace, labels)
    store = kwargs["llmds"].get(key)
    owner = next(iter(store), None) if store else None
    if owner is not None:
        _run(owner, memo, _indexes(kwargs))


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
def deployment_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _owner_changed(namespace, labels, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=OWNED)
def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _owner_changed(namespace, labels, memo, kwargs)


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
