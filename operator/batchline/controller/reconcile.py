"""One level-based reconcile pass for an LLMDeployment: read, build desired state, apply, write status.

Everything it reads comes from the operator's in-memory indexes (see handlers.py), so an idle
pass costs no API call of any kind, and writes happen only where desired and observed differ.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client

from batchline import api
from batchline.autoscaler.actuator import ScaleView
from batchline.build import state as build_state
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.build.state import BuildState
from batchline.config import OperatorConfig
from batchline.controller.writer import Applier, applied_hash, with_hash
from batchline.observed import BuildPodView, DeploymentView, JobView, NodeView, Observed, PodView
from batchline.report import feasibility, metrics
from batchline.report.status import Event, compute_status, status_changed, transition_events
from batchline.resources import model_cache
from batchline.resources import serving as manifests
from batchline.resources.build_job import build_job

log = logging.getLogger(__name__)

INDEX_LAG = 60.0  # seconds to trust our own recent apply over an index that has not caught up


class ClusterView(Protocol):
    """Read access to what the operator has observed, keyed by the owning LLMDeployment."""

    def nodes(self) -> Sequence[NodeView]: ...
    def deployment(self, namespace: str, name: str) -> DeploymentView | None: ...
    def pods(self, namespace: str, name: str) -> Sequence[PodView]: ...
    def child_hash(self, namespace: str, name: str, kind: str) -> str | None: ...
    def cache(self, namespace: str) -> Mapping[str, CacheEntry]: ...
    def build_jobs(self, namespace: str, key: str) -> Sequence[JobView]: ...
    def build_pods(self, namespace: str, key: str) -> Sequence[BuildPodView]: ...
    def wanting(self, namespace: str, key: str) -> Sequence[Mapping[str, Any]]: ...
    def has_catalogue(self, namespace: str) -> bool: ...


class StatusPatcher(Protocol):
    """What writes an LLMDeployment's status: Applier, or CustomObjectsApi."""

    def patch_namespaced_custom_object_status(
        self, group: str, version: str, namespace: str, plural: str, name: str, body: Mapping[str, Any]
    ) -> Any: ...


@dataclass
class Writers:
    applier: Applier
    custom: StatusPatcher
    post_event: Callable[[Mapping[str, Any], Event], None]
    # (resourceVersion, status) of the last status write per object uid: a pass that starts from a
    # body fetched before that write landed must neither write it again nor post its Events twice.
    written_status: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # (hash, monotonic time) of children applied recently, per (uid, kind): the watch that updates the
    # index lags the write by a moment, and a pass in that moment must not apply the same thing again.
    applied: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    core: client.CoreV1Api | None = None
    # The hash-stamped children of the last pass per object uid, with what they were built from: most passes
    # (a child's or the namespace tick's) build the same children again, and stamping hashes them all.
    children: dict[str, tuple[tuple[Any, ...], list[manifests.Manifest]]] = field(default_factory=dict)

    def desired_children(
        self,
        llmd: Mapping[str, Any],
        replicas: int,
        config: OperatorConfig,
        with_pod_monitor: bool,
        serving_key: str | None,
    ) -> list[manifests.Manifest]:
        """manifests.children(), each stamped with its hash (see apply.with_hash); the children are a
        function of the object's identity and spec (so of its generation) and of these arguments."""
        meta = llmd["metadata"]
        inputs = (meta["name"], meta["namespace"], meta.get("generation"), replicas, config, with_pod_monitor,
                  serving_key)
        cached = self.children.get(meta["uid"])
        if cached is not None and cached[0] == inputs:
            return cached[1]
        stamped = [with_hash(c) for c in manifests.children(llmd, replicas, config, with_pod_monitor, serving_key)]
        self.children[meta["uid"]] = (inputs, stamped)
        return stamped

    def record_build(self, namespace: str, entry: CacheEntry, config: OperatorConfig) -> None:
        """Adds a finished build to the namespace's cache catalogue (merging: other keys stay)."""
        assert self.core is not None
        patch = {"data": {entry.key: entry.to_data()}}
        try:
            self.core.patch_namespaced_config_map(config.model_cache_pvc, namespace, patch)
        except client.ApiException as err:
            if err.status != 404:
                raise
            # Rare: each pass creates the catalogue first (reconcile._ensure_catalogue); deleted since.
            self.create_catalogue(namespace, config)
            self.core.patch_namespaced_config_map(config.model_cache_pvc, namespace, patch)

    def create_catalogue(self, namespace: str, config: OperatorConfig) -> None:
        """Creates the namespace's empty cache catalogue; one that exists already is left as it is."""
        assert self.core is not None
        try:
            self.core.create_namespaced_config_map(namespace, model_cache.catalogue(namespace, config))  # type: ignore[arg-type]
        except client.ApiException as err:
            if err.status != 409:
                raise

    def observed_status(self, llmd: Mapping[str, Any]) -> dict[str, Any]:
        """The status as of the newest of the body and our own last write."""
        meta = llmd["metadata"]
        body_status: dict[str, Any] = llmd.get("status") or {}
        written = self.written_status.get(meta["uid"])
        if written and _revision(meta) < written[0]:
            return written[1]
        return body_status

    def recently_applied(self, uid: str, manifest: manifests.Manifest) -> bool:
        kind = manifest["kind"] if manifest["kind"] != "Job" else f"Job/{manifest['metadata']['name']}"
        record = self.applied.get((uid, kind))
        return record is not None and record[0] == applied_hash(manifest) and time.monotonic() - record[1] < INDEX_LAG

    def forget(self, uid: str) -> None:
        self.written_status.pop(uid, None)
        self.children.pop(uid, None)
        for key in [k for k in self.applied if k[0] == uid]:
            del self.applied[key]


