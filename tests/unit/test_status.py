"""Status and conditions as kubectl, Argo CD and Events show them."""

from __future__ import annotations

from batchline.observed import DeploymentView, NodeView, Observed, PodView
from batchline.report.feasibility import Problem
from batchline.report.status import compute_status, status_changed, transition_events
from tests.crd_schema import llmd

NODES = (NodeView("gpu-0", {"nvidia.com/gpu.product": "H100"}, 8),)
T0, T1 = "2026-11-22T10:00:00Z", "2026-11-22T10:05:00Z"


def _dep(ready: int, replicas: int = 2, updated: int | None = None, gen: int = 1, obs: int = 1) -> DeploymentView:
    upd = replicas if updated is None else updated
    return DeploymentView(gen, obs, replicas, upd, ready, replicas, "h")


BUILT = {"key": "k1", "phase": "Ready", "message": "Build k1 is in the model cache."}


def _status(obj: dict, observed: Observed, problems: list, desired: int, now: str, scale=None, build=BUILT) -> dict:
    serving = build["key"] if build["phase"] == "Ready" else ("k0" if observed.deployment else None)
    return compute_status(
        obj, observed, problems=problems, desired=desired, now=now, scale=scale, build=build, serving_key=serving
    )


def _conds(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_replicas_and_columns() -> None:
    obj = llmd(generation=3)
    status = _status(obj, Observed(_dep(ready=2), (), NODES), [], 2, T0)
    assert status["observedGeneration"] == 3
    assert status["replicaStatus"] == "2/2"
    c = _conds(status)
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "Serving"
    assert c["Progressing"]["status"] == "False"
    assert all(cond["observedGeneration"] == 3 and cond["lastTransitionTime"] == T0 for cond in c.values())
    assert status["endpoints"]["http"] == "http://chat.team-a.svc:8000"


def test_first_visit_without_deployment_is_not_ready() -> None:
    status = _status(llmd(), Observed(None, (), NODES), [], 1, T0)
    c = _conds(status)
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "ReplicasStarting"
    assert c["Progressing"]["reason"] == "NotDeployed"


def test_rollout_in_progress() -> None:
    status = _status(llmd(), Observed(_dep(ready=2, replicas=3, updated=1), (), NODES), [], 2, T0)
    c = _conds(status)
    assert c["Progressing"]["status"] == "True" and c["Progressing"]["reason"] == "RollingOut"
    assert c["Ready"]["status"] == "True"


def test_gpu_shortage_reports_requested_versus_allocatable() -> None:
    obj = llmd(resources={"gpu": {"count": 4}})
    pods = (
        PodView("a", True),
        PodView("b", True),
        PodView("c", False, "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
    )
    status = _status(obj, Observed(_dep(ready=2, replicas=3), pods, NODES), [], 3, T0)
    c = _conds(status)
    assert c["Schedulable"]["status"] == "False" and c["Schedulable"]["reason"] == "InsufficientGPUs"
    assert "12 in total" in c["Schedulable"]["message"] and "8 allocatable" in c["Schedulable"]["message"]
    assert status["gpus"] == {"requested": 12, "allocatable": 8, "unschedulableReplicas": 1}
    assert c["Degraded"]["status"] == "True"
    assert c["Ready"]["status"] == "True"  # two replicas still serve


def test_blocking_problem_explains_itself() -> None:
    problem = Problem("UnsupportedModelSource", "spec.model.source 's3://x' uses 's3'", blocking=True)
    c = _conds(_status(llmd(), Observed(None, (), NODES), [problem], 1, T0))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "UnsupportedModelSource"
    assert c["Degraded"]["status"] == "True"


def test_transition_time_moves_only_when_status_flips() -> None:
    obj = llmd()
    first = _status(obj, Observed(_dep(ready=0), (), NODES), [], 2, T0)
    obj["status"] = first
    second = _status(obj, Observed(_dep(ready=0), (), NODES), [], 2, T1)
    assert not status_changed(first, second)
    third = _status(obj, Observed(_dep(ready=1), (), NODES), [], 2, T1)
    assert _conds(third)["Ready"]["lastTransitionTime"] == T1
    assert _conds(third)["Progressing"]["lastTransitionTime"] == T0


def test_autoscaler_fields_survive_a_status_rewrite() -> None:
    obj = llmd()
    obj["status"] = {"autoscaling": {"observedLatencyMs": 812, "reason": "within target"}}
    assert _status(obj, Observed(_dep(ready=1), (), NODES), [], 1, T0)["autoscaling"]["observedLatencyMs"] == 812


def test_events_only_on_transitions() -> None:
    obj = llmd()
    starting = _status(obj, Observed(_dep(ready=0), (), NODES), [], 1, T0)["conditions"]
    events = transition_events([], starting)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ReplicasStarting")]  # built already: no news
    assert transition_events(starting, starting) == []
    serving = _status(obj, Observed(_dep(ready=1), (), NODES), [], 1, T1)["conditions"]
    assert [(e.type, e.reason) for e in transition_events(starting, serving)] == [("Normal", "Serving")]


def test_a_build_that_finishes_is_news_one_found_in_the_cache_is_not() -> None:
    obj = llmd()
    idle = _status(obj, Observed(_dep(ready=0, replicas=0), (), NODES), [], 0, T0)["conditions"]
    assert transition_events([], idle) == []  # scaled to zero and built from the start: nothing to tell
    building = _status(obj, Observed(None, (), NODES), [], 1, T0, build=BUILDING)["conditions"]
    built = _status(obj, Observed(_dep(ready=1), (), NODES), [], 1, T1)["conditions"]
    events = transition_events(building, built)
    assert [(e.type, e.reason) for e in events] == [("Normal", "Serving"), ("Normal", "Built")]


BUILDING = {"key": "k2", "phase": "Building", "message": "Job batchline-build-k2-1 is building k2; pod p Running."}
FAILED = {"key": "k2", "phase": "Failed", "message": "Build k2 failed (attempt 1): checkpoint has no weights."}


def test_a_first_build_shows_as_building_not_as_a_problem() -> None:
    status = _status(llmd(), Observed(None, (), NODES), [], 1, T0, build=BUILDING)
    c = _conds(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Building")
    assert (c["ModelReady"]["status"], c["ModelReady"]["reason"]) == ("False", "Building")
    assert (c["Progressing"]["status"], c["Degraded"]["status"]) == ("True", "False")
    assert status["build"]["phase"] == "Building" and "servingKey" not in status["build"]
    assert [(e.type, e.reason) for e in transition_events([], status["conditions"])] == [("Normal", "Building")]


def test_a_failed_build_is_degraded_with_the_builders_message() -> None:
    c = _conds(_status(llmd(), Observed(None, (), NODES), [], 1, T0, build=FAILED))
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "BuildFailed")
    assert "checkpoint has no weights" in c["Degraded"]["message"]
    assert c["Ready"]["reason"] == "BuildFailed"


def test_old_pods_keep_serving_while_a_new_build_runs() -> None:
    status = _status(llmd(), Observed(_dep(ready=2), (), NODES), [], 2, T0, build=BUILDING)
    c = _conds(status)
    assert c["Ready"]["status"] == "True"
    assert "keep serving build k0" in c["ModelReady"]["message"]
    assert status["build"]["servingKey"] == "k0" and status["build"]["key"] == "k2"


def test_autoscaling_status_shows_the_observed_values_of_the_targets_in_use() -> None:
    from batchline.autoscaler import Status
    from batchline.autoscaler.actuator import ScaleView

    obj = llmd(autoscaling={"targetLatencyMs": 0, "targetTimeToFirstTokenMs": 500})
    view = ScaleView(replicas=2, reason="hold at 2", metrics=Status.OK, metrics_detail="", latency_ms=4100, ttft_ms=620)
    block = _status(obj, Observed(_dep(ready=2), (), NODES), [], 2, T0, scale=view)["autoscaling"]
    assert block["observedTimeToFirstTokenMs"] == 620 and block["observedLatencyMs"] == 4100
    assert "observedTimePerOutputTokenMs" not in block  # not a target: not shown
