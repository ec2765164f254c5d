"""The local cluster's pods as Prometheus HTTP service discovery target groups.

Debian's prometheus is built without Kubernetes service discovery (its packaging drops the client
library), so this serves what `kubernetes_sd_configs` with role `pod` would find: for each pod with
an IP, one target `<podIP>:<port>` per declared container port, with the `__meta_kubernetes_*`
labels Prometheus documents for that role. Selecting and relabeling, as a PodMonitor does, stay in
the Prometheus configuration (prometheus.py).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.kubeapi import KubeApi

META = "__meta_kubernetes_"


@dataclass(frozen=True)
class PodDiscovery:
    """An API server and a client certificate that may list pods (LocalCluster.pod_discovery)."""

    api_server: str
    ca_file: Path
    cert_file: Path
    key_file: Path


def label_name(name: str) -> str:
    """A Kubernetes label or annotation name as a Prometheus label name (batchline.dev/x -> batchline_dev_x)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def target_groups(pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One target group per pod container port, labelled as kubernetes_sd_configs (role: pod) labels it."""
    groups = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
        if not status.get("podIP"):
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        labels = {
            f"{META}namespace": meta["namespace"],
            f"{META}pod_name": meta["name"],
            f"{META}pod_uid": meta["uid"],
            f"{META}pod_ip": status["podIP"],
            f"{META}pod_phase": status.get("phase", ""),
            f"{META}pod_ready": str(ready).lower(),
            f"{META}pod_node_name": spec.get("nodeName", ""),
            f"{META}pod_host_ip": status.get("hostIP", ""),
        }
        for key, value in (meta.get("labels") or {}).items():
            labels |= {f"{META}pod_label_{label_name(key)}": value, f"{META}pod_labelpresent_{label_name(key)}": "true"}
        for container in spec["containers"]:
            for port in container.get("ports") or []:
                port_labels = {
                    f"{META}pod_container_name": container["name"],
                    f"{META}pod_container_init": "false",
                    f"{META}pod_container_port_name": port.get("name", ""),
                    f"{META}pod_container_port_number": str(port["containerPort"]),
                    f"{META}pod_container_port_protocol": port.get("protocol", "TCP"),
                }
                groups.append(
                    {"targets": [f"{status['podIP']}:{port['containerPort']}"], "labels": labels | port_labels}
                )
    return groups


class PodTargetsServer:
    """GET / on 127.0.0.1:`port` answers with the cluster's current pods as target groups."""

    def __init__(self, discovery: PodDiscovery) -> None:
        api = KubeApi(discovery.api_server, discovery.ca_file, discovery.cert_file, discovery.key_file)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(target_groups(api.get("/api/v1/pods")["items"])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> PodTargetsServer:
        threading.Thread(target=self._server.serve_forever, name="pod-targets", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
