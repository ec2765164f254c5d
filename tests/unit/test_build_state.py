"""A build that cannot go on is reported as what the user must fix, not shown as progress."""

from __future__ import annotations

from typing import Any

from batchline.build.state import BUILDING, FAILED, decide
from batchline.conditions import Reason
from batchline.observed import BuildPodView, JobView, Observed
from batchline.report.status import compute_status, transition_events
from tests.crd_schema import llmd

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
CREATED = "2027-01-15T08:00:00Z"
RUNNING = JobView("batchline-build-k1-1", "k1", 1, 1, None, None, "", CREATED)


def _pod(status: dict[str, Any], limits: dict[str, str] | None = None) -> BuildPodView:
    body = {
        "metadata": {"name": "batchline-build-k1-1-x", "namespace": "team-a", "creationTimestamp": CREATED,
                     "labels": {"job-name": RUNNING.name}},
        "spec": {"containers": [{"name": "builder", "image": "ghcr.io/batchline/batchline-builder:0.1.0",
                                 "resources": {"limits": limits or {"memory": "2Gi"}}}]},
        "status": status,
    }  # fmt: skip
    return BuildPodView.from_body(body)


UNSCHEDULABLE = {
    "phase": "Pending",
    "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": '0/3 nodes are available: persistentvolumeclaim "batchline-model-cache" not found.'}],
}  # fmt: skip
NO_IMAGE = {
    "phase": "Pending",
    "containerStatuses": [{"name": "builder", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                     "message": "Back-off pulling image"}}}],
}  # fmt: skip
OOM = {
    "phase": "Failed",
    "containerStatuses": [{"name": "builder", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}],
}


def test_a_pod_that_cannot_start_is_progress_for_a_moment_then_a_problem_naming_the_cause() -> None:
    for status, words in ((UNSCHEDULABLE, "model cache's claim is missing"), (NO_IMAGE, "cannot pull ghcr.io")):
        early = decide("k1", None, [RUNNING], [_pod(status)], T0 + 10, 60, blocked_after_seconds=120)
        assert (early.phase, early.reason) == (BUILDING, Reason.BUILDING)
        late = decide("k1", None, [RUNNING], [_pod(status)], T0 + 121, 60, blocked_after_seconds=120)
        assert (late.phase, late.reason) == (BUILDING, Reason.BUILD_BLOCKED)
        assert words in late.message and late.start_attempt is None and late.delete_job is None


def test_a_build_out_of_memory_says_the_size_it_had_and_is_not_retried_with_the_same_inputs() -> None:
    state = decide("k1", None, [RUNNING], [_pod(OOM, {"memory": "2Gi"})], T0 + 30, 60)
    assert (state.phase, state.reason) == (FAILED, Reason.BUILD_OUT_OF_MEMORY)
    assert "out of memory at 2Gi" in state.message and "spec.build.resources.memory" in state.message
    assert state.start_attempt is None and state.retry_at is None


def test_blocked_and_out_of_memory_builds_are_degraded_not_progressing_and_post_a_warning() -> None:
    obj = llmd()
    for status, reason in ((UNSCHEDULABLE, Reason.BUILD_BLOCKED), (OOM, Reason.BUILD_OUT_OF_MEMORY)):
        build = decide("k1", None, [RUNNING], [_pod(status)], T0 + 600, 60).status()
        new = compute_status(
            obj, Observed(None, (), ()), problems=[], desired=1, now=CREATED, scale=None, build=build,
            serving_key=None,
        )  # fmt: skip
        conds = {c["type"]: (c["status"], c["reason"]) for c in new["conditions"]}
        assert conds["Degraded"] == ("True", reason) and conds["ModelReady"] == ("False", reason)
        assert conds["Progressing"][0] == "False" and conds["Ready"] == ("False", reason)
        assert new["build"]["reason"] == reason
        assert [(e.type, e.reason) for e in transition_events([], new["conditions"])][:1] == [("Warning", reason)]
