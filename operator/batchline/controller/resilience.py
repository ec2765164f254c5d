"""How the operator rides out an API-server outage: watches that retry for as long as it takes, and one
log line per outage instead of one per failed attempt of every watch, write and pass."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator

import urllib3.exceptions

# kopf gives up on a watch after its last backoff (54 s with its defaults) and the operator stops; these
# back off to CAP seconds and then retry every CAP seconds for as long as the API server stays away.
FIRST_BACKOFFS = (1.0, 2.0, 4.0, 8.0)
CAP = 15.0
# While the API server is away every watch fails again within CAP seconds, so an outage is over once no
# failure has been seen for a little longer than that; the next failure is news again.
QUIET_SECONDS = CAP + 5.0

# What a failed attempt looks like in kopf's, urllib3's and the passes' log records, and a retry that worked.
_RETRIED = re.compile(r"Request attempt #\d+(/\d+)? failed; will retry|after connection broken by")
_RECOVERED = re.compile(r"Request attempt #\d+(/\d+)? succeeded")
# kopf says that a retried watch request went through only at DEBUG, on its watch logger.
WATCH_LOGGER = "kopf._cogs.clients.watching"
_CONNECTION_ERRORS = (urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError, ConnectionError)


class EndlessBackoff:
    """kopf's `settings.networking.error_backoffs`: a fresh, endless sequence for every request."""

    def __iter__(self) -> Iterator[float]:
        yield from FIRST_BACKOFFS
        while True:
            yield CAP


class OutageLog(logging.Filter):
    """Keeps the first failed attempt of an outage, as one WARNING that says what happens next, drops the
    repeats (nine watch streams retrying, writes and passes failing), and says once when a retried watch
    goes through again (or, failing that sign, once QUIET_SECONDS pass without a failure). Without it a
    one-minute outage writes about a hundred ERROR lines."""

    def __init__(self, show_debug: bool = False) -> None:
        super().__init__()
        self._show_debug = show_debug  # the watch logger's own DEBUG lines, when the user asked for them
        self._since: float | None = None  # when the outage under way began
        self._last = 0.0  # the newest failure seen
        self._lock = threading.Lock()

    def _is_outage(self, record: logging.LogRecord) -> bool:
        if _RETRIED.search(record.getMessage()):
            return True
        error = record.exc_info[1] if record.exc_info else None
        return isinstance(error, _CONNECTION_ERRORS)

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if record.name == WATCH_LOGGER and record.levelno < logging.INFO:
            if not _RECOVERED.search(record.getMessage()):
                return self._show_debug
            with self._lock:
                since, self._since = self._since, None
            if since is None:
                return self._show_debug
            record.msg, record.args = f"Kubernetes API answers again, after {now - since:.0f} s", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
            return True
        if not self._is_outage(record):
            return True
        with self._lock:
            first = self._since is None or now - self._last > QUIET_SECONDS
            self._since = now if first else self._since
            self._last = now
        if not first:
            return False
        detail = record.getMessage() if not record.exc_info else f"{record.getMessage()}: {record.exc_info[1]!r}"
        record.msg = "Kubernetes API unreachable; watches, writes and passes retry until it answers (not logged "
        record.msg += f"again while it stays away): {detail}"
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_outage_log() -> OutageLog:
    """One OutageLog on every handler of the root logger (kopf.configure installs them), so that it sees
    records of every logger (kopf's, urllib3's, the operator's own) once, as they are written out; and kopf's
    watch logger at DEBUG, so that its word on a retry that went through reaches it."""
    watch = logging.getLogger(WATCH_LOGGER)
    outage = OutageLog(show_debug=watch.isEnabledFor(logging.DEBUG))
    watch.setLevel(logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.addFilter(outage)
    return outage
