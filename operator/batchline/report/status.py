"""The LLMDeployment's status, computed by a pure function of the object and what was observed.

Conditions follow the Kubernetes API conventions: each carries observedGeneration, and
lastTransitionTime only moves when status flips. Ready summarises the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchline import api
from batchline.autoscaler import Status
from batchline.autoscaler.actuator import ScaleView
from batchline.build.state import FAILED, READY
from batchline.conditions import FALSE, ORDER, TRUE, UNKNOWN, Reason, Type
from batchline.observed import Observed
from batchline.report.feasibility import Problem, matching_nodes
from batchline.resources.event import Event
from batchline.resources.serving import endpoints

_METRIC_REASONS = {
    Status.PROMETHEUS_DOWN: Reason.PROMETHEUS_UNAVAILABLE,
    Status.NO_DATA: Reason.NO_METRICS,
    Status.NAN: Reason.METRICS_NAN,
    Status.STALE: Reason.METRICS_STALE,
}


def _cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": ctype, "status": status, "reason": reason, "message": message}


def _gpu_status(spec: Mapping[str, Any], observed: Observed, desired: int) -> dict[str, int]:
    res = spec["resources"]
    return {
        "requested": res["gpu"]["count"] * desired,
        "allocatable": sum(n.allocatable_gpus for n in matching_nodes(res, observed.nodes)),
        "unschedulableReplicas": sum(1 for p in observed.pods if p.unschedulable_message and not p.terminating),
    }


def _scaling_condition(spec: Mapping[str, Any], scale: ScaleView | None, desired: int) -> dict[str, Any]:
    if not spec["autoscaling"]["enabled"]:
        message = f"spec.autoscaling.enabled is false: {desired} replicas."
        return _cond(Type.SCALING_ACTIVE, FALSE, Reason.AUTOSCALING_DISABLED, message)
    if scale is None:
        message = "The autoscaler has not read metrics yet."
        return _cond(Type.SCALING_ACTIVE, UNKNOWN, Reason.WAITING_FOR_METRICS, message)
    if scale.metrics is Status.OK:
        return _cond(Type.SCALING_ACTIVE, TRUE, Reason.TRACKING_LATENCY, scale.reason)
    return _cond(Type.SCALING_ACTIVE,
        FALSE,
        _METRIC_REASONS[scale.metrics],
        f"Replicas held at {desired}: {scale.metrics_detail}. "
        "Check that Prometheus is up and scrapes the Triton pods' metrics port.",
    )


# Build states the user must act on: Degraded, and no longer progress.
_BUILD_PROBLEMS = (Reason.BUILD_FAILED, Reason.BUILD_BLOCKED, Reason.BUILD_OUT_OF_MEMORY)


def _model_condition(build: Mapping[str, Any], serving_key: str | None) -> dict[str, Any]:
    if build["phase"] == READY:
        return _cond(Type.MODEL_READY, TRUE, Reason.BUILT, build["message"])
    reason = build.get("reason") if build.get("reason") in _BUILD_PROBLEMS else None
    reason = reason or (Reason.BUILD_FAILED if build["phase"] == FAILED else Reason.BUILDING)
    if serving_key is not None:
        message = f"{build['message']} Pods keep serving build {serving_key} until then."
        return _cond(Type.MODEL_READY, FALSE, reason, message)
    return _cond(Type.MODEL_READY, FALSE, reason, build["message"])


def _conditions(
    spec: Mapping[str, Any],
    observed: Observed,
    problems: Sequence[Problem],
    desired: int,
    scale: ScaleView | None,
    build: Mapping[str, Any],
    serving_key: str | None,
) -> list[dict[str, Any]]:
    dep = observed.deployment
    blocking = [p for p in problems if p.blocking]
    model = _model_condition(build, serving_key)
    if blocking and build["phase"] != READY:
        model = _cond(Type.MODEL_READY, FALSE, blocking[0].reason, blocking[0].message)
    advisory = [p for p in problems if not p.blocking]
    ready_replicas = dep.ready_replicas if dep else 0
    gpus = _gpu_status(spec, observed, desired)
    pending = [p for p in observed.pods if p.unschedulable_message and not p.terminating]

    if blocking:
        schedulable = _cond(Type.SCHEDULABLE, FALSE, blocking[0].reason, blocking[0].message)
    elif advisory:
        schedulable = _cond(Type.SCHEDULABLE, FALSE, advisory[0].reason, advisory[0].message)
    elif pending:
        schedulable = _cond(Type.SCHEDULABLE,
            FALSE,
            Reason.INSUFFICIENT_GPUS if spec["resources"]["gpu"]["count"] else Reason.UNSCHEDULABLE,
            f"{len(pending)} of {desired} replicas cannot be scheduled: they request "
            f"{spec['resources']['gpu']['count']} {api.GPU_RESOURCE} each, {gpus['requested']} in total, and "
            f"matching nodes have {gpus['allocatable']} allocatable. Scheduler: {pending[0].unschedulable_message} "
            "Lower spec.autoscaling.maxReplicas or add GPU nodes.",
        )
    else:
        schedulable = _cond(Type.SCHEDULABLE, TRUE, Reason.SCHEDULABLE, "All replicas can be placed on matching nodes.")

    if not blocking and model["reason"] == Reason.BUILDING:
        progressing = _cond(Type.PROGRESSING, TRUE, Reason.BUILDING, model["message"])
    elif blocking or dep is None:
        progressing = _cond(Type.PROGRESSING, FALSE, Reason.NOT_DEPLOYED, "No Triton Deployment exists yet.")
    elif not dep.rolled_out:
        progressing = _cond(Type.PROGRESSING,
            TRUE,
            Reason.ROLLING_OUT,
            f"{dep.updated_replicas} of {dep.spec_replicas} replicas run the current version.",
        )
    else:
        progressing = _cond(Type.PROGRESSING, FALSE, Reason.ROLLOUT_COMPLETE, "All replicas run the current version.")

    if blocking:
        degraded = _cond(Type.DEGRADED, TRUE, blocking[0].reason, blocking[0].message)
    elif model["reason"] in _BUILD_PROBLEMS:
        degraded = _cond(Type.DEGRADED, TRUE, model["reason"], model["message"])
    elif schedulable["status"] == FALSE:
        degraded = _cond(Type.DEGRADED, TRUE, schedulable["reason"], schedulable["message"])
    else:
        degraded = _cond(Type.DEGRADED, FALSE, Reason.AS_EXPECTED, "No problems observed.")

    if blocking:
        ready = _cond(Type.READY, FALSE, blocking[0].reason, blocking[0].message)
    elif dep is None and serving_key is None:
        ready = _cond(Type.READY, FALSE, model["reason"], model["message"])
    elif desired == 0:
        ready = _cond(Type.READY, TRUE, Reason.SCALED_TO_ZERO, (
            "Scaled to zero replicas (spec.autoscaling.minReplicas is 0). A request through the Batchline gateway "
            "is held while one replica starts; requests sent to the model's Service directly fail until then."
        ))
    elif ready_replicas >= 1:
        ready = _cond(Type.READY, TRUE, Reason.SERVING, f"{ready_replicas} of {desired} replicas are ready to serve.")
    elif schedulable["status"] == FALSE:
        ready = _cond(Type.READY, FALSE, schedulable["reason"], schedulable["message"])
    else:
        ready = _cond(Type.READY, FALSE, Reason.REPLICAS_STARTING, f"0 of {desired} replicas are ready yet.")
    scaling = _scaling_condition(spec, scale, desired)
    by_type = {c["type"]: c for c in (ready, model, schedulable, progressing, degraded, scaling)}
    return [by_type[t] for t in ORDER]


def _stamp(
    new: list[dict[str, Any]], old: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    previous = {c.get("type"): c for c in old}
    out = []
    for cond in new:
        prev = previous.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        out.append(
            {
                **cond,
                "observedGeneration": generation,
                "lastTransitionTime": prev["lastTransitionTime"] if same and prev else now,
            }
        )
    return out


def _autoscaling(scale: ScaleView, observed: Observed) -> dict[str, Any]:
    block: dict[str, Any] = {
        "currentReplicas": observed.deployment.spec_replicas if observed.deployment else 0,
        "desiredReplicas": scale.replicas,
        "reason": scale.reason,
    }
    optional = {
        "observedLatencyMs": scale.latency_ms,
        "observedQueueMs": scale.queue_ms,
        "observedTimeToFirstTokenMs": scale.ttft_ms,
        "observedTimePerOutputTokenMs": scale.tpot_ms,
        "lastScaleTime": scale.last_scale_time,
    }
    return block | {k: v for k, v in optional.items() if v is not None}


def compute_status(
    llmd: Mapping[str, Any],
    observed: Observed,
    *,
    problems: Sequence[Problem],
    desired: int,
    now: str,
    scale: ScaleView | None,
    build: Mapping[str, Any],
    serving_key: str | None,
) -> dict[str, Any]:
    """The whole status to write; status.autoscaling comes from the autoscaler's last decision."""
    spec = llmd["spec"]
    current = llmd.get("status") or {}
    generation = int(llmd["metadata"].get("generation", 0))
    dep = observed.deployment
    ready = dep.ready_replicas if dep else 0
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": dep.replicas if dep else 0,
        "readyReplicas": ready,
        "desiredReplicas": desired,
        "replicaStatus": f"{ready}/{desired}",
        "endpoints": endpoints(llmd),
        "gpus": _gpu_status(spec, observed, desired),
        "conditions": _stamp(
            _conditions(spec, observed, problems, desired, scale, build, serving_key),
            current.get("conditions") or [],
            generation,
            now,
        ),
        "build": {**build, **({"servingKey": serving_key} if serving_key else {})},
    }
    if scale is not None:
        status["autoscaling"] = _autoscaling(scale, observed)
    elif "autoscaling" in current:
        status["autoscaling"] = current["autoscaling"]
    return status


