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
        )

    @property
    def rolled_out(self) -> bool:
        return (
            self.observed_generation >= self.generation
            and self.updated_replicas >= self.spec_replicas
            and self.replicas == self.updated_replicas
        )


@dataclass(frozen=True)
class Observed:
    """Everything the status function looks at besides the LLMDeployment itself."""

    deployment: DeploymentView | None
    pods: tuple[PodView, ...] = ()
    nodes: tuple[NodeView, ...] = field(default=())
