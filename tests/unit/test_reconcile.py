"""Reconcile decisions with an in-memory cluster view: writes happen only when something differs.

The apply and status writers are fakes here (pure logic); the integration tests count the real
API server's writes from its audit log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchline.apply import applied_hash
from batchline.config import OperatorConfig
from batchline.observed import DeploymentView, NodeView, PodView
from batchline.reconcile import Writers, desired_replicas, reconcile
from batchline.status import Event
from tests.crd_schema import llmd

NODES = [NodeView("gpu-0", {"nvidia.com/gpu.product": "H100"}, 8)]


class FakeCluster:
    """Acts as the cluster view, the applier and the status writer at once."""

    def __init__(self) -> None:
        self.hashes: dict[tuple[str, str, str], str] = {}
        self.status: dict[str, Any] = {}
        self.writes: list[str] = []
        self.events: list[Event] = []
        self.revision = 0
        self._writers: Writers | None = None

    def nodes(self) -> Sequence[NodeView]:
        return NODES

    def deployment(self, namespace: str, name: str) -> DeploymentView | None:
        h = self.hashes.get((namespace, name, "Deployment"))
        return DeploymentView(1, 1, 1, 1, 1, 1, h) if h else None

    def pods(self, namespace: str, name: str) -> Sequence[PodView]:
        return []

    def child_hash(self, namespace: str, name: str, kind: str) -> str | None:
        return self.hashes.get((namespace, name, kind))

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.hashes[(meta["namespace"], meta["name"], manifest["kind"])] = applied_hash(manifest)
        self.writes.append(manifest["kind"])
        return manifest

    def patch_namespaced_custom_object_status(self, *args: Any) -> dict[str, Any]:
        self.status = args[-1]["status"]
        self.writes.append("status")
        self.revision += 1
        return {"metadata": {"resourceVersion": str(self.revision)}, "status": self.status}

    def writers(self) -> Writers:
        def post(_: Mapping[str, Any], event: Event) -> None:
            self.events.append(event)

        if self._writers is None:
            self._writers = Writers(self, self, post)  # type: ignore[arg-type]
        return self._writers


def _pass(cluster: FakeCluster, obj: dict[str, Any], stale: bool = False) -> int:
    """One reconcile; `stale` hands it a body read before the last status write landed."""
    if not stale:
        obj["status"] = cluster.status
        obj["metadata"]["resourceVersion"] = str(cluster.revision)
    return reconcile(obj, cluster, cluster.writers(), OperatorConfig(), with_pod_monitor=False)


def test_second_pass_with_nothing_changed_writes_nothing() -> None:
    cluster, obj = FakeCluster(), llmd()
    assert _pass(cluster, obj) == 3  # service, pdb, deployment; the Deployment's watch event comes next
    assert cluster.writes == ["Service", "PodDisruptionBudget", "Deployment"]
    assert _pass(cluster, obj) == 1  # the status, which now sees the Deployment
    assert _pass(cluster, obj) == 0
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
    cluster, obj = FakeCluster(), llmd(model={"source": "s3://bucket/model"})
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
