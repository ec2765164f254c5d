"""RFC 3339 times as Kubernetes writes them (UTC, whole seconds)."""

from __future__ import annotations

import datetime
import time


def rfc3339(ts: float | None = None) -> str:
    """`ts` (seconds since the epoch; now if None) as e.g. 2026-12-02T10:21:28Z."""
    moment = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
