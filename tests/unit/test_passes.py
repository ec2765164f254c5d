"""Passes: one pass per object queued and one running at most; triggers never wait, nor objects for each other."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

import pytest

from batchline.controller.passes import Passes


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Recorder:
    """A pass that records its key, and for key "slow" blocks until released."""

    def __init__(self) -> None:
        self.runs: list[Hashable] = []
        self.slow_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, key: Hashable) -> None:
        self.runs.append(key)
        if key == "slow":
            self.slow_started.set()
            assert self.release.wait(5)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_triggers_while_a_pass_runs_fold_into_one_more_pass(recorder: Recorder) -> None:
    passes: Passes[Hashable] = Passes(recorder, workers=2)
    passes.trigger("slow")
    assert recorder.slow_started.wait(5)
    for _ in range(5):  # none of these waits, and together they ask for one pass after the running one
        passes.trigger("slow")
    recorder.release.set()
    _until(lambda: len(recorder.runs) == 2)
    passes.shutdown()
    assert recorder.runs == ["slow", "slow"]


def test_a_queued_pass_absorbs_later_triggers(recorder: Recorder) -> None:
    passes: Passes[Hashable] = Passes(recorder, workers=1)
    passes.trigger("slow")  # holds the only worker
    assert recorder.slow_started.wait(5)
    # Queued once: the pass reads the newest state when it starts, so later triggers join it.
    for _ in range(4):
        passes.trigger("a")
    recorder.release.set()
    _until(lambda: len(recorder.runs) == 2)
    time.sleep(0.1)  # room for a third pass, which must not come
    passes.shutdown()
    assert recorder.runs == ["slow", "a"]


def test_objects_do_not_wait_for_each_other(recorder: Recorder) -> None:
    passes: Passes[Hashable] = Passes(recorder, workers=2)
    passes.trigger("slow")
    assert recorder.slow_started.wait(5)
    passes.trigger("b")
    _until(lambda: "b" in recorder.runs)
    recorder.release.set()
    passes.shutdown()


def test_a_pass_that_raises_is_logged_and_the_next_trigger_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Hashable] = []

    def fail(key: Hashable) -> None:
        calls.append(key)
        raise RuntimeError("api down")

    passes: Passes[Hashable] = Passes(fail, workers=1)
    passes.trigger("a")
    _until(lambda: "reconcile pass of a failed" in caplog.text)
    passes.trigger("a")
    _until(lambda: len(calls) == 2)
    passes.shutdown()
