"""kopf wiring: indexes that mirror the cluster in memory, and thin handlers that call reconcile()."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from batchline import api
from batchline.autoscaler import Status
from batchline.autoscaler.actuator import Scaler, ScaleView, query_config
from batchline.build import catalogue as model_cache
from batchline.build import collector as cache_collector
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.config import OperatorConfig
from batchline.controller.passes import Passes
from batchline.controller.reconcile import Writers, reconcile
from batchline.controller.writer import Applier
from batchline.observed import BuildPodView, DeploymentView, JobView, NodeView, PodView
from batchline.report import metrics
from batchline.report.status import Event
from batchline.resources.event import event_body
from batchline.timestamps import rfc3339

CONFIG = OperatorConfig.from_env()
PASS_WORKERS = 16  # reconcile passes at once (see passes.py)
OWNED = {api.LABEL_LLMD: kopf.PRESENT}
BUILDS = {api.LABEL_BUILD_KEY: kopf.PRESENT}
CATALOGUE = {api.LABEL_CACHE: "catalogue"}
CACHE_GC = {api.LABEL_CACHE: "gc"}
Key = tuple[str, str]
# The kinds Batchline makes and watches (all but nodes and LLMDeployments): see startup().
WATCHED_CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("monitoring.coreos.com", "v1", "podmonitors"),
    ("", "v1", "configmaps"),
    ("batch", "v1", "jobs"),
)


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key:
    return (namespace or "", labels[api.LABEL_LLMD])


def _hash(body: kopf.Body) -> str | None:
    return body.metadata.annotations.get(api.ANNOTATION_APPLIED_HASH)


# The indexes only compact a body, so they are async: kopf runs them on its event loop, with no hop to a
# worker thread for each watch event.
@kopf.index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[None, NodeView]:
    return {None: NodeView.from_body(body)}


def _trimmed(body: kopf.Body) -> dict[str, Any]:
    """What reconcile reads of an LLMDeployment: no managedFields or annotations held per object."""
    keep = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    meta = {k: body.metadata[k] for k in keep if k in body.metadata}
    return {"metadata": meta, "spec": dict(body.spec), "status": dict(body.status)}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def llmds(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace or "", name): _trimmed(body)}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
async def llmds_by_key(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    """LLMDeployments by the build they want: the owners of a shared build Job."""
    return {(namespace or "", repository_key(body.spec)): _trimmed(body)}


@kopf.index("batch", "v1", "jobs", labels=BUILDS)
async def build_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, JobView]:
    return {(namespace or "", labels[api.LABEL_BUILD_KEY]): JobView.from_body(body)}


@kopf.index("", "v1", "pods", labels=BUILDS)
async def build_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, BuildPodView]:
    return {(namespace or "", labels[api.LABEL_BUILD_KEY]): BuildPodView.from_body(body)}


@kopf.index("", "v1", "configmaps", labels=CATALOGUE)
async def cache_catalogues(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, dict[str, CacheEntry]]:
    return {namespace or "": model_cache.entries(body.get("data"))}


@kopf.index("batch", "v1", "jobs", labels=CACHE_GC)
async def cache_gc_jobs(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, JobView]:
    return {namespace or "": JobView.from_body(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def llmd_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, DeploymentView]:
    return {_owner_key(namespace, labels): DeploymentView.from_body(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
async def llmd_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, PodView]:
    return {_owner_key(namespace, labels): PodView.from_body(body)}


@kopf.index("", "v1", "services", labels=OWNED)
async def llmd_services(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


@kopf.index("policy", "v1", "poddisruptionbudgets", labels=OWNED)
async def llmd_pdbs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


@kopf.index("monitoring.coreos.com", "v1", "podmonitors", labels=OWNED)
async def llmd_podmonitors(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, str | None]:
    return {_owner_key(namespace, labels): _hash(body)}


class IndexView:
    """ClusterView over kopf's indexes (see reconcile.ClusterView)."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._ix = indexes

    def _first(self, index: str, key: Key | str) -> Any:
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


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds a diff base (a deep copy of the body, less status) on every watch event of every watched
    kind, for change-detecting handlers (on.create/update/resume/field). Batchline has none: its handlers are
    on.event, timers and indexes, which never see a diff. So the diff base is empty, and nothing is copied."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=api.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.posting.enabled = False  # Events come from events.EventPoster, on transitions only
    # kopf's `labels=` filters on handlers and indexes act client-side: without a server-side selector the
    # operator would list and watch every pod, Deployment, Service, ConfigMap and Job of the cluster, and
    # hold back all handlers until it had taken in each one. Everything Batchline makes carries managed-by.
    for kind in WATCHED_CHILDREN:
        settings.watching.label_selectors[kind] = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    settings.watching.server_timeout = 300
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # above PASS_WORKERS
    api_client = client.ApiClient(configuration)
    applier = Applier(api_client)
    core = client.CoreV1Api(api_client)
    memo.writers = Writers(
        applier, applier, lambda llmd, event: applier.create(event_body(llmd, event, rfc3339())), core=core
    )
    memo.with_pod_monitor = applier.has_kind("monitoring.coreos.com/v1", "PodMonitor")
    memo.indexes = {}  # kopf's live indexes, as the first handler call hands them over (see _trigger)
    memo.passes = Passes[Key](lambda key: _pass(key, memo), PASS_WORKERS)
    # No retries: a tick that cannot reach Prometheus holds replicas and says so; the next tick tries again.
    prom = PrometheusConnect(url=CONFIG.prometheus_url, disable_ssl=True, retry=Retry(total=0), timeout=10)
    memo.scaler = Scaler(prom, query_config(CONFIG))
    memo.stop = threading.Event()
    threading.Thread(target=_refresh_metrics, args=(memo.scaler, memo.stop), name="metrics", daemon=True).start()
    memo.metrics_server = metrics.start_exporter()


