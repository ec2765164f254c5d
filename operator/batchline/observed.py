"""Compact, typed views of cluster objects, so the pure status and feasibility code needs no API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchline import api


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    allocatable_gpus: int
    schedulable: bool = True

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeView:
        alloc = (body.get("status") or {}).get("allocatable") or {}
        return cls(
            name=body["metadata"]["name"],
            labels=dict(body["metadata"].get("labels") or {}),
            allocatable_gpus=_int(alloc.get(api.GPU_RESOURCE, 0)),
            schedulable=not (body.get("spec") or {}).get("unschedulable", False),
        )

    @property
    def gpu_product(self) -> str | None:
        return self.labels.get(api.GPU_PRODUCT_LABEL)


@dataclass(frozen=True)
class PodView:
    name: str
    ready: bool
    unschedulable_message: str | None = None
    terminating: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView:
        conditions = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
        scheduled = conditions.get("PodScheduled", {})
        unschedulable = scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        return cls(
            name=body["metadata"]["name"],
            ready=conditions.get("Ready", {}).get("status") == "True",
            unschedulable_message=(scheduled.get("message") or "unschedulable") if unschedulable else None,
            terminating=body["metadata"].get("deletionTimestamp") is not None,
        )


@dataclass(frozen=True)
class DeploymentView:
    generation: int
    observed_generation: int
    replicas: int
    updated_replicas: int
    ready_replicas: int
    spec_replicas: int
    applied_hash: str | None
    model_key: str | None = None  # the build its pods serve

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> DeploymentView:
        status = body.get("status") or {}
        meta = body["metadata"]
        return cls(
            generation=_int(meta.get("generation", 0)),
            observed_generation=_int(status.get("observedGeneration", 0)),
            replicas=_int(status.get("replicas", 0)),
            updated_replicas=_int(status.get("updatedReplicas", 0)),
            ready_replicas=_int(status.get("readyReplicas", 0)),
            spec_replicas=_int((body.get("spec") or {}).get("replicas", 0)),
            applied_hash=(meta.get("annotations") or {}).get(api.ANNOTATION_APPLIED_HASH),
            model_key=(
                ((body.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
            ).get(api.ANNOTATION_BUILD_KEY),
        )

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas >= self.spec_replicas
            and self.replicas == self.updated_replicas
        )


@dataclass(frozen=True)
class JobView:
    """A build or cache Job: which attempt, and how it ended (Complete, Failed or still running)."""

    name: str
    key: str
    attempt: int
    active: int
    finished: str | None  # "Complete" | "Failed" | None
    finished_at: str | None
    message: str  # the Job's own condition message (deadline, backoff limit)
    start_time: str | None
    applied_hash: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta, status = body["metadata"], body.get("status") or {}
        done = [
            c
            for c in status.get("conditions") or []
            if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        ]
        return cls(
            name=meta["name"],
            key=(meta.get("labels") or {}).get(api.LABEL_BUILD_KEY, ""),
            attempt=_int((meta.get("annotations") or {}).get(api.ANNOTATION_BUILD_ATTEMPT, 1)),
            active=_int(status.get("active", 0)),
            finished=done[0]["type"] if done else None,
            finished_at=(done[0].get("lastTransitionTime") or status.get("completionTime")) if done else None,
            message=f"{done[0].get('reason', '')}: {done[0].get('message', '')}" if done else "",
            start_time=status.get("startTime"),
            applied_hash=(meta.get("annotations") or {}).get(api.ANNOTATION_APPLIED_HASH),
        )


@dataclass(frozen=True)
class BuildPodView:
    """A builder pod: where it stands, and its container's termination message once it ended."""

    name: str
    job: str
    phase: str
    message: str
    created: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> BuildPodView:
        meta, status = body["metadata"], body.get("status") or {}
        message = ""
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            message = terminated.get("message") or terminated.get("reason") or message
        waiting = [
            ": ".join(filter(None, (w.get("reason"), w.get("message"))))
            for c in status.get("containerStatuses") or []
            if (w := (c.get("state") or {}).get("waiting"))
        ]
        scheduled = {c.get("type"): c for c in status.get("conditions") or []}.get("PodScheduled", {})
        phase = status.get("phase") or "Pending"
        if phase == "Pending" and scheduled.get("status") == "False":
            message = scheduled.get("message") or "waiting for a node"
        elif phase == "Pending" and waiting:
            message = str(waiting[0])
        return cls(
            name=meta["name"],
            job=(meta.get("labels") or {}).get("job-name", ""),
            phase=phase,
            message=message.strip(),
            created=str(meta.get("creationTimestamp", "")),
        )


@dataclass(frozen=True)
class Observed:
    """Everything the status function looks at besides the LLMDeployment itself."""

    deployment: DeploymentView | None
    pods: tuple[PodView, ...] = ()
    nodes: tuple[NodeView, ...] = field(default=())
