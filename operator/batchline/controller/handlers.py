"""kopf wiring: start-up, and thin handlers that queue a reconcile pass (controller.passes) or a cache clean-up.

What a pass reads lives in controller.indexes; what it decides and writes, in controller.reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from batchline import api, kube_config
from batchline.autoscaler import Status
from batchline.autoscaler.actuator import Scaler, query_config
from batchline.autoscaler.demand import HeldDemand
from batchline.build import catalogue, collector
from batchline.config import OperatorConfig
from batchline.controller import indexes
from batchline.controller.indexes import BUILDS, CATALOGUE, OWNED, IndexView, Key, owner_key
from batchline.controller.kube_client import KubeClient
from batchline.controller.passes import Passes
from batchline.controller.reconcile import Reconciler, collect_cache, reconcile
from batchline.controller.resilience import EndlessBackoff
from batchline.controller.writer import Writer
from batchline.report import metrics

CONFIG = OperatorConfig.from_env()
PASS_WORKERS = 16  # reconcile passes at once (see passes.py)
# The kinds Batchline makes and watches (all but nodes and LLMDeployments): see startup().
WATCHED_CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("monitoring.coreos.com", "v1", "podmonitors"),
    ("inference.networking.k8s.io", "v1", "inferencepools"),
    ("", "v1", "configmaps"),
    ("batch", "v1", "jobs"),
)
log = logging.getLogger(__name__)


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
    settings.posting.enabled = False  # Events come from the Writer, on transitions only
    # kopf's `labels=` filters on handlers and indexes act client-side: without a server-side selector the
    # operator would list and watch every pod, Deployment, Service, ConfigMap and Job of the cluster, and
    # hold back all handlers until it had taken in each one. Everything Batchline makes carries managed-by.
    for kind in WATCHED_CHILDREN:
        settings.watching.label_selectors[kind] = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = EndlessBackoff()  # an API-server outage of any length is ridden out
    kube_config.load()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # above PASS_WORKERS
    kube = KubeClient(client.ApiClient(configuration))
    # No retries: a tick that cannot reach Prometheus holds replicas and says so; the next tick tries again.
    prom = PrometheusConnect(url=CONFIG.prometheus_url, disable_ssl=True, retry=Retry(total=0), timeout=10)
    memo.reconciler = Reconciler(
        writer=Writer(kube),
        scaler=Scaler(prom, query_config(CONFIG), on_decision=metrics.record_scale_decision),
        config=dataclasses.replace(
            CONFIG,
            pod_monitors=kube.has_kind("monitoring.coreos.com/v1", "PodMonitor"),
            inference_pools=kube.has_kind("inference.networking.k8s.io/v1", "InferencePool"),
        ),
        demand=HeldDemand(prom),
    )
    memo.indexes = {}  # kopf's live indexes, as the first handler call hands them over (see _trigger)
    memo.passes = Passes[Key](lambda key: _pass(key, memo), PASS_WORKERS)
    memo.stop = threading.Event()
    threading.Thread(target=_refresh_metrics, args=(memo,), daemon=True).start()
    memo.metrics_server = metrics.start_exporter()


def _refresh_metrics(memo: kopf.Memo) -> None:
    """One set of Prometheus queries per tick, for all LLMDeployments at once. Logs when the metrics' state
    changes, not every tick (ScalingActive on each object says it all along). A model with requests held for
    it at the gateway gets a pass at once: at zero replicas, that is what starts one."""
    scaler, demand, stop = memo.reconciler.scaler, memo.reconciler.demand, memo.stop
    previous = Status.OK
    while not stop.is_set():
        result = scaler.refresh()
        demand.refresh()
        view = IndexView(memo.indexes) if memo.indexes else None
        for namespace, name in demand.held() if view else ():
            if view is not None and view.llmd((namespace, name)) is not None:
                memo.passes.trigger((namespace, name))
        if result.status is not previous:
            if result.status is Status.OK:
                log.info("autoscaler metrics are back")
            else:
                log.warning("autoscaler metrics: %s", result.detail)
            previous = result.status
        stop.wait(CONFIG.autoscale_tick_seconds)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    memo.passes.shutdown()
    if memo.metrics_server is not None:
        memo.metrics_server.shutdown()


def _pass(key: Key, memo: kopf.Memo) -> None:
    """One reconcile pass, on the newest body: the triggers of a queued pass are folded into it."""
    view = IndexView(memo.indexes)
    llmd = view.llmd(key)
    if llmd is None or llmd["metadata"].get("deletionTimestamp"):
        return  # children go with their owner through garbage collection
    with metrics.reconciling(*key) as run:
        run.writes = reconcile(llmd, view, memo.reconciler).writes


def _trigger(key: Key, memo: kopf.Memo, kwargs: Mapping[str, Any]) -> None:
    if not memo.indexes:  # the same live objects in every call
        memo.indexes.update({name: kwargs[name] for name in indexes.INDEX_NAMES})
    memo.passes.trigger(key)


def _trigger_wanting(
    namespace: str | None, key: str, memo: kopf.Memo, kwargs: Mapping[str, Any], unbuilt_only: bool = False
) -> None:
    """A pass for every LLMDeployment that wants build `key` (only those not yet Ready on it, if asked)."""
    for llmd in list(kwargs["llmds_by_key"].get((namespace or "", key), [])):
        if not unbuilt_only or (llmd["status"].get("build") or {}).get("phase") != "Ready":
            meta = llmd["metadata"]
            _trigger((meta["namespace"], meta["name"]), memo, kwargs)


# The handlers below only queue a pass (see passes.py): async, so kopf runs them without a thread hop.
@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def llmd_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if type == "DELETED":
        memo.reconciler.forget(body)
        memo.reconciler.scaler.forget(body.metadata.uid)
        metrics.forget(body.metadata.namespace or "", body.metadata.name or "")
    else:
        _trigger((body.metadata.namespace or "", body.metadata.name or ""), memo, kwargs)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def deployment_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger(owner_key(namespace, labels), memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _trigger(owner_key(namespace, labels), memo, kwargs)


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
    model cache. One timer per namespace, on the cache catalogue every namespace with an LLMDeployment has, not
    one per LLMDeployment: kopf puts a finalizer on each object with a timer, which costs a write per object and
    leaves deletions hanging while no operator runs. kopf stops the timer while peering has this operator
    paused, so a standby neither resyncs nor scales."""
    ns = namespace or ""
    view = IndexView(kwargs)
    for key in view.llmd_keys(ns):
        _trigger(key, memo, kwargs)
    # What is in use is read here, on the event loop, where no watch event changes the indexes mid-read; the
    # writes run on a thread.
    in_use = collector.in_use(view.wanted_keys(ns), view.served_keys(ns))
    cache = catalogue.entries(body.get("data"))
    await asyncio.to_thread(collect_cache, ns, cache, in_use, view.cache_gc_jobs(ns), memo.reconciler)


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)
