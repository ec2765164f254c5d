"""A small stdlib HTTPS client for the local control plane (no kubernetes client import needed)."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml


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

    def watch(self, path: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Stream a watch (`path` with watch=1): one event a line until the server ends it;
        `timeout` bounds the wait for each read."""
        req = urllib.request.Request(self.server + path, headers={"Accept": "application/json"})
        try:
            with self._open(req, timeout=timeout) as resp:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace")[:500]) from None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, credentials_dir: Path) -> KubeApi:
        """A client for a kubeconfig with embedded certificates (as identities.py writes them); the CA,
        certificate and key are written into `credentials_dir`, where ssl can load them."""
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = {"ca.crt": cluster["certificate-authority-data"], "client.crt": user["client-certificate-data"],
                 "client.key": user["client-key-data"]}
        for name, data in files.items():
            path = credentials_dir / name
            path.touch(mode=0o600)
            path.write_bytes(base64.b64decode(data))
        return cls(cluster["server"], credentials_dir / "ca.crt", credentials_dir / "client.crt",
                   credentials_dir / "client.key")


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
