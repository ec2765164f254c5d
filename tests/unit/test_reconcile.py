"""Reconcile decisions with an in-memory cluster view: writes happen only when something differs.

The apply and status writers are fakes here (pure logic); the integration tests count the real
API server's writes from its audit log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchline.autoscaler import Status
from batchline.autoscaler.actuator import ScaleView
from batchline.build.catalogue import CacheEntry
from batchline.build.spec_key import repository_key
from batchline.config import OperatorConfig
from batchline.controller.reconcile import Reconciler, desired_replicas, reconcile
from batchline.controller.writer import Writer, applied_hash
from batchline.observed import BuildPodView, DeploymentView, JobView, NodeView, PodView
from batchline.resources.event import Event
from batchline.resources.model_cache import catalogue
from tests.crd_schema import llmd

NODES = [NodeView("gpu-0", {"nvidia.com/gpu.product": "H100"}, 8)]
CFG = OperatorConfig(pod_monitors=False)
SUMMARY = '{"key":"c1","sizeBytes":136000000,"fp32Bytes":538000000,"compressionRatio":3.96,"buildSeconds":80,'
SUMMARY += '"mode":"int8-weight-only","quality":{"perplexityIncrease":0.0067,"top1Agreement":0.974,"passed":true}}'


def _merged(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


class AllBuilt(dict):
    """A cache catalogue that holds every key: for tests about the children, not the build."""

    def get(self, key: str, default: Any = None) -> CacheEntry:
        return CacheEntry(key, "2026-11-22T10:00:00Z", {"key": "content", "sizeBytes": 10})


class FakeCluster:
    """The cluster view and the API calls the Writer makes (controller.writer.KubeCalls), in memory."""

    def __init__(self, built: bool = True) -> None:
        self.catalogue: dict[str, CacheEntry] = AllBuilt() if built else {}
        self.jobs: dict[str, tuple[dict[str, Any], JobView]] = {}
        self.builder_pods: list[BuildPodView] = []
        self.deleted: list[str] = []
        self.hashes: dict[tuple[str, str, str], str] = {}
        self.status: dict[str, Any] = {}
        self.writes: list[str] = []
        self.events: list[Event] = []
        self.revision = 0
        self.catalogue_exists = True
        self.objects: list[dict[str, Any]] = []
        self.replicas_seen: list[int] = []

    # ClusterView
    def nodes(self) -> Sequence[NodeView]:
        return NODES

    def deployment(self, namespace: str, name: str) -> DeploymentView | None:
        h = self.hashes.get((namespace, name, "Deployment"))
        if not h:
            return None
        n = self.applied_deployment["spec"]["replicas"]
        return DeploymentView(1, 1, n, n, n, n, h, self.served_key)

    def cache(self, namespace: str) -> Mapping[str, CacheEntry]:
        return self.catalogue

    def build_jobs(self, namespace: str, key: str) -> Sequence[JobView]:
        return [view for _, view in self.jobs.values() if view.key == key]

    def build_pods(self, namespace: str, key: str) -> Sequence[BuildPodView]:
        return self.builder_pods

    def wanting(self, namespace: str, key: str) -> Sequence[Mapping[str, Any]]:
        return [o for o in self.objects if repository_key(o["spec"]) == key]

    def has_catalogue(self, namespace: str) -> bool:
        return self.catalogue_exists

    def pods(self, namespace: str, name: str) -> Sequence[PodView]:
        return []

    def child_hash(self, namespace: str, name: str, kind: str) -> str | None:
        return self.hashes.get((namespace, name, kind))

    def finish_job(self, name: str, outcome: str, message: str, at: str = "2026-11-22T10:00:00Z") -> None:
        manifest, view = self.jobs[name]
        self.jobs[name] = (manifest, JobView(name, view.key, view.attempt, 0, outcome, at, "", at, view.applied_hash))
        phase = "Succeeded" if outcome == "Complete" else "Failed"
        self.builder_pods.append(BuildPodView(f"{name}-pod", name, phase, message, at))

    @property
    def served_key(self) -> str | None:
        return self.applied_deployment["spec"]["template"]["metadata"]["annotations"]["batchline.dev/build-key"]

    # KubeCalls
    def apply(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self.writes.append(manifest["kind"])
        if manifest["kind"] == "Job":
            labels, attempt = meta["labels"], int(meta["annotations"]["batchline.dev/build-attempt"])
            key = labels["batchline.dev/build-key"]
            view = JobView(meta["name"], key, attempt, 1, None, None, "", None, applied_hash(manifest))
            self.jobs[meta["name"]] = (manifest, view)
            return
        self.hashes[(meta["namespace"], meta["name"], manifest["kind"])] = applied_hash(manifest)
        if manifest["kind"] == "Deployment":
            self.applied_deployment = manifest
            self.replicas_seen.append(manifest["spec"]["replicas"])

    def create(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Event":
            self.events.append(Event(manifest["type"], manifest["reason"], manifest["message"]))
        else:
            self.writes.append(f"create {manifest['kind']}")  # the view shows it only once its watch event comes
        return True

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        if status:
            self.status = _merged(self.status, body["status"])  # a JSON merge patch, as the API server does it
            self.writes.append("status")
            self.revision += 1
            return {"metadata": {"resourceVersion": str(self.revision)}, "status": self.status}
        for key, text in body["data"].items():
            self.catalogue[key] = CacheEntry.from_data(key, text)
        self.writes.append("catalogue")
        return {}

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append(name)
        self.writes.append(f"delete {kind}")
        return self.jobs.pop(name, None) is not None


class FixedScale:
    """An autoscaler that has decided on `replicas` (None: no decision yet)."""

    def __init__(self, replicas: int | None = None) -> None:
        self.replicas = replicas

    def tick(self, llmd: Mapping[str, Any], current: int, ready: int, unschedulable: int) -> ScaleView | None:
        if self.replicas is None:
            return None
        return ScaleView(self.replicas, f"recommend {self.replicas}", Status.OK, "ok", latency_ms=900)


def _reconciler(cluster: FakeCluster, config: OperatorConfig = CFG, scale: FixedScale | None = None) -> Reconciler:
    if getattr(cluster, "_reconciler", None) is None or cluster._reconciler.config != config:  # type: ignore[attr-defined]
        cluster._reconciler = Reconciler(Writer(cluster), scale or FixedScale(), config)  # type: ignore[attr-defined]
    found: Reconciler = cluster._reconciler  # type: ignore[attr-defined]
    return found


def _pass(cluster: FakeCluster, obj: dict[str, Any], stale: bool = False, config: OperatorConfig = CFG) -> int:
    """One reconcile; `stale` hands it a body read before the last status write landed."""
    if not stale:
        obj["status"] = cluster.status
        obj["metadata"]["resourceVersion"] = str(cluster.revision)
    cluster.objects = [obj]
    return reconcile(obj, cluster, _reconciler(cluster, config)).writes


def test_second_pass_with_nothing_changed_writes_nothing() -> None:
    cluster, obj = FakeCluster(), llmd()
    assert _pass(cluster, obj) == 3  # service, pdb, deployment; the Deployment's watch event comes next
    assert cluster.writes == ["Service", "PodDisruptionBudget", "Deployment"]
    assert _pass(cluster, obj) == 1  # the status, which now sees the Deployment
    assert _pass(cluster, obj) == 0
    assert _pass(cluster, obj) == 0


def test_a_namespace_without_a_catalogue_gets_one_once() -> None:
    """Its timer resyncs the namespace, so even an LLMDeployment that cannot be honoured creates it."""
    cluster, obj = FakeCluster(), llmd(model={"source": "s3://bucket/model"})
    cluster.catalogue_exists = False
    _pass(cluster, obj)
    assert cluster.writes == ["create ConfigMap", "status"]
    assert _pass(cluster, obj) == 0  # its watch event has not come yet: not created twice
    cluster.catalogue_exists = True
    assert _pass(cluster, obj) == 0


def test_spec_change_reapplies_only_what_changed() -> None:
    cluster, obj = FakeCluster(), llmd()
    _pass(cluster, obj)
    _pass(cluster, obj)
    cluster.writes.clear()
    changed = llmd(serving={"maxBatchSize": 32}, generation=2)
    _pass(cluster, changed)
    _pass(cluster, changed)
    assert cluster.writes == ["Deployment", "status"]


def test_blocking_problem_creates_nothing_and_posts_one_event() -> None:
    cluster, obj = FakeCluster(), llmd(model={"source": "s3://bucket/model"})
    _pass(cluster, obj)
    assert cluster.writes == ["status"]
    assert [e.reason for e in cluster.events if e.type == "Warning"] == ["UnsupportedModelSource"]
    cluster.events.clear()
    assert _pass(cluster, obj) == 0 and cluster.events == []


def test_desired_replicas_keeps_running_count_within_bounds() -> None:
    spec = llmd(autoscaling={"minReplicas": 2, "maxReplicas": 5})["spec"]
    assert desired_replicas(spec, None, None) == 2
    assert desired_replicas(spec, DeploymentView(1, 1, 4, 4, 4, 4, "h"), None) == 4
    assert desired_replicas(spec, DeploymentView(1, 1, 9, 9, 9, 9, "h"), None) == 5
    off = llmd(autoscaling={"enabled": False, "minReplicas": 3})["spec"]
    assert desired_replicas(off, DeploymentView(1, 1, 1, 1, 1, 1, "h"), None) == 3


def test_a_stale_body_neither_rewrites_status_nor_repeats_events() -> None:
    cluster, obj = FakeCluster(built=False), llmd(model={"source": "s3://bucket/model"})
    obj["metadata"]["resourceVersion"] = "0"
    _pass(cluster, obj, stale=True)
    assert _pass(cluster, obj, stale=True) == 0  # same old body again, e.g. the timer racing the watch
    assert [e.reason for e in cluster.events] == ["UnsupportedModelSource"]


def test_a_child_applied_a_moment_ago_is_not_applied_again_while_the_index_lags() -> None:
    cluster, obj = FakeCluster(), llmd()
    _pass(cluster, obj)
    cluster.hashes.clear()  # the watch events have not arrived yet
    assert _pass(cluster, obj) <= 1  # at most the status; no child is applied twice
    assert cluster.writes.count("Deployment") == 1


def test_status_waits_for_the_controller_manager_to_observe_a_fresh_deployment() -> None:
    cluster, obj = FakeCluster(), llmd()
    _pass(cluster, obj)  # applies the children
    fresh = DeploymentView(2, 1, 1, 1, 1, 1, cluster.hashes[("team-a", "chat", "Deployment")])
    cluster.deployment = lambda namespace, name: fresh  # type: ignore[method-assign]
    assert _pass(cluster, obj) == 0  # generation 2 not observed yet: its next status event brings the pass
    observed = DeploymentView(2, 2, 1, 1, 1, 1, fresh.applied_hash)
    cluster.deployment = lambda namespace, name: observed  # type: ignore[method-assign]
    assert _pass(cluster, obj) == 1 and cluster.writes[-1] == "status"


def _conds(cluster: FakeCluster) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in cluster.status["conditions"]}


def test_a_new_model_is_built_by_one_job_before_any_triton_pod_exists() -> None:
    cluster, obj = FakeCluster(built=False), llmd()
    _pass(cluster, obj)
    assert cluster.writes == ["Job", "Service", "PodDisruptionBudget", "status"]
    job = next(iter(cluster.jobs.values()))[0]
    assert job["spec"]["backoffLimit"] == CFG.build_backoff_limit and job["spec"]["activeDeadlineSeconds"] > 0
    assert _conds(cluster)["ModelReady"] == ("False", "Building")
    assert _pass(cluster, obj) == 1  # the status now names the Job it saw
    assert "batchline-build-" in cluster.status["build"]["message"]
    assert _pass(cluster, obj) == 0  # the Job runs; nothing to do until it moves


def test_a_finished_build_is_recorded_then_served_with_its_figures_in_status() -> None:
    cluster, obj = FakeCluster(built=False), llmd()
    _pass(cluster, obj)
    cluster.finish_job(next(iter(cluster.jobs)), "Complete", SUMMARY)
    cluster.writes.clear()
    _pass(cluster, obj)
    assert cluster.writes == ["catalogue", "Deployment"]
    key = repository_key(obj["spec"])
    assert cluster.served_key == key and key in cluster.catalogue
    _pass(cluster, obj)
    assert _conds(cluster)["ModelReady"] == ("True", "Built")
    report = cluster.status["build"]["report"]
    assert (report["compressionRatio"], report["perplexityIncrease"], report["top1Agreement"]) == (
        "3.96x",
        "+0.67%",
        "97.4%",
    )
    assert _pass(cluster, obj) == 0


def test_a_new_quantization_keeps_the_old_build_serving_until_its_build_is_ready() -> None:
    cluster, obj = FakeCluster(built=False), llmd()
    _pass(cluster, obj)
    cluster.finish_job(next(iter(cluster.jobs)), "Complete", SUMMARY)
    _pass(cluster, obj)
    _pass(cluster, obj)
    old_key = cluster.served_key
    changed = llmd(quantization={"mode": "int8-weight-only"}, generation=2)
    cluster.writes.clear()
    _pass(cluster, changed)
    assert cluster.writes == ["Job", "status"]  # no Deployment change while the new build runs
    assert cluster.served_key == old_key
    assert cluster.status["build"]["servingKey"] == old_key and _conds(cluster)["Ready"][0] == "True"
    new_job = next(name for name, (_, view) in cluster.jobs.items() if view.key == repository_key(changed["spec"]))
    cluster.finish_job(new_job, "Complete", SUMMARY)
    _pass(cluster, changed)
    assert cluster.served_key == repository_key(changed["spec"])  # now it rolls


def test_a_failed_build_is_degraded_and_retried_only_after_a_backoff() -> None:
    cluster, obj = FakeCluster(built=False), llmd()
    config = OperatorConfig(build_retry_seconds=3600, pod_monitors=False)
    _pass(cluster, obj, config=config)
    first = next(iter(cluster.jobs))
    cluster.finish_job(first, "Failed", "checkpoint /models/x has no weights", at="2999-01-01T00:00:00Z")
    cluster.writes.clear()
    for _ in range(3):
        _pass(cluster, obj, config=config)
    assert cluster.writes == ["status"]  # no storm: one status write, no new Job
    assert _conds(cluster)["Degraded"] == ("True", "BuildFailed")
    assert "has no weights" in cluster.status["conditions"][-2]["message"] or any(
        "has no weights" in c["message"] for c in cluster.status["conditions"]
    )
    assert cluster.status["build"]["retryAt"] == "2999-01-01T01:00:00Z"
    cluster.jobs[first] = (cluster.jobs[first][0], cluster.jobs[first][1].__class__(
        first, cluster.jobs[first][1].key, 1, 0, "Failed", "2026-01-01T00:00:00Z", "", None, None
    ))  # fmt: skip
    cluster.writes.clear()
    _pass(cluster, obj, config=config)
    assert cluster.writes[:2] == ["Job", "delete Job"] and cluster.deleted == [first]
    assert [view.attempt for _, view in cluster.jobs.values()] == [2]


def test_two_deployments_with_the_same_inputs_share_one_build_job() -> None:
    cluster = FakeCluster(built=False)
    a, b = llmd(name="a"), llmd(name="b")
    for obj in (a, b):
        obj["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"
    cluster.objects = [a, b]
    ctx = _reconciler(cluster)
    reconcile(a, cluster, ctx)
    reconcile(b, cluster, ctx)
    assert len(cluster.jobs) == 1
    owners = next(iter(cluster.jobs.values()))[0]["metadata"]["ownerReferences"]
    assert [o["name"] for o in owners] == ["a", "b"]


def test_status_fields_that_go_away_are_removed_not_left_behind() -> None:
    from batchline.controller.writer import merge_patch

    current = {"build": {"phase": "Failed", "retryAt": "t", "report": {"a": 1}}, "autoscaling": {"x": 1}}
    new = {"build": {"phase": "Ready", "report": {"b": 2}}}
    assert merge_patch(current, new) == {
        "build": {"phase": "Ready", "retryAt": None, "report": {"a": None, "b": 2}},
        "autoscaling": None,
    }


class CatalogueGone(FakeCluster):
    """API calls whose catalogue was deleted: the first patch finds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any], status: bool = False
    ) -> dict[str, Any] | None:
        self.calls.append(f"patch {name}")
        return None if len(self.calls) == 1 else {}

    def create(self, manifest: dict[str, Any]) -> bool:
        self.calls.append(f"create {manifest['metadata']['name']} with {sorted(manifest['data'])}")
        return True


