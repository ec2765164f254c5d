"""Where an LLMDeployment's build stands, and what to do next: a pure function of what was observed.

A build key is Ready once it is in the cache catalogue. Otherwise its newest Job attempt decides:
none yet -> start attempt 1; running -> wait; succeeded -> record it in the catalogue (its pod's
termination message is the report); failed -> show the builder's own message, and start the next
attempt only after a backoff that doubles per attempt, so a broken build never storms the cluster.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from batchline.build.catalogue import CacheEntry
from batchline.conditions import Reason
from batchline.observed import BuildPodView, JobView
from batchline.timestamps import rfc3339

READY, BUILDING, FAILED = "Ready", "Building", "Failed"


@dataclass(frozen=True)
class BuildState:
    key: str
    phase: str  # Ready | Building | Failed
    reason: str
    message: str
    attempt: int = 0
    job: str | None = None
    start_attempt: int | None = None  # create the Job of this attempt
    delete_job: str | None = None  # the failed attempt it replaces
    record: CacheEntry | None = None  # a finished build to add to the catalogue
    retry_at: str | None = None
    seconds: float | None = None  # how long the finished attempt ran
    entry: CacheEntry | None = None  # the build's catalogue entry, once it is in the cache

    def status(self) -> dict[str, Any]:
        """status.build: what a user reads to follow the build and judge its result."""
        out: dict[str, Any] = {"key": self.key, "phase": self.phase, "message": self.message}
        optional = {"job": self.job, "attempt": self.attempt or None, "retryAt": self.retry_at}
        out |= {k: v for k, v in optional.items() if v is not None}
        found = self.entry or self.record
        if found is not None and found.summary:
            out["report"] = report_fields(found.summary)
        return out


def report_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    quality = summary.get("quality") or {}
    fields = {
        "contentKey": summary.get("key"),
        "mode": summary.get("mode"),
        "sizeBytes": summary.get("sizeBytes"),
        "fp32Bytes": summary.get("fp32Bytes"),
        "compressionRatio": _str(summary.get("compressionRatio"), "{:.2f}x"),
        "perplexityIncrease": _str(quality.get("perplexityIncrease"), "{:+.2%}"),
        "top1Agreement": _str(quality.get("top1Agreement"), "{:.1%}"),
        "minCosineSimilarity": _str(quality.get("minCosineSimilarity"), "{:.4f}"),
        "qualityGatePassed": quality.get("passed"),
        "buildSeconds": _str(summary.get("buildSeconds"), "{:.0f}"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _str(value: Any, fmt: str) -> str | None:
    # Figures go to status as formatted strings, as a user reads them in kubectl get -o yaml.
    return fmt.format(value) if isinstance(value, int | float) else None


def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def retry_delay(attempt: int, base_seconds: float, cap_seconds: float = 3600.0) -> float:
    return float(min(base_seconds * 2 ** max(attempt - 1, 0), cap_seconds))


def _summary(message: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(message)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def decide(
    key: str,
    entry: CacheEntry | None,
    jobs: Sequence[JobView],
    pods: Sequence[BuildPodView],
    now: float,
    retry_base_seconds: float,
) -> BuildState:
    if entry is not None:
        return BuildState(key, READY, Reason.CACHED, f"Build {key} is in the model cache.", entry=entry)
    if not jobs:
        return BuildState(key, BUILDING, Reason.BUILD_PENDING, f"Starting build {key}.", attempt=1, start_attempt=1)
    job = max(jobs, key=lambda j: j.attempt)
    job_pods = sorted((p for p in pods if p.job == job.name), key=lambda p: p.created)
    newest = job_pods[-1] if job_pods else None
    base = BuildState(key, BUILDING, Reason.BUILDING, "", attempt=job.attempt, job=job.name)
    started, finished = _epoch(job.start_time), _epoch(job.finished_at)
    if started is not None and finished is not None:
        base = replace(base, seconds=max(finished - started, 0.0))
    if job.finished is None:
        detail = "waiting for its pod"
        if newest is not None and newest.phase == "Succeeded":
            detail = f"pod {newest.name} finished"  # its message is the report, recorded once the Job completes
        elif newest is not None:
            detail = f"pod {newest.name} {newest.phase}" + (f": {newest.message}" if newest.message else "")
        return replace(base, message=f"Job {job.name} is building {key}; {detail}.")
    if job.finished == "Complete":
        summary = next((s for p in reversed(job_pods) if (s := _summary(p.message))), None)
        record = CacheEntry(key, job.finished_at or rfc3339(now), summary or {})
        return replace(base, phase=READY, reason=Reason.BUILT, message=f"Job {job.name} built {key}.", record=record)
    # The builder's own words first (its termination message), else why its pod never ran, else the Job's.
    failed = [p for p in job_pods if p.phase == "Failed" and p.message]
    stuck = [p for p in job_pods if p.message]
    cause = failed[-1].message if failed else f"{stuck[-1].message} ({job.message})" if stuck else job.message
    retry = (finished or now) + retry_delay(job.attempt, retry_base_seconds)
    base = replace(base, phase=FAILED, reason=Reason.BUILD_FAILED)
    message = f"Build {key} failed (attempt {job.attempt}): {cause}"
    if now >= retry:
        return replace(base, message=f"{message} Retrying now.", start_attempt=job.attempt + 1, delete_job=job.name)
    at = rfc3339(retry)
    return replace(base, message=f"{message} Next attempt at {at}.", retry_at=at)


# Problems a build pod shows that the user must fix in the spec or the namespace: pure functions of
# the pod as the API server returns it (the reason and the limits are not in BuildPodView).
BUILD_BLOCKED, BUILD_OUT_OF_MEMORY = "BuildBlocked", "BuildOutOfMemory"


@dataclass(frozen=True)
class BuildProblem:
    reason: str  # BUILD_BLOCKED | BUILD_OUT_OF_MEMORY
    message: str  # what is wrong and what to do, for status.build.message and the Degraded condition
    pod: str
    secret: str | None = None  # BUILD_BLOCKED: the Secret the pod waits for
    memory: str | None = None  # BUILD_OUT_OF_MEMORY: the memory limit the build had


def build_pod_problem(pod: Mapping[str, Any]) -> BuildProblem | None:
    """A build pod held by a missing token Secret or key (kubelet: waiting, CreateContainerConfigError,
    naming the Secret), or killed for memory (terminated, OOMKilled); None for anything else."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    containers = {c.get("name"): c for c in spec.get("containers") or []}
    for state_of in status.get("containerStatuses") or []:
        container = containers.get(state_of.get("name"), {})
        state = state_of.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
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