def _refresh_metrics(scaler: Scaler, stop: threading.Event) -> None:
    """One set of Prometheus queries per tick, for all LLMDeployments at once."""
    while not stop.is_set():
        result = scaler.refresh()
        if result.status is not Status.OK:
            logging.getLogger(__name__).warning("autoscaler metrics: %s", result.detail)
        stop.wait(CONFIG.autoscale_tick_seconds)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    memo.passes.shutdown()
    if memo.metrics_server is not None:
        memo.metrics_server.shutdown()


def _scale(llmd: Mapping[str, Any], memo: kopf.Memo, view: IndexView) -> ScaleView:
    """The autoscaler's decision on the newest metrics; posts one Event when it changes replicas."""
    meta = llmd["metadata"]
    deployment = view.deployment(meta["namespace"], meta["name"])
    pods = view.pods(meta["namespace"], meta["name"])
    current = deployment.spec_replicas if deployment else llmd["spec"]["autoscaling"]["minReplicas"]
    ready = deployment.ready_replicas if deployment else 0
    scale: ScaleView = memo.scaler.tick(llmd, current, ready, sum(1 for p in pods if p.unschedulable_message))
    if deployment is not None and scale.replicas != current:
        reason = "ScaledUp" if scale.replicas > current else "ScaledDown"
        memo.writers.post_event(
            llmd, Event("Normal", reason, f"{current} -> {scale.replicas} replicas: {scale.reason}")
        )
    return scale


def _pass(key: Key, memo: kopf.Memo) -> None:
    """One reconcile pass, on the newest body: the triggers of a queued pass are folded into it."""
    store = memo.indexes["llmds"].get(key)
    llmd = next(iter(store), None) if store else None
    if llmd is None or llmd["metadata"].get("deletionTimestamp"):
        return  # children go with their owner through garbage collection
    view = IndexView(memo.indexes)
    with metrics.reconciling(*key) as run:
        run.writes = reconcile(llmd, view, memo.writers, CONFIG, memo.with_pod_monitor, _scale(llmd, memo, view))


INDEX_NAMES = (
    "gpu_nodes",
    "llmds",
    "llmds_by_key",
    "build_jobs",
    "build_pods",
    "cache_catalogues",
    "llmd_deployments",
    "llmd_pods",
    "llmd_services",
    "llmd_pdbs",
    "llmd_podmonitors",
)