def test_a_build_finished_after_its_catalogue_was_deleted_is_still_recorded() -> None:
    calls = CatalogueGone()
    entry = CacheEntry("k1", "2026-11-22T10:00:00Z", {"sizeBytes": 1})
    assert Writer(calls).patch_data(catalogue("team-a", CFG), {"k1": entry.to_data()})
    assert calls.calls == [f"patch {CFG.model_cache_pvc}", f"create {CFG.model_cache_pvc} with ['k1']"]


def test_a_scale_event_follows_the_write_that_scales_and_never_a_skipped_one() -> None:
    cluster, obj = FakeCluster(), llmd(autoscaling={"minReplicas": 1, "maxReplicas": 4})
    scale = FixedScale()
    ctx = Reconciler(Writer(cluster), scale, CFG)
    obj["metadata"]["resourceVersion"] = "0"
    for _ in range(2):
        reconcile(obj, cluster, ctx)
    assert cluster.replicas_seen == [1] and cluster.events == []
    scale.replicas = 3
    result = reconcile(obj, cluster, ctx)
    assert result.scaled == (1, 3) and cluster.replicas_seen == [1, 3]
    assert [(e.reason, e.message.split(":")[0]) for e in cluster.events] == [("ScaledUp", "1 -> 3 replicas")]
    cluster.hashes.clear()  # the Deployment's watch event has not come yet: the same apply is not made again
    assert reconcile(obj, cluster, ctx).scaled is None and len(cluster.events) == 1
    blocked = llmd(autoscaling={"minReplicas": 1, "maxReplicas": 4}, model={"source": "s3://bucket/model"})
    blocked["metadata"]["uid"] = "other"
    scale.replicas = 4
    reconcile(blocked, cluster, ctx)
    assert not [e for e in cluster.events if e.reason in ("ScaledUp", "ScaledDown") and e is not cluster.events[0]]
    assert cluster.replicas_seen == [1, 3]  # a decision that is not applied posts nothing