def _revision(meta: Mapping[str, Any]) -> int:
    # The API server's resourceVersion is an etcd revision; only our own writes are compared to it.
    try:
        return int(meta.get("resourceVersion", 0))
    except ValueError:
        return 0


def desired_replicas(spec: Mapping[str, Any], deployment: DeploymentView | None, scale: ScaleView | None) -> int:
    """The autoscaler's choice; before its first decision, keep what runs. Always within [min, max]."""
    scaling = spec["autoscaling"]
    low, high = scaling["minReplicas"], scaling["maxReplicas"]
    if not scaling["enabled"]:
        return int(low)
    wanted = scale.replicas if scale else deployment.spec_replicas if deployment else low
    return int(min(max(wanted, low), high))


def stale_children(desired: Sequence[manifests.Manifest], view: ClusterView) -> list[manifests.Manifest]:
    """The stamped children (Writers.desired_children) whose live applied-hash differs from theirs, or
    that do not exist."""
    out = []
    for child in desired:
        meta = child["metadata"]
        if view.child_hash(meta["namespace"], meta["name"], child["kind"]) != applied_hash(child):
            out.append(child)
    return out


def _ensure_catalogue(namespace: str, view: ClusterView, writers: Writers, config: OperatorConfig) -> int:
    """Creates the namespace's cache catalogue if it has none; returns the writes made. Every namespace with an
    LLMDeployment has one: builds are recorded in it, and its timer resyncs the namespace (handlers.namespace_tick)."""
    record = writers.applied.get((namespace, "Catalogue"))
    if view.has_catalogue(namespace) or (record is not None and time.monotonic() - record[1] < INDEX_LAG):
        return 0
    writers.create_catalogue(namespace, config)
    writers.applied[(namespace, "Catalogue")] = ("", time.monotonic())
    return 1


def _rollout_unobserved(deployment: DeploymentView | None, writers: Writers, uid: str) -> bool:
    """A Deployment applied moments ago that the controller-manager has not observed yet."""
    record = writers.applied.get((uid, "Deployment"))
    return (
        deployment is not None
        and deployment.observed_generation < deployment.generation
        and record is not None
        and time.monotonic() - record[1] < INDEX_LAG
    )


def _build(
    llmd: Mapping[str, Any], view: ClusterView, writers: Writers, config: OperatorConfig, act: bool
) -> tuple[BuildState, CacheEntry | None, int]:
    """The build of the spec's key: its state, its catalogue entry, and the writes made to move it on."""
    meta, spec = llmd["metadata"], llmd["spec"]
    namespace, key = meta["namespace"], repository_key(spec)
    entry = view.cache(namespace).get(key)
    jobs = view.build_jobs(namespace, key)
    pods = view.build_pods(namespace, key)
    state = build_state.decide(key, entry, jobs, pods, time.time(), config.build_retry_seconds)
    if not act:
        return state, entry, 0
    writes = 0
    if state.record is not None and not writers.recently_applied(namespace, _record_marker(state.record)):
        writers.record_build(namespace, state.record, config)
        writers.applied[(namespace, f"Build/{key}")] = (applied_hash(_record_marker(state.record)), time.monotonic())
        writes += 1
        metrics.build_finished(namespace, meta["name"], succeeded=True, seconds=state.seconds or 0.0)
        log.info("recorded build %s in the cache catalogue of %s", key, namespace)
    attempt = state.start_attempt or (state.attempt if state.phase == build_state.BUILDING else None)
    if attempt is not None:
        job = with_hash(build_job(view.wanting(namespace, key) or [llmd], spec, key, attempt, config))
        live = next((j.applied_hash for j in jobs if j.name == job["metadata"]["name"]), None)
        if live != applied_hash(job) and not writers.recently_applied(namespace, job):
            writers.applier.apply(job)
            writers.applied[(namespace, f"Job/{job['metadata']['name']}")] = (applied_hash(job), time.monotonic())
            writes += 1
            if live is None:
                metrics.build_started(namespace, meta["name"])
            log.info("applied build Job %s/%s", namespace, job["metadata"]["name"])
    if state.delete_job is not None and writers.applier.delete("batch/v1", "Job", namespace, state.delete_job):
        writes += 1
    return state, entry, writes


