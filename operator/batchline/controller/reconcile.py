"""One level-based reconcile pass for an LLMDeployment: read, decide, write, report.

Everything it reads comes from the operator's watch caches (controller.indexes), so an idle pass costs
no API call; desired state comes from pure functions (resources, build.state, report.status), and every
write goes through the one Writer, which skips what is unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchline.autoscaler import demand
from batchline.autoscaler.actuator import ScaleView
from batchline.build import collector
from batchline.build import state as build_state
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.conditions import EventReason
from batchline.config import OperatorConfig
from batchline.controller.writer import Applied, Writer, with_hash
from batchline.observed import BuildPodView, DeploymentView, JobView, NodeView, Observed, PodView
from batchline.report import feasibility, metrics
from batchline.report.status import compute_status, status_changed, transition_events
from batchline.resources import model_cache, serving
from batchline.resources.build_job import build_job
from batchline.resources.common import Manifest
from batchline.resources.event import Event
from batchline.timestamps import rfc3339

log = logging.getLogger(__name__)


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


class Autoscaler(Protocol):
    """autoscaler.actuator.Scaler: the decision on the newest metrics (None: none made yet)."""

    def tick(self, llmd: Mapping[str, Any], current: int, ready: int, unschedulable: int) -> ScaleView | None: ...


class Demand(Protocol):
    """autoscaler.demand.HeldDemand: requests the gateway holds for a model with no ready replica."""

    def waiting(self, namespace: str, name: str) -> float: ...


class NoGateway:
    """Where no gateway runs, nothing is held and nothing wakes a model at zero."""

    def waiting(self, namespace: str, name: str) -> float:
        return 0.0


class StampedChildren:
    """resources.serving.children() stamped with their hashes, kept per object: most passes (a pod's, the
    namespace tick's) build the same children again, and stamping hashes each of them."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[Any, ...], list[Manifest]]] = {}
        self._lock = threading.Lock()

    def get(self, llmd: Mapping[str, Any], replicas: int, config: OperatorConfig, serving_key: str | None) -> list[
        Manifest
    ]:
        # The children are a function of the object's identity and spec (so of its generation) and of these.
        meta = llmd["metadata"]
        inputs = (meta["name"], meta["namespace"], meta.get("generation"), replicas, config, serving_key)
        with self._lock:
            cached = self._cache.get(meta["uid"])
        if cached is not None and cached[0] == inputs:
            return cached[1]
        stamped = [with_hash(c) for c in serving.children(llmd, replicas, config, serving_key)]
        with self._lock:
            self._cache[meta["uid"]] = (inputs, stamped)
        return stamped

    def forget(self, uid: str) -> None:
        with self._lock:
            self._cache.pop(uid, None)


@dataclass
class Reconciler:
    """What a pass works with besides the object and the cluster view: long-lived, shared by all passes."""

    writer: Writer
    scaler: Autoscaler
    config: OperatorConfig
    demand: Demand = field(default_factory=NoGateway)
    children: StampedChildren = field(default_factory=StampedChildren)
    # When a model at zero last had requests held for it, per uid (see autoscaler.demand.wake).
    woken: dict[str, float] = field(default_factory=dict)

    def forget(self, llmd: Mapping[str, Any]) -> None:
        """Drops what is remembered of a deleted LLMDeployment."""
        meta = llmd["metadata"]
        self.children.forget(meta["uid"])
        self.woken.pop(meta["uid"], None)
        kinds = ("Deployment", "Service", "PodDisruptionBudget", "PodMonitor", "InferencePool")
        self.writer.forget(meta["uid"], [(kind, meta["namespace"], meta["name"]) for kind in kinds])


@dataclass
class PassResult:
    """What one pass did: writes (applies, deletes, catalogue and status writes), Events posted, and the
    replica change it applied, if any."""

    writes: int = 0
    events: int = 0
    scaled: tuple[int, int] | None = None


def desired_replicas(spec: Mapping[str, Any], deployment: DeploymentView | None, scale: ScaleView | None) -> int:
    """The autoscaler's choice; before its first decision, keep what runs. Always within [min, max]."""
    scaling = spec["autoscaling"]
    low, high = scaling["minReplicas"], scaling["maxReplicas"]
    if not scaling["enabled"]:
        return int(low)
    wanted = scale.replicas if scale else deployment.spec_replicas if deployment else low
    return int(min(max(wanted, low), high))


def _decide_scale(
    llmd: Mapping[str, Any], deployment: DeploymentView | None, pods: Sequence[PodView], scaler: Autoscaler
) -> ScaleView | None:
    current = deployment.spec_replicas if deployment else llmd["spec"]["autoscaling"]["minReplicas"]
    ready = deployment.ready_replicas if deployment else 0
    return scaler.tick(llmd, current, ready, sum(1 for p in pods if p.unschedulable_message))


def _build(
    llmd: Mapping[str, Any], view: ClusterView, ctx: Reconciler, act: bool, result: PassResult
) -> build_state.BuildState:
    """The build of the spec's key; when `act`, records a finished build and starts or replaces its Job."""
    meta, spec, config, writer = llmd["metadata"], llmd["spec"], ctx.config, ctx.writer
    namespace, key = meta["namespace"], repository_key(spec)
    jobs = view.build_jobs(namespace, key)
    state = build_state.decide(
        key, view.cache(namespace).get(key), jobs, view.build_pods(namespace, key), time.time(),
        config.build_retry_seconds, config.build_blocked_seconds,
    )  # fmt: skip
    if not act:
        return state
    if state.record is not None and writer.patch_data(
        model_cache.catalogue(namespace, config), {key: state.record.to_data()}
    ):
        result.writes += 1
        metrics.build_finished(namespace, meta["name"], succeeded=True, seconds=state.seconds or 0.0)
        log.info("recorded build %s in the cache catalogue of %s", key, namespace)
    attempt = state.start_attempt or (state.attempt if state.phase == build_state.BUILDING else None)
    if attempt is not None:
        job = with_hash(build_job(view.wanting(namespace, key) or [llmd], spec, key, attempt, config))
        live = next((j for j in jobs if j.name == job["metadata"]["name"]), None)
        if writer.apply(job, live.applied_hash if live else None) is Applied.WRITTEN:
            result.writes += 1
            if live is None:
                metrics.build_started(namespace, meta["name"])
            log.info("applied build Job %s/%s", namespace, job["metadata"]["name"])
    if state.delete_job is not None and writer.delete("batch/v1", "Job", namespace, state.delete_job):
        result.writes += 1
    return state


def _rollout_unobserved(deployment: DeploymentView | None, writer: Writer, namespace: str, name: str) -> bool:
    """A Deployment applied moments ago that the controller-manager has not observed yet."""
    return (
        deployment is not None
        and deployment.observed_generation < deployment.generation
        and writer.applied_recently("Deployment", namespace, name)
    )


def _scale_event(before: int, after: int, why: str) -> Event:
    reason = EventReason.SCALED_UP if after > before else EventReason.SCALED_DOWN
    return Event("Normal", reason, f"{before} -> {after} replicas: {why}")


def _woken(llmd: Mapping[str, Any], desired: int, ctx: Reconciler) -> str | None:
    """Why a model the autoscaler keeps at zero must run a replica now (requests held for it), or None."""
    meta, scaling = llmd["metadata"], llmd["spec"]["autoscaling"]
    if not scaling["enabled"] or desired > 0 or scaling["maxReplicas"] < 1:
        return None
    waiting, now = ctx.demand.waiting(meta["namespace"], meta["name"]), time.monotonic()
    if waiting > 0:
        ctx.woken[meta["uid"]] = now
    if not demand.wake(desired, waiting, ctx.woken.get(meta["uid"]), now, scaling["scaleDownStabilizationSeconds"]):
        return None
    return f"scaled from zero: {waiting:g} requests held by the gateway" if waiting else "woken from zero moments ago"


def reconcile(llmd: Mapping[str, Any], view: ClusterView, ctx: Reconciler) -> PassResult:
    """One pass: nothing is written when the cluster already matches the object."""
    meta, spec, writer, config = llmd["metadata"], llmd["spec"], ctx.writer, ctx.config
    namespace, name = meta["namespace"], meta["name"]
    result = PassResult()
    # Every namespace with an LLMDeployment has a catalogue: builds are recorded in it, and its timer is the
    # namespace's resync and autoscaler tick (controller.handlers.namespace_tick).
    result.writes += writer.ensure_created(model_cache.catalogue(namespace, config), view.has_catalogue(namespace))
    nodes = view.nodes()
    problems = feasibility.check(spec, nodes)
    deployment = view.deployment(namespace, name)
    pods = view.pods(namespace, name)
    scale = _decide_scale(llmd, deployment, pods, ctx.scaler)
    desired = desired_replicas(spec, deployment, scale)
    wake = _woken(llmd, desired, ctx)
    desired = 1 if wake else desired
    blocked = any(p.blocking for p in problems)
    build = _build(llmd, view, ctx, act=not blocked, result=result)
    # A new build replaces the served one only when it is ready: until then the old pods keep serving.
    serving_key = build.key if build.phase == build_state.READY else deployment.model_key if deployment else None
    deployment_written = unseen = False
    if not blocked:
        applied = []
        for child in ctx.children.get(llmd, desired, config, serving_key):
            outcome = writer.apply(child, view.child_hash(namespace, name, child["kind"]))
            unseen |= outcome is Applied.IN_FLIGHT  # applied, but its watch event has not reached the cache yet
            if outcome is Applied.WRITTEN:
                result.writes += 1
                applied.append(child["kind"])
        deployment_written = "Deployment" in applied
        if applied:
            log.info("applied %s of %s/%s", ", ".join(applied), namespace, name)
        why = wake or (scale.reason if scale else None)
        if deployment_written and deployment is not None and deployment.spec_replicas != desired and why:
            # The Event follows the write that scales, never a decision that was not applied.
            result.scaled = (deployment.spec_replicas, desired)
            result.events += writer.post_events(llmd, [_scale_event(*result.scaled, why)])
    if deployment_written or unseen or _rollout_unobserved(deployment, writer, namespace, name):
        # The Deployment's watch events start the next pass, which writes the status once the
        # controller-manager has seen the new generation (the namespace tick covers it being down).
        return result
    current = writer.observed_status(llmd)
    new = compute_status(
        {**llmd, "status": current},
        Observed(deployment=deployment, pods=tuple(pods), nodes=tuple(nodes)),
        problems=problems, desired=desired, now=rfc3339(), scale=scale, build=build.status(), serving_key=serving_key,
    )  # fmt: skip
    metrics.record_replicas(namespace, name, desired, new["replicas"], new["readyReplicas"])
    metrics.record_status(namespace, name, spec, new)
    if new["build"]["phase"] == build_state.FAILED and (current.get("build") or {}).get("phase") != build_state.FAILED:
        metrics.build_finished(namespace, name, succeeded=False, seconds=build.seconds or 0.0)
    if status_changed(current, new) and writer.write_status(llmd, current, new):
        result.writes += 1
        changed = [f"{c['type']}={c['reason']}" for c in new["conditions"] if c not in current.get("conditions", [])]
        log.info("status of %s/%s: %s", namespace, name, changed)
        result.events += writer.post_events(llmd, transition_events(current.get("conditions") or [], new["conditions"]))
    return result


def collect_cache(
    namespace: str,
    cache: Mapping[str, CacheEntry],
    in_use: Collection[str],
    jobs: Sequence[JobView],
    ctx: Reconciler,
) -> int:
    """One clean-up pass over a namespace's model cache (build.collector plans it); returns the writes made."""
    step = collector.plan(namespace, cache, in_use, jobs, ctx.config)
    if step.job is not None and ctx.writer.apply(with_hash(step.job), None) is Applied.WRITTEN:
        log.info("cache of %s is over budget: removing unused builds %s", namespace, step.removing)
        return 1
    catalogue = model_cache.catalogue(namespace, ctx.config)
    if step.removed and ctx.writer.patch_data(catalogue, dict.fromkeys(step.removed)):
        log.info("removed builds %s from the cache catalogue of %s", list(step.removed), namespace)
        return 1
    return 0