def _trigger(key: Key, memo: kopf.Memo, kwargs: Mapping[str, Any]) -> None:
    if not memo.indexes:  # the same live objects in every call
        memo.indexes.update({name: kwargs[name] for name in INDEX_NAMES})
    memo.passes.trigger(key)


# The handlers below only queue a pass (see passes.py): async, so kopf runs them without a thread hop.
@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def llmd_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        memo.writers.forget(body.metadata.uid)
        memo.scaler.forget(body.metadata.uid)
        metrics.forget(body.metadata.namespace or "", body.metadata.name or "")
    else:
        _trigger((body.metadata.namespace or "", body.metadata.name or ""), memo, kwargs)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def deployment_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger(_owner_key(namespace, labels), memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger(_owner_key(namespace, labels), memo, kwargs)


# Timers start a moment late: a timer that kopf spawns in the moment it pauses a standby (kopf #1266)
# is stopped before it can fire. Only a moment: the first autoscaler tick sets ScalingActive.
FIRST_TICK_DELAY = 2.0


@kopf.timer(
    "",
    "v1",
    "configmaps",
    labels=CATALOGUE,
    interval=min(CONFIG.resync_seconds, CONFIG.autoscale_tick_seconds),
    initial_delay=FIRST_TICK_DELAY,
)
async def namespace_tick(namespace: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A namespace's resync and autoscaler tick: a pass for each of its LLMDeployments, then a clean-up of its
    model cache. One timer per namespace, on the cache catalogue every namespace with an LLMDeployment has (see
    reconcile._ensure_catalogue), not one per LLMDeployment: kopf puts a finalizer on each object with a timer,
    which costs a write per object and leaves deletions hanging while no operator runs. kopf stops the timer
    while peering has this operator paused, so a standby neither resyncs nor scales."""
    ns = namespace or ""
    for key in [k for k in kwargs["llmds"] if k[0] == ns]:
        _trigger(key, memo, kwargs)
    # What is in use is read here, on the event loop, where no watch event changes the indexes mid-read; the
    # writes run on a thread.
    wanted = {key for (n, key) in kwargs["llmds_by_key"] if n == ns}
    served = {d.model_key for (n, _), store in kwargs["llmd_deployments"].items() if n == ns for d in store}
    jobs = list(kwargs["cache_gc_jobs"].get(ns, []))
    cache = model_cache.entries(body.get("data"))
    writers = memo.writers
    in_use = wanted | {k for k in served if k}
    await asyncio.to_thread(cache_collector.collect, ns, cache, in_use, jobs, writers.applier, writers.core, CONFIG)


def _llmd_key(llmd: Mapping[str, Any]) -> Key:
    return (llmd["metadata"]["namespace"], llmd["metadata"]["name"])


def _trigger_wanting(
    namespace: str | None, key: str, memo: kopf.Memo, kwargs: Mapping[str, Any], unbuilt_only: bool = False
) -> None:
    """A pass for every LLMDeployment that wants build `key` (only those not yet Ready on it, if asked)."""
    for llmd in list(kwargs["llmds_by_key"].get((namespace or "", key), [])):
        if not unbuilt_only or (llmd["status"].get("build") or {}).get("phase") != "Ready":
            _trigger(_llmd_key(llmd), memo, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=BUILDS)
async def build_job_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger_wanting(namespace, labels[api.LABEL_BUILD_KEY], memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=BUILDS)
async def build_pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger_wanting(namespace, labels[api.LABEL_BUILD_KEY], memo, kwargs)


@kopf.on.event("", "v1", "configmaps", labels=CATALOGUE)
async def catalogue_changed(namespace: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A build was recorded: LLMDeployments that wait for it roll it out."""
    # Only those not yet Ready: the catalogue changes with every build recorded in the namespace.
    for key in body.get("data") or {}:
        _trigger_wanting(namespace, key, memo, kwargs, unbuilt_only=True)


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