def status_changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(current.get(k) != v for k, v in new.items())


_NEWS = (Type.READY, Type.MODEL_READY, Type.SCHEDULABLE, Type.DEGRADED, Type.SCALING_ACTIVE)
_BAD = {
    (Type.READY, FALSE),
    (Type.SCHEDULABLE, FALSE),
    (Type.DEGRADED, TRUE),
    (Type.SCALING_ACTIVE, FALSE),
    (Type.MODEL_READY, FALSE),
}
_PROGRESS = {Reason.BUILDING}  # not ready yet, and on its way: news, not a warning
_CHOICES = {Reason.AUTOSCALING_DISABLED}  # what the user asked for, not news
# A condition's first value that is no news: all is well from the start (a build found in the cache, say).
_QUIET_START = {
    (Type.READY, TRUE),
    (Type.MODEL_READY, TRUE),
    (Type.SCHEDULABLE, TRUE),
    (Type.DEGRADED, FALSE),
    (Type.SCALING_ACTIVE, TRUE),
    (Type.SCALING_ACTIVE, UNKNOWN),
}


def transition_events(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[Event]:
    """One Event per new (status, reason), so repeated passes post nothing and one cause posts once."""
    previous = {c.get("type"): (c.get("status"), c.get("reason")) for c in old}
    events: list[Event] = []
    for cond in new:
        key = (cond["status"], cond["reason"])
        if cond["type"] in _NEWS and previous.get(cond["type"]) != key:
            if previous.get(cond["type"]) is None and (cond["type"], cond["status"]) in _QUIET_START:
                continue
            if cond["reason"] in _CHOICES:
                continue
            bad = (cond["type"], cond["status"]) in _BAD and cond["reason"] not in _PROGRESS
            kind = "Warning" if bad else "Normal"
            if any(e.reason == cond["reason"] for e in events):
                continue
            events.append(Event(kind, cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}"))
    return events
