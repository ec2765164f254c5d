"""Compact, typed views of cluster objects, so the pure status and feasibility code needs no API."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from batchline import api
from batchline.conditions import Reason


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
    problem: BuildProblem | None = None  # what keeps it from building, if the user must act

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
            problem=build_pod_problem(body),
        )


@dataclass(frozen=True)
class Observed:
    """Everything the status function looks at besides the LLMDeployment itself."""

    deployment: DeploymentView | None
    pods: tuple[PodView, ...] = ()
    nodes: tuple[NodeView, ...] = field(default=())


# Problems a build pod shows that the user must fix: in the spec, the namespace or the chart.
BUILD_BLOCKED, BUILD_OUT_OF_MEMORY = Reason.BUILD_BLOCKED, Reason.BUILD_OUT_OF_MEMORY
_IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class BuildProblem:
    reason: str  # BUILD_BLOCKED | BUILD_OUT_OF_MEMORY
    message: str  # what is wrong and what to do, for status.build.message and the Degraded condition
    pod: str
    secret: str | None = None  # BUILD_BLOCKED: the Secret the pod waits for
    memory: str | None = None  # BUILD_OUT_OF_MEMORY: the memory limit the build had


def build_pod_problem(pod: Mapping[str, Any]) -> BuildProblem | None:
    """A build pod that cannot start (no node fits it or its volume is missing, its image cannot be pulled,
    its token Secret or key is missing) or that was killed for memory; None for anything else. Whether a
    pod that cannot start is a problem yet, or still a moment of scheduling, is build.state's to judge."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    containers = {c.get("name"): c for c in spec.get("containers") or []}
    scheduled = {c.get("type"): c for c in status.get("conditions") or []}.get("PodScheduled", {})
    if (status.get("phase") or "Pending") == "Pending" and scheduled.get("status") == "False":
        why = str(scheduled.get("message") or "no node fits it")
        if "persistentvolumeclaim" in why:
            fix = ("The model cache's claim is missing: install the chart with its model cache (modelCache), or "
                   "run the operator with the local default's cache folder (batchline local up starts it so).")
        else:
            fix = "Lower spec.build.resources (or the chart's builder.cpu and builder.memory), or add a node that fits."
        return BuildProblem(BUILD_BLOCKED, f"Build pod {meta['name']} cannot be scheduled: {why}. {fix}", meta["name"])
    for state_of in status.get("containerStatuses") or []:
        container = containers.get(state_of.get("name"), {})
        state = state_of.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") in _IMAGE_ERRORS:
            image = container.get("image", "its image")
            return BuildProblem(
                BUILD_BLOCKED,
                f"Build pod {meta['name']} cannot pull {image}: {waiting.get('reason')}: {waiting.get('message', '')}"
                ". Check the chart's builder.image and the pull secrets (workloadImagePullSecrets, "
                "spec.imagePullSecrets).",
                meta["name"],
            )
        if waiting.get("reason") == "CreateContainerConfigError":
            problem = _missing_secret(meta, container, str(waiting.get("message") or ""))
            if problem is not None:
                return problem
        if terminated.get("reason") == "OOMKilled":
            limit = str(((container.get("resources") or {}).get("limits") or {}).get("memory") or "its limit")
            more = f" (e.g. {_doubled(limit)})" if _doubled(limit) else ""
            return BuildProblem(
                BUILD_OUT_OF_MEMORY,
                f"The build ran out of memory at {limit} (pod {meta['name']} was OOMKilled); set "
                f"spec.build.resources.memory higher{more}. The builder holds the model in float32 about "
                "twice: about 8 bytes per parameter, 64Gi for an 8B model.",
                meta["name"],
                memory=limit,
            )
    return None


def _missing_secret(meta: Mapping[str, Any], container: Mapping[str, Any], message: str) -> BuildProblem | None:
    """The Secret among the container's secretKeyRefs that kubelet's message names, as a BuildProblem."""
    # kubelet: 'secret "NAME" not found', "couldn't find key KEY in Secret NAMESPACE/NAME"
    words = set(re.findall(r"[A-Za-z0-9][-A-Za-z0-9_.]*", message))
    refs = [
        ref
        for var in container.get("env") or []
        if (ref := ((var.get("valueFrom") or {}).get("secretKeyRef"))) and ref.get("name") in words
    ]
    if not refs:
        return None
    ref = max(refs, key=lambda r: len(r["name"]))
    name, key, namespace = ref["name"], ref.get("key", ""), meta.get("namespace", "")
    if re.search(r"couldn't find key|has no key", message) and not re.search(r"not found", message):
        what = f'Secret "{name}" in namespace {namespace} has no key "{key}"'
        fix = "Add the token under that key, or set spec.model.tokenSecretRef.key to the key that holds it."
    else:
        what = f'Secret "{name}" does not exist in namespace {namespace}'
        fix = (
            f"Create it (kubectl create secret generic {name} -n {namespace} --from-literal={key}=<token>), "
            "or fix spec.model.tokenSecretRef; the build starts once it exists."
        )
    text = f"{what} (spec.model.tokenSecretRef), so build pod {meta['name']} cannot start: {message}. {fix}"
    return BuildProblem(BUILD_BLOCKED, text, meta["name"], secret=name)


def _doubled(quantity: str) -> str | None:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", quantity)
    return f"{float(match.group(1)) * 2:g}{match.group(2)}" if match else None
