"""One pod on the process node: its init containers in order, then its containers, as local processes.

A PodRunner is a thread per pod. It starts the processes (container_launch.py says how), runs their
probes, restarts them as restartPolicy says (backoff 10 s doubling to 5 min), stops them on deletion
(SIGTERM to the process group, SIGKILL after the grace period) and then deletes the pod object, as
kubelet does. It patches pods/status whenever the status it computes (pod_status.py) changes.
Each process is the leader of its own process group; its pid is recorded next to its log so that
processes left behind by an agent that died can be found and killed (kill_recorded_processes).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.container_launch import (
    UNSUPPORTED_EXIT_CODE,
    ContainerLaunch,
    PodContext,
    PodSpecError,
    container_dir,
    create_volume_dirs,
    launch,
)
from devcluster.kubeapi import ApiError, KubeApi
from devcluster.pod_status import (
    ContainerRecord,
    parse_timestamp,
    pod_status,
    terminated_state,
    termination_message,
    timestamp,
)
from devcluster.probes import Probe, probes
from devcluster.process import start_ticks

log = logging.getLogger(__name__)

TICK_S = 0.5
BACKOFF_START_S = 10.0
BACKOFF_MAX_S = 300.0
BACKOFF_RESET_AFTER_S = 600.0  # a run this long forgets earlier crashes
DEFAULT_GRACE_S = 30
STOP_GRACE_CAP_S = 10  # agent stop and vanished pods: stop quickly
LOG_TAIL_BYTES = 16384
PID_FILE = "pid"
TERMINAL = ("Succeeded", "Failed")
# A process node pulls nothing: the host already has what its pods run. A registry under `.invalid`
# (RFC 2606: a name that can never resolve) fails as a pull from it fails on any node.
UNRESOLVABLE_REGISTRY = ".invalid"


def pull_failure(image: str) -> dict[str, Any] | None:
    """The waiting state a kubelet shows for an image it cannot pull, or None for an image it has."""
    registry = image.split("/", 1)[0] if "/" in image else ""
    host = registry.rsplit(":", 1)[0]
    if not host.endswith(UNRESOLVABLE_REGISTRY):
        return None
    message = (f'Back-off pulling image "{image}": ErrImagePull: failed to resolve reference "{image}": '
               f"dial tcp: lookup {host}: no such host")
    return {"waiting": {"reason": "ImagePullBackOff", "message": message}}


def kill_recorded_processes(root: Path) -> int:
    """SIGKILL the process group of every recorded pid under `root` that is still that process; returns
    how many were killed."""
    killed = 0
    for pid_file in root.rglob(PID_FILE):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid, ticks = pid_file.read_text().split()
            if start_ticks(int(pid)) == ticks:
                os.killpg(int(pid), signal.SIGKILL)
                killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


def delete_pod(api: KubeApi, path: str, uid: str) -> None:
    """Delete the pod object at once, as kubelet does once its processes are gone; only that pod (uid)."""
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    try:
        api.request("DELETE", path, body)
    except ApiError as err:
        if err.status not in (404, 409):
            log.warning("deleting pod %s failed: %s", path, err)


def _tail(path: Path) -> bytes:
    """The last LOG_TAIL_BYTES of a file; empty if it is missing."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return f.read()
    except OSError:
        return b""


@dataclass
class ContainerRun:
    """One container of the pod: what is reported (record) and the process behind it."""

    spec: Mapping[str, Any]
    launch: ContainerLaunch
    record: ContainerRecord
    process: subprocess.Popen[bytes] | None = None
    started_wall: float = 0.0
    probes: dict[str, Probe] = field(default_factory=dict)
    next_backoff_s: float = BACKOFF_START_S
    restart_at: float | None = None
    kill_at: float | None = None
    stop_message: str = ""

    @property
    def directory(self) -> Path:
        return self.launch.termination_file.parent

    @property
    def ran(self) -> bool:
        return "terminated" in self.record.state or "terminated" in self.record.last_state


