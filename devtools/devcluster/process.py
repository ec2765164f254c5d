"""Detached background processes tracked by pid files, and free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

# sh starts the command in the background and exits, so the command is re-parented to init:
# it outlives the caller, leaves no zombie behind and is in the new session sh was given.
_DETACH = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that are free now (all held open until every one is picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def start(cmd: Sequence[str], log: Path, pid_file: Path, cwd: Path | None = None) -> int:
    """Start `cmd` detached (new session, stdio to `log`, in `cwd`) and record its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["sh", "-c", _DETACH, "sh", str(log), *cmd], check=True, capture_output=True,
                         text=True, start_new_session=True, cwd=cwd).stdout
    pid = int(out.strip())
    pid_file.write_text(f"{pid}\n")
    return pid


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The recorded pid if that process is alive and `marker` is in its command line (pids get
    reused; zombies have an empty one)."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if os.fsencode(marker) in cmdline else None


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
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
