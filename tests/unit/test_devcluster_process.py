"""How the local control plane tells whether a process it started still runs (devcluster/process.py),
with real processes: by pid and start time, never by what /proc/PID/cmdline reads."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster import process

# Blanks its own argument strings, as /proc/PID/cmdline reads while a process is inside execve
# (and for processes that retitle themselves), then says so and waits to be stopped.
BLANK_ARGV = """
import ctypes, pathlib, sys, time
fields = pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
arg_start, arg_end = int(fields[45]), int(fields[46])
ctypes.memset(arg_start, 0, arg_end - arg_start)
pathlib.Path(sys.argv[1] + ".blank").write_text("")
time.sleep(120)
"""


def wait_until(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    process.stop_all(pids, timeout=5)


def test_a_running_process_counts_whatever_its_command_line_reads(tmp_path: Path, started: list[int]) -> None:
    marker = tmp_path / "state"
    pid_file = tmp_path / "blank.pid"
    started.append(process.start([sys.executable, "-c", BLANK_ARGV, str(marker)], tmp_path / "log", pid_file))
    wait_until(lambda: Path(f"{marker}.blank").exists(), "the process to blank its arguments")
    assert os.fsencode(str(marker)) not in Path(f"/proc/{started[0]}/cmdline").read_bytes()
    assert process.running_pid(pid_file, f"{marker}") == started[0]


def test_a_process_that_exits_no_longer_counts(tmp_path: Path, started: list[int]) -> None:
    pid_file = tmp_path / "exits.pid"
    started.append(process.start(["sh", "-c", "sleep 1"], tmp_path / "log", pid_file))
    assert process.running_pid(pid_file, str(tmp_path)) == started[0]
    # Orphaned to a PID 1 that may never reap it: a zombie is not running either.
    wait_until(lambda: process.running_pid(pid_file, str(tmp_path)) is None, "the process to count as exited")


def test_another_process_with_the_recorded_pid_does_not_count(tmp_path: Path) -> None:
    """A pid reused after a reboot or a long run: the same number, another start time."""
    pid_file = tmp_path / "reused.pid"
    pid_file.write_text(f"{os.getpid()} {process.start_ticks(os.getpid())}\n")
    assert process.running_pid(pid_file, "unused") == os.getpid()
    pid_file.write_text(f"{os.getpid()} 1\n")
    assert process.running_pid(pid_file, "unused") is None
    pid_file.write_text(f"{2**22 + 1} 1\n")  # above any pid_max
    assert process.running_pid(pid_file, "unused") is None


def test_a_pid_file_without_start_time_is_matched_by_command_line(tmp_path: Path) -> None:
    """Pid files of a cluster started by an earlier version, still up."""
    pid_file = tmp_path / "old.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    cmdline = Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode()
    assert process.running_pid(pid_file, cmdline) == os.getpid()
    assert process.running_pid(pid_file, "/no/such/state/dir/") is None


def test_start_passes_extra_environment(tmp_path: Path, started: list[int]) -> None:
    out = tmp_path / "env.out"
    started.append(process.start(["sh", "-c", f'echo "$BATCHLINE_PROBE" > {out}'], tmp_path / "log",
                                 tmp_path / "env.pid", env={"BATCHLINE_PROBE": "local"}))
    wait_until(lambda: out.exists() and out.read_text() == "local\n", "the environment to reach the process")