class Held:
    def __init__(self) -> None:
        self.requests = 0.0

    def waiting(self, namespace: str, name: str) -> float:
        return self.requests


def test_requests_held_by_the_gateway_wake_a_model_at_zero_and_keep_it_up_for_its_window() -> None:
    cluster = FakeCluster()
    obj = llmd(autoscaling={"minReplicas": 0, "maxReplicas": 3, "scaleDownStabilizationSeconds": 300})
    obj["metadata"]["resourceVersion"] = "0"
    held, scale = Held(), FixedScale(0)
    ctx = Reconciler(Writer(cluster), scale, CFG, demand=held)
    reconcile(obj, cluster, ctx)
    assert cluster.replicas_seen == [0]  # idle: nothing runs
    held.requests = 2
    result = reconcile(obj, cluster, ctx)
    assert result.scaled == (0, 1) and cluster.replicas_seen == [0, 1]
    assert [e.message for e in cluster.events] == ["0 -> 1 replicas: scaled from zero: 2 requests held by the gateway"]
    held.requests = 0  # the held requests went to the new replica; the autoscaler still says 0 (no metrics yet)
    assert reconcile(obj, cluster, ctx).scaled is None and cluster.replicas_seen == [0, 1]
    ctx.woken[obj["metadata"]["uid"]] -= 301  # its scale-down window has passed
    assert reconcile(obj, cluster, ctx).scaled == (1, 0)


def test_held_demand_reads_the_gateways_gauge_per_llmdeployment_and_wakes_nothing_without_prometheus() -> None:
    from batchline.autoscaler.demand import HeldDemand

    class Prom:
        up = True

        def custom_query(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            if not self.up:
                raise OSError("connection refused")
            assert "batchline_gateway_requests_waiting" in query
            metric = {"llmdeployment_namespace": "team-a", "llmdeployment": "chat"}
            idle = {**metric, "llmdeployment": "idle"}
            return [{"metric": metric, "value": [0, "3"]}, {"metric": idle, "value": [0, "0"]}]

    prom = Prom()
    demand = HeldDemand(prom)
    assert demand.refresh() is None and demand.held() == [("team-a", "chat")] and demand.waiting("team-a", "chat") == 3
    prom.up = False
    assert "refused" in (demand.refresh() or "") and demand.held() == []
