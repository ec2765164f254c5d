"""Optional API keys: `Authorization: Bearer KEY`, checked in constant time; keys are never logged.

Keys come from a file (one per line, `#` comments; the chart mounts a Secret there, and a changed
file is read again) and from the environment variable BATCHLINE_GATEWAY_API_KEYS (comma-separated).
No key configured means no check.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from pathlib import Path

ENV = "BATCHLINE_GATEWAY_API_KEYS"
RELOAD_EVERY_S = 5.0


def parse_keys(text: str) -> list[bytes]:
    keys = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line.encode())
    return keys


class ApiKeys:
    def __init__(self, path: str | None = None, env: str | None = None) -> None:
        self.path = Path(path) if path else None
        env_value = os.environ.get(ENV, "") if env is None else env
        self._env_keys = [key.strip().encode() for key in env_value.split(",") if key.strip()]
        self._file_keys: list[bytes] = []
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._checked < RELOAD_EVERY_S):
            return
        self._checked = now
        stat = self.path.stat()  # a missing key file is an error at start; later it keeps the last keys
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._file_keys = parse_keys(self.path.read_text())
            self._stamp = stamp

    @property
    def enabled(self) -> bool:
        return bool(self._env_keys or self._file_keys or self.path)

    def check(self, header: str | None) -> bool:
        """Whether an Authorization header carries a valid key (always True when keys are off)."""
        with contextlib.suppress(OSError):  # a key file gone for a moment keeps the last keys
            self._reload()
        keys = self._env_keys + self._file_keys
        if not self.enabled:
            return True
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in keys:  # every key compared, so the time does not tell which prefix matched
            matched |= hmac.compare_digest(given, key)
        return matched and bool(given)
