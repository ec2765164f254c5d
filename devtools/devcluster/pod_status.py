"""Pod status as a kubelet reports it, built by pure functions from what the node agent knows.

The agent keeps one ContainerRecord per container; `pod_status` turns them, with the pod's IP and
start time, into the `status` of a pods/status patch (phase, conditions, container statuses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_MESSAGE_BYTES = 4096  # kubelet's limit for a termination message
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(when: float) -> str:
    """An API server time (RFC 3339, whole seconds, UTC) for a `time.time()` value."""
    return datetime.fromtimestamp(when, UTC).strftime(TIME_FORMAT)


def parse_timestamp(text: str) -> float:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()


@dataclass
class ContainerRecord:
    """One container's state in the API's terms: `state` and `last_state` hold at most one of
    waiting / running / terminated, as in a ContainerStatus."""

    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])

    def api_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def terminated_state(
    exit_code: int, started_at: float, finished_at: float, message: str = "", reason: str = ""
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": timestamp(started_at),
        "finishedAt": timestamp(finished_at),
    }
    if message:
        state["message"] = message
    return {"terminated": state}


def termination_message(file_text: bytes, log_text: bytes, exit_code: int, fallback_to_logs: bool) -> str:
    """The termination file's last 4096 bytes; with FallbackToLogsOnError, a failed container with an
    empty file gets the end of its log instead (80 lines, 2048 bytes at most)."""
    if file_text.strip() or not (fallback_to_logs and exit_code != 0):
        return file_text[-MAX_MESSAGE_BYTES:].decode(errors="replace")
    tail = b"\n".join(log_text.rstrip(b"\n").split(b"\n")[-FALLBACK_LOG_LINES:])
    return tail[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def pod_phase(restart_policy: str, init: Sequence[ContainerRecord], main: Sequence[ContainerRecord]) -> str:
    """kubelet's getPhase: Pending until the init containers are done, then from the containers' states."""
    if not all(record.exit_code == 0 for record in init):
        failed = any(record.exit_code not in (None, 0) for record in init)
        return "Failed" if failed and restart_policy == "Never" else "Pending"
    running = waiting = stopped = succeeded = 0
    for record in main:
        if record.running:
            running += 1
        elif record.exit_code is not None:
            stopped += 1
            succeeded += record.exit_code == 0
        elif "terminated" in record.last_state:
            stopped += 1  # waiting to be restarted
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def _condition(
    previous: Mapping[str, Mapping[str, Any]], ctype: str, true: bool, now: float, reason: str = "", message: str = ""
) -> dict[str, Any]:
    status = "True" if true else "False"
    before = previous.get(ctype)
    since = before["lastTransitionTime"] if before and before.get("status") == status else timestamp(now)
    # None removes what a strategic merge patch would otherwise keep from the previous status.
    return {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
        "reason": None if true else reason,
        "message": None if true or not message else message,
    }


def conditions(
    previous: Sequence[Mapping[str, Any]],
    phase: str,
    init: Sequence[ContainerRecord],
    main: Sequence[ContainerRecord],
    now: float,
) -> list[dict[str, Any]]:
    """PodScheduled, Initialized, ContainersReady and Ready; a transition time changes only with its status."""
    before = {c["type"]: c for c in previous}
    incomplete = [r.name for r in init if r.exit_code != 0]
    unready = [r.name for r in main if not r.ready]
    ready = not unready and phase == "Running"
    if phase == "Succeeded":
        reason, message = "PodCompleted", ""
    else:
        reason, message = "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]"
    return [
        _condition(before, "PodScheduled", True, now),
        _condition(
            before,
            "Initialized",
            not incomplete,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        _condition(before, "ContainersReady", ready, now, reason, message),
        _condition(before, "Ready", ready, now, reason, message),
    ]


def pod_status(
    restart_policy: str,
    init: Sequence[ContainerRecord],
    main: Sequence[ContainerRecord],
    *,
    previous_conditions: Sequence[Mapping[str, Any]],
    pod_ip: str,
    host_ip: str,
    start_time: float,
    now: float,
    phase: str | None = None,
    reason: str = "",
    message: str = "",
) -> dict[str, Any]:
    """The status to patch; `phase` overrides the computed one (a pod the agent fails outright), and
    `previous_conditions` (the last ones written) keep their transition times."""
    phase = phase or pod_phase(restart_policy, init, main)
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions(previous_conditions, phase, init, main, now),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": timestamp(start_time),
        "containerStatuses": [record.api_status() for record in main],
        "reason": reason or None,
        "message": message or None,
    }
    if init:
        status["initContainerStatuses"] = [record.api_status() for record in init]
    return status
