"""Detached background processes tracked by pid files, and free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# sh starts the command in the background and exits, so the command is re-parented to init:
# it outlives the caller, leaves no zombie behind and is in the new session sh was given.
# start() returns when sh's output pipe closes, which can be while the command is still inside
# execve: dash keeps a close-on-exec copy of that pipe in the child, and bash closes it before
# exec. For that moment /proc/PID/cmdline reads as empty (the new address space has no arguments
# yet), for milliseconds when the binary is not in the page cache; so a process is told apart by
# its start time, which fork sets and execve keeps, never by its command line.
_DETACH = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that are free now (all held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def start(cmd: Sequence[str], log: Path, pid_file: Path, cwd: Path | None = None,
          env: Mapping[str, str] | None = None) -> int:
    """Start `cmd` detached (new session, stdio to `log`, in `cwd`, with `env` added to this process's
    environment) and record its pid and start time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["sh", "-c", _DETACH, "sh", str(log), *cmd], check=True, capture_output=True,
                         text=True, start_new_session=True, cwd=cwd,
                         env={**os.environ, **env} if env else None).stdout
    pid = int(out.strip())
    try:
        ticks = start_ticks(pid)
    except (OSError, IndexError):
        ticks = "exited"  # and reaped already: running_pid says it is not running
    pid_file.write_text(f"{pid} {ticks}\n")
    return pid


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks after boot (field 22 of /proc/PID/stat): set at fork,
    kept across execve; with the pid it names one process."""
    return _stat(pid)[19]


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded pid if that very process (same start time) is still running, not a zombie.

    `marker` is only for pid files that hold no start time (written by an earlier version, for a
    cluster still up): then the process counts if `marker` is in its command line.
    """
    try:
        recorded = pid_file.read_text().split()
        pid = int(recorded[0])
        stat = _stat(pid)
        if len(recorded) == 1:
            return pid if os.fsencode(marker) in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError, IndexError):
        return None
    return pid if stat[19] == recorded[1] and stat[0] != "Z" else None


def stop_all(pids: Iterable[int], timeout: float = 15.0) -> None:
    """SIGTERM every process, then SIGKILL whatever is still alive after `timeout`."""
    pending = set(pids)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if alive(pid)}
        time.sleep(0.1)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running (a zombie is not: PID 1 here may never reap the processes we orphaned)."""
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [0] is the state, [19] the start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
