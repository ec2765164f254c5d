"""Reconcile passes, queued per object and run on a thread pool of their own, outside kopf's event processing.

Watch events of an object and of its children, and its namespace's tick, all ask for a pass. kopf
runs the handlers of one object's events one after the other and updates its indexes between them,
so a handler that waited for a pass to finish would hold those index updates back: `trigger` returns
at once. A pass is level-based (it reads the indexes when it starts), so an object has at most one
pass queued and one running: a trigger for an object whose pass is still queued adds nothing, and
one that comes while its pass runs queues one more after it.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class _State(enum.Enum):
    QUEUED = enum.auto()
    RUNNING = enum.auto()
    RUNNING_AND_QUEUED = enum.auto()  # triggered again while running: one more pass once this one ends


class Passes(Generic[K]):
    def __init__(self, run_pass: Callable[[K], None], workers: int) -> None:
        self._run_pass = run_pass
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._guard = threading.Lock()
        self._state: dict[K, _State] = {}  # objects with a pass queued or running

    def trigger(self, key: K) -> None:
        """Ask for a pass of `key` that starts after this call; never waits for one."""
        with self._guard:
            state = self._state.get(key)
            if state is _State.RUNNING:
                self._state[key] = _State.RUNNING_AND_QUEUED
            if state is not None:
                return
            self._state[key] = _State.QUEUED
        self._pool.submit(self._work, key)

    def _work(self, key: K) -> None:
        with self._guard:
            self._state[key] = _State.RUNNING
        try:
            self._run_pass(key)
        except Exception:
            # The next trigger, at the latest its namespace's tick, runs it again.
            log.exception("reconcile pass of %s failed", key)
        finally:
            with self._guard:
                again = self._state.pop(key) is _State.RUNNING_AND_QUEUED
        if again:
            self.trigger(key)  # at the back of the queue, so one busy object cannot hold a worker

    def shutdown(self) -> None:
        """Drop the queued passes and wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)