def _record_marker(entry: CacheEntry) -> manifests.Manifest:
    return with_hash({"kind": f"Build/{entry.key}", "metadata": {"name": entry.key}, "data": entry.to_data()})


def merge_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` as a JSON merge patch over `current`: fields that `new` drops are set to null, or they would stay."""
    patch: dict[str, Any] = dict(new)
    for key, old in current.items():
        if key not in new:
            patch[key] = None
        elif isinstance(old, Mapping) and isinstance(new[key], Mapping):
            patch[key] = merge_patch(old, new[key])
    return patch


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(
    llmd: Mapping[str, Any],
    view: ClusterView,
    writers: Writers,
    config: OperatorConfig,
    with_pod_monitor: bool,
    scale: ScaleView | None = None,
) -> int:
    """Returns the number of write calls made (0 when the cluster already matches)."""
    meta = llmd["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = llmd["spec"]
    writes = _ensure_catalogue(namespace, view, writers, config)
    nodes = view.nodes()
    problems = feasibility.check(spec, nodes)
    deployment = view.deployment(namespace, name)
    desired = desired_replicas(spec, deployment, scale)
    blocked = any(p.blocking for p in problems)
    build, entry, build_writes = _build(llmd, view, writers, config, act=not blocked)
    writes += build_writes
    # A new build replaces the served one only when it is ready: until then the old pods keep serving.
    serving_key = build.key if build.phase == build_state.READY else deployment.model_key if deployment else None
    deployment_written = unseen = False
    if not blocked:
        kids = writers.desired_children(llmd, desired, config, with_pod_monitor, serving_key)
        applied = []
        for child in stale_children(kids, view):
            if writers.recently_applied(meta["uid"], child):
                unseen = True  # applied, but its watch event has not reached the index yet
                continue
            writers.applier.apply(child)
            writers.applied[(meta["uid"], child["kind"])] = (applied_hash(child), time.monotonic())
            writes += 1
            deployment_written |= child["kind"] == "Deployment"
            applied.append(child["kind"])
        if applied:
            log.info("applied %s of %s/%s", ", ".join(applied), namespace, name)
    if deployment_written or unseen or _rollout_unobserved(deployment, writers, meta["uid"]):
        # The Deployment's watch events start the next pass, which writes the status once the
        # controller-manager has seen the new generation (the namespace tick covers it being down).
        return writes
    observed = Observed(deployment=deployment, pods=tuple(view.pods(namespace, name)), nodes=tuple(nodes))
    current = writers.observed_status(llmd)
    new = compute_status(
        {**llmd, "status": current}, observed, problems, desired, now_rfc3339(), scale, build.status(entry), serving_key
    )
    metrics.record_replicas(namespace, name, desired, new["replicas"], new["readyReplicas"])
    if new["build"]["phase"] == build_state.FAILED and (current.get("build") or {}).get("phase") != build_state.FAILED:
        metrics.build_finished(namespace, name, succeeded=False, seconds=build.seconds or 0.0)
    if status_changed(current, new):
        result: dict[str, Any] = writers.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": merge_patch(current, new)}
        )
        writers.written_status[meta["uid"]] = (_revision(result["metadata"]), new)
        writes += 1
        log.info(
            "status of %s/%s: %s",
            namespace,
            name,
            [(c["type"], c["reason"]) for c in new["conditions"] if c not in current.get("conditions", [])],
        )
        for event in transition_events(current.get("conditions") or [], new["conditions"]):
            writers.post_event(llmd, event)
    return writes
