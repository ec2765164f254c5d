"""A small stdlib HTTPS client for the local control plane (no kubernetes client import needed)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _opener(ctx: ssl.SSLContext) -> Callable[..., Any]:
    """urlopen for loopback only: ignore any *_proxy variables in the environment."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                       urllib.request.HTTPSHandler(context=ctx)).open


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class KubeApi:
    """Authenticates with a client certificate; `server` is https://127.0.0.1:PORT."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path, timeout: float = 10.0) -> None:
        self.server = server
        self.timeout = timeout
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self._open = _opener(ctx)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        """JSON in, JSON (or text) out; raises ApiError on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with self._open(req, timeout=self.timeout) as resp:
                raw = resp.read().decode()
                is_json = resp.headers.get_content_type() == "application/json"
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")[:500]) from None
        return json.loads(raw) if is_json else raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)


def probe(url: str, timeout: float = 2.0) -> bool:
    """Whether a health endpoint answers 200; TLS is not verified (components self-sign)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with _opener(ctx)(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False
