"""Where an LLMDeployment's build stands, and what to do next: a pure function of what was observed.

A build key is Ready once it is in the cache catalogue. Otherwise its newest Job attempt decides:
none yet -> start attempt 1; running -> wait; succeeded -> record it in the catalogue (its pod's
termination message is the report); failed -> show the builder's own message, and start the next
attempt only after a backoff that doubles per attempt, so a broken build never storms the cluster.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from batchline.build.catalogue import CacheEntry
from batchline.conditions import Reason
from batchline.observed import BuildPodView, JobView
from batchline.timestamps import rfc3339

READY, BUILDING, FAILED = "Ready", "Building", "Failed"
# A build pod that cannot start for this long (no node fits it, a missing volume, image or Secret) is a problem
# to report, not a moment of scheduling.
BLOCKED_AFTER_SECONDS = 120.0


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
        out: dict[str, Any] = {"key": self.key, "phase": self.phase, "reason": self.reason, "message": self.message}
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
    blocked_after_seconds: float = BLOCKED_AFTER_SECONDS,
) -> BuildState:
    """Where the build of `key` stands, and the next step to take (all of it from what the cluster shows)."""
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
    oom = next((p.problem for p in job_pods if p.problem and p.problem.reason == Reason.BUILD_OUT_OF_MEMORY), None)
    if oom is not None:
        # Not retried: the same inputs run out of memory again, and more memory (spec.build.resources) is a
        # new build key, which builds at once.
        message = f"Build {key} failed (attempt {job.attempt}): {oom.message}"
        return replace(base, phase=FAILED, reason=Reason.BUILD_OUT_OF_MEMORY, message=message)
    if job.finished is None:
        blocked = newest.problem if newest is not None else None
        since = _epoch(newest.created) if newest is not None else None
        if blocked is not None and since is not None and now - since >= blocked_after_seconds:
            # Not progress: nothing moves until the user acts. The Job stays; its pod starts once the cause goes.
            return replace(base, reason=Reason.BUILD_BLOCKED, message=f"Build {key} is blocked: {blocked.message}")
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
    held = next((p.problem for p in reversed(job_pods) if p.problem), None)
    cause = held.message if held is not None else cause  # what the user must fix, not the Job's BackoffLimitExceeded
    retry = (finished or now) + retry_delay(job.attempt, retry_base_seconds)
    base = replace(base, phase=FAILED, reason=Reason.BUILD_FAILED)
    message = f"Build {key} failed (attempt {job.attempt}): {cause}"
    if now >= retry:
        return replace(base, message=f"{message} Retrying now.", start_attempt=job.attempt + 1, delete_job=job.name)
    at = rfc3339(retry)
    return replace(base, message=f"{message} Next attempt at {at}.", retry_at=at)
