"""An API-server outage: watches retry without end, and the log says so once per outage."""

from __future__ import annotations

import itertools
import logging

import pytest
import urllib3.exceptions

from batchline.controller import resilience
from batchline.controller.resilience import CAP, QUIET_SECONDS, EndlessBackoff, OutageLog


def _record(message: str, level: int = logging.ERROR, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("kopf._cogs.clients.watching", level, __file__, 1, message, (), exc_info)


ATTEMPT = "Request attempt #{}/9 failed; will retry: GET https://127.0.0.1:6443/api/v1/pods?watch=true -> refused"


def test_every_request_gets_its_own_endless_backoff_that_levels_off() -> None:
    backoff = EndlessBackoff()
    first = list(itertools.islice(backoff, 500))
    assert list(itertools.islice(backoff, 3)) == first[:3]  # a fresh sequence per request, not a shared iterator
    assert first[-1] == CAP and max(first) == CAP and first == sorted(first)


def test_an_outage_is_logged_once_as_a_warning_until_it_has_been_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(resilience.time, "monotonic", lambda: clock[0])
    outage = OutageLog()
    kept = []
    for attempt in range(1, 70):  # nine watch streams retrying, a write failing, a pass failing
        clock[0] += 0.4
        records = [_record(ATTEMPT.format(attempt % 9 + 1))]
        refused = urllib3.exceptions.MaxRetryError(None, "/")
        records.append(_record("reconcile pass of ('a', 'b') failed", error=refused))
        kept += [r for r in records if outage.filter(r)]
    assert len(kept) == 1 and kept[0].levelno == logging.WARNING and "unreachable" in kept[0].getMessage()
    unrelated = _record("status of a/b: [('Ready', 'Serving')]", logging.INFO)
    assert outage.filter(unrelated) and unrelated.getMessage().startswith("status of")
    clock[0] += QUIET_SECONDS + 1  # the next outage is news again
    assert outage.filter(_record(ATTEMPT.format(1)))
    failed_pass = _record("reconcile pass of ('a', 'b') failed", error=ValueError("a bug, not an outage"))
    assert outage.filter(failed_pass) and failed_pass.levelno == logging.ERROR


def test_a_retried_watch_that_goes_through_ends_the_outage_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(resilience.time, "monotonic", lambda: clock[0])
    outage = OutageLog()
    assert outage.filter(_record(ATTEMPT.format(1)))
    debug = _record("Starting the watch-stream for pods.", logging.DEBUG)
    assert not outage.filter(debug)  # the watch logger's DEBUG lines stay hidden unless asked for
    clock[0] += 42
    back = _record("Request attempt #5 succeeded: GET https://127.0.0.1:6443/api/v1/pods", logging.DEBUG)
    assert outage.filter(back) and back.levelno == logging.INFO and back.getMessage().endswith("after 42 s")
    assert not outage.filter(_record("Request attempt #3 succeeded: GET /api/v1/nodes", logging.DEBUG))
    clock[0] += 1  # a new outage right after: news again, without waiting for the quiet period
    assert outage.filter(_record(ATTEMPT.format(1)))
