"""Container probes as kubelet runs them: httpGet (and tcpSocket) against the pod's IP, with its timing
(initialDelaySeconds, periodSeconds, timeoutSeconds) and its thresholds (failureThreshold,
successThreshold) turning single checks into a result."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping, Sequence
from typing import Any


def port_number(port: int | str, ports: Sequence[Mapping[str, Any]]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in ports:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"the container declares no port named {port!r}")


def check(spec: Mapping[str, Any], host: str, ports: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """One probe attempt: (success, what failed)."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            connection = http.client.HTTPConnection(
                get.get("host") or host, port_number(get["port"], ports), timeout=timeout
            )
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                connection.request("GET", get.get("path") or "/", headers=headers)
                code = connection.getresponse().status
            finally:
                connection.close()
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
        if "tcpSocket" in spec:
            tcp = spec["tcpSocket"]
            with socket.create_connection((tcp.get("host") or host, port_number(tcp["port"], ports)), timeout=timeout):
                return True, ""
    except (OSError, ValueError, http.client.HTTPException) as err:
        return False, f"probe failed: {err}"
    return False, "only httpGet and tcpSocket probes run on the local process node"


class Probe:
    """One probe of one container run. `result` starts as kubelet's initial value (readiness: False,
    liveness: True, startup: False) and changes after failureThreshold failures or successThreshold
    successes in a row."""

    def __init__(self, kind: str, spec: Mapping[str, Any], started: float) -> None:
        self.kind = kind
        self.spec = spec
        self.result = kind == "liveness"
        self.message = ""
        self.next_at = started + float(spec.get("initialDelaySeconds", 0))
        self._successes = 0
        self._failures = 0

    @property
    def failed(self) -> bool:
        """failureThreshold failures in a row (what restarts a container for startup and liveness)."""
        return self._failures >= int(self.spec.get("failureThreshold", 3))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def run(self, now: float, host: str, ports: Sequence[Mapping[str, Any]]) -> None:
        ok, message = check(self.spec, host, ports)
        self.next_at = now + float(self.spec.get("periodSeconds", 10))
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= int(self.spec.get("successThreshold", 1)):
                self.result, self.message = True, ""
        else:
            self._successes, self._failures = 0, self._failures + 1
            if self.failed:
                self.result, self.message = False, message


def probes(container: Mapping[str, Any], started: float) -> dict[str, Probe]:
    """The container's probes, by kind (startup, readiness, liveness)."""
    kinds = ("startup", "readiness", "liveness")
    return {kind: Probe(kind, container[f"{kind}Probe"], started) for kind in kinds if f"{kind}Probe" in container}