class PodRunner(threading.Thread):
    """Runs one pod until it is terminal, deleted, or the agent stops; `on_exit` is called at the end
    (the agent frees the pod's IP there)."""

    def __init__(
        self, api: KubeApi, pod: Mapping[str, Any], ctx: PodContext, on_exit: Callable[[PodRunner], None]
    ) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.api = api
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self._pod = pod
        self._on_exit = on_exit
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._removed = False  # the pod object is gone
        self._stopping = False  # the agent stops
        self._written: dict[str, Any] = {}
        self._init: list[ContainerRun] = []
        self._main: list[ContainerRun] = []
        status = pod.get("status") or {}
        self._start_time = parse_timestamp(status["startTime"]) if status.get("startTime") else time.time()

    # Called from the agent's threads.
    def update(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def removed(self) -> None:
        self._removed = True
        self._wake.set()

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def pod(self) -> Mapping[str, Any]:
        with self._lock:
            return self._pod

    @property
    def restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("the runner of pod %s failed", self.name)
        finally:
            self._stop_processes(STOP_GRACE_CAP_S)
            self._on_exit(self)

    def _run(self) -> None:
        kill_recorded_processes(self.ctx.pod_dir)  # left by an agent that died
        if not self._prepare():
            return
        while not (self._removed or self._stopping):
            pod = self.pod
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate()
                return
            now = time.monotonic()
            self._step(now)
            self._write_status()
            if self._written.get("phase") in TERMINAL:
                return
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _prepare(self) -> bool:
        """Folders and launches; a pod this node cannot run is failed here (returns False)."""
        pod = self.pod
        spec = pod["spec"]
        try:
            create_volume_dirs(pod, self.ctx.pod_dir)
            for containers, runs in ((spec.get("initContainers") or [], self._init), (spec["containers"], self._main)):
                for container in containers:
                    how = launch(pod, container, self.ctx)
                    container_dir(self.ctx.pod_dir, container["name"]).mkdir(parents=True, exist_ok=True)
                    waiting = "PodInitializing" if spec.get("initContainers") else "ContainerCreating"
                    record = ContainerRecord(
                        container["name"], container.get("image", ""), {"waiting": {"reason": waiting}}
                    )
                    runs.append(ContainerRun(container, how, record))
        except (PodSpecError, RuntimeError, OSError) as err:
            log.warning("cannot run the pod: %s", err)
            records = [
                ContainerRecord(
                    c["name"],
                    c.get("image", ""),
                    {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}},
                )
                for c in spec["containers"]
            ]
            self._write_status(records, phase="Failed", reason="UnsupportedPodSpec", message=str(err))
            return False
        self._recover(pod.get("status") or {})
        return True

    def _recover(self, status: Mapping[str, Any]) -> None:
        """A pod this node ran before the agent restarted: carry restart counts over; containers that
        were running lost their process (exit code 255, as kubelet reports after a reboot)."""
        before = {
            s["name"]: s for s in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
        }
        for run in [*self._init, *self._main]:
            previous = before.get(run.record.name)
            if not previous:
                continue
            run.record.restart_count = int(previous.get("restartCount", 0))
            run.record.last_state = previous.get("lastState") or {}
            state = previous.get("state") or {}
            if "running" in state:
                run.record.state = terminated_state(
                    255,
                    parse_timestamp(state["running"]["startedAt"]),
                    time.time(),
                    "the process node agent restarted and the process is gone",
                    reason="Unknown",
                )
                run.next_backoff_s = 0.0  # start again at once
            elif "terminated" in state:
                run.record.state = state
            elif "terminated" in run.record.last_state:
                run.record.state = run.record.last_state  # was in back-off: restart as policy says

    def _step(self, now: float) -> None:
        for run in self._init:
            if run.record.exit_code != 0:
                self._drive(run, now, "Never" if self.restart_policy == "Never" else "OnFailure")
                return
        for run in self._main:
            self._drive(run, now, self.restart_policy)

    def _drive(self, run: ContainerRun, now: float, policy: str) -> None:
        """Advance one container: reap, probe, kill, or (re)start it."""
        if run.process is not None:
            code = run.process.poll()
            if code is None:
                if run.kill_at is not None:
                    if now >= run.kill_at:
                        self._signal(run, signal.SIGKILL)
                else:
                    self._probe(run, now)
                return
            self._exited(run, code)
        if not run.ran:
            failure = pull_failure(run.record.image)
            if failure is not None:
                run.record.state = failure  # never started, as kubelet keeps backing off
                return
            self._start(run, now)
            return
        exit_code = run.record.exit_code
        if exit_code is not None and not (policy == "Always" or (policy == "OnFailure" and exit_code != 0)):
            return
        if run.restart_at is None:
            delay = run.next_backoff_s
            run.next_backoff_s = min(max(BACKOFF_START_S, 2 * delay), BACKOFF_MAX_S)
            run.restart_at = now + delay
            meta = self.pod["metadata"]
            message = (
                f"back-off {delay:.0f}s restarting failed container={run.record.name} "
                f"pod={meta['name']}_{meta['namespace']}({self.uid})"
            )
            run.record.last_state = run.record.state
            run.record.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        if now >= run.restart_at:
            run.restart_at = None
            run.record.restart_count += 1
            self._start(run, now)

    def _start(self, run: ContainerRun, now: float) -> None:
        record = run.record
        if "terminated" in record.state:
            record.last_state = record.state
        wall = time.time()
        if run.launch.unsupported:
            record.state = terminated_state(
                UNSUPPORTED_EXIT_CODE, wall, wall, run.launch.unsupported, reason="ContainerCannotRun"
            )
            return
        run.launch.termination_file.write_bytes(b"")
        try:
            with (run.directory / f"{record.restart_count}.log").open("ab") as out:
                run.process = subprocess.Popen(
                    run.launch.argv,
                    env=run.launch.env,
                    cwd=run.launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            record.state = terminated_state(
                128, wall, wall, f"failed to start {run.launch.argv[0]}: {err}", reason="StartError"
            )
            return
        pid = run.process.pid
        with contextlib.suppress(OSError, IndexError):
            (run.directory / PID_FILE).write_text(f"{pid} {start_ticks(pid)}\n")
        run.started_wall = wall
        run.probes = probes(run.spec, now)
        run.kill_at, run.stop_message = None, ""
        record.state = {"running": {"startedAt": timestamp(wall)}}
        record.container_id = f"process://{pid}"
        record.started = "startup" not in run.probes
        record.ready = record.started and "readiness" not in run.probes
        log.info("started %s (pid %d): %s", record.name, pid, " ".join(run.launch.argv))

    def _exited(self, run: ContainerRun, code: int) -> None:
        # A container ends with its main process, and the runtime kills what it leaves behind (Triton's
        # python backend stubs ignore SIGTERM and can outlive a server that has shut down).
        self._signal(run, signal.SIGKILL)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N
        file_text = _tail(run.launch.termination_file)
        log_text = _tail(run.directory / f"{run.record.restart_count}.log")
        message = termination_message(file_text, log_text, exit_code, run.launch.fallback_to_logs) or run.stop_message
        now = time.time()
        run.record.state = terminated_state(exit_code, run.started_wall, now, message)
        run.record.ready = run.record.started = False
        run.process, run.probes, run.kill_at = None, {}, None
        if now - run.started_wall >= BACKOFF_RESET_AFTER_S:
            run.next_backoff_s = BACKOFF_START_S
        (run.directory / PID_FILE).unlink(missing_ok=True)
        log.info("%s exited with %d", run.record.name, exit_code)

    def _probe(self, run: ContainerRun, now: float) -> None:
        ports = run.spec.get("ports") or []
        startup = run.probes.get("startup")
        if startup is not None and not startup.result:
            if startup.due(now):
                startup.run(now, self.ctx.pod_ip, ports)
                if startup.failed:
                    self._kill(run, now, f"Startup probe failed: {startup.message}", startup)
                    return
            if not startup.result:
                return
        run.record.started = True
        readiness = run.probes.get("readiness")
        if readiness is not None and readiness.due(now):
            readiness.run(now, self.ctx.pod_ip, ports)
        run.record.ready = readiness is None or readiness.result
        liveness = run.probes.get("liveness")
        if liveness is not None and liveness.due(now):
            liveness.run(now, self.ctx.pod_ip, ports)
            if liveness.failed:
                self._kill(run, now, f"Liveness probe failed: {liveness.message}", liveness)

    def _grace_s(self) -> float:
        pod = self.pod
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        return float(grace if grace is not None else pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))

    def _kill(self, run: ContainerRun, now: float, message: str, probe: Probe) -> None:
        """Stop a container that failed a probe; it restarts as its restartPolicy says."""
        log.info("%s: %s", run.record.name, message)
        grace = probe.spec.get("terminationGracePeriodSeconds")
        run.kill_at = now + (float(grace) if grace is not None else self._grace_s())
        run.stop_message = message
        run.record.ready = False
        self._signal(run, signal.SIGTERM)

    @staticmethod
    def _signal(run: ContainerRun, sig: signal.Signals) -> None:
        if run.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, sig)

    def _stop_processes(self, grace_s: float) -> None:
        """SIGTERM every process group, SIGKILL after `grace_s` (re-read while waiting: a later delete
        may shorten it), and record how each exited."""
        runs = [run for run in [*self._init, *self._main] if run.process is not None]
        for run in runs:
            self._signal(run, signal.SIGTERM)
        started = time.monotonic()
        while any(run.process is not None and run.process.poll() is None for run in runs):
            if time.monotonic() - started >= min(grace_s, self._grace_s()):
                for run in runs:
                    self._signal(run, signal.SIGKILL)
            self._wake.wait(0.1)
            self._wake.clear()
        for run in runs:
            if run.process is not None:
                self._exited(run, run.process.wait())

    def _terminate(self) -> None:
        """The pod is being deleted: stop its processes, report the final status, delete the object."""
        self._stop_processes(self._grace_s())
        if self._removed:
            return
        succeeded = all(run.record.exit_code == 0 for run in self._main)
        self._write_status(phase="Succeeded" if succeeded else "Failed")
        delete_pod(self.api, self.path, self.uid)

    def _write_status(
        self,
        main: list[ContainerRecord] | None = None,
        *,
        phase: str | None = None,
        reason: str = "",
        message: str = "",
    ) -> None:
        """Patch pods/status if what would be written differs from what was last written."""
        previous = self._written.get("conditions") or (self.pod.get("status") or {}).get("conditions", [])
        status = pod_status(
            self.restart_policy,
            [run.record for run in self._init],
            main if main is not None else [run.record for run in self._main],
            previous_conditions=previous,
            pod_ip=self.ctx.pod_ip,
            host_ip=self.ctx.host_ip,
            start_time=self._start_time,
            now=time.time(),
            phase=phase,
            reason=reason,
            message=message,
        )
        if status == self._written:
            return
        patch = {"metadata": {"uid": self.uid}, "status": status}
        try:
            self.api.request("PATCH", f"{self.path}/status", patch, "application/strategic-merge-patch+json")
        except ApiError as err:
            if err.status in (404, 409):
                self._removed = True  # gone, or a new pod with the same name
            else:
                log.warning("status patch failed: %s", err)
            return
        self._written = copy.deepcopy(status)
