"""Command lines and health endpoints of the control-plane processes and the process node agents,
all on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devcluster import audit
from devcluster.layout import Layout
from devcluster.nodes import KWOK_ANNOTATION

# Start order; each group waits for the previous one to be healthy.
GROUPS = (("etcd",), ("kube-apiserver",), ("kube-controller-manager", "kube-scheduler", "kwok"))
PORTS = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"  # fake pod IPs handed out by KWOK; nothing listens there
NODE_IP = "10.240.0.1"
LOCALHOST = "127.0.0.1"
PROCESS_NODE_PREFIX = "process-node-"


def process_node_names(count: int) -> list[str]:
    return [f"{PROCESS_NODE_PREFIX}{i}" for i in range(count)]


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    health_url: str
    env: Mapping[str, str] = field(default_factory=dict)  # on top of the caller's environment


def components(layout: Layout, ports: Mapping[str, int], bins: Path, kwok_stages: Path) -> list[Component]:
    pki = layout.pki
    etcd_url = f"http://{LOCALHOST}:{ports['etcd']}"
    peer_url = f"http://{LOCALHOST}:{ports['etcd-peer']}"

    def secure(name: str) -> list[str]:
        """Flags shared by the components that serve HTTPS and talk to the apiserver with a kubeconfig."""
        kubeconfig = layout.kubeconfig(name)
        return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={LOCALHOST}",
                f"--secure-port={ports[name]}", "--leader-elect=false"]

    def healthz(name: str, scheme: str = "https") -> str:
        return f"{scheme}://{LOCALHOST}:{ports[name]}/healthz"

    return [
        Component("etcd", [
            str(bins / "etcd"), "--name=local", f"--data-dir={layout.etcd_data}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}", "--unsafe-no-fsync=true", "--log-level=warn",
        ], f"{etcd_url}/health"),
        Component("kube-apiserver", [
            str(bins / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={LOCALHOST}", f"--advertise-address={LOCALHOST}",
            f"--secure-port={ports['kube-apiserver']}", f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--authorization-mode=RBAC",
            # Published for the components' delegated authentication, which errors without it.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true", "--profiling=false",
            # The `kubernetes` Service cannot point at a loopback address; nothing in-cluster needs it.
            "--endpoint-reconciler-type=none",
            *audit.apiserver_flags(layout.root),
        ], f"https://{LOCALHOST}:{ports['kube-apiserver']}/readyz"),
        Component("kube-controller-manager", [
            str(bins / "kube-controller-manager"), *secure("kube-controller-manager"),
            # The token and root-CA controllers make the ServiceAccount admission plugin work,
            # so pods get the default service account as on a real cluster.
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
            "--kube-api-qps=200", "--kube-api-burst=400",
        ], healthz("kube-controller-manager")),
        Component("kube-scheduler", [
            str(bins / "kube-scheduler"), *secure("kube-scheduler"),
        ], healthz("kube-scheduler")),
        Component("kwok", [
            str(bins / "kwok"), f"--kubeconfig={layout.kubeconfig('kwok')}", f"--config={kwok_stages}",
            "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--cidr={POD_CIDR}", f"--node-ip={NODE_IP}", "--node-lease-duration-seconds=40",
            f"--server-address={LOCALHOST}:{ports['kwok']}",
        ], healthz("kwok", "http")),
    ]


def process_node(layout: Layout, name: str, pod_subnet: str, port: int) -> Component:
    """A process node's agent (node_agent.py), healthy while it renews its Lease."""
    return Component(name, [
        sys.executable, "-m", "devcluster.node_agent", f"--kubeconfig={layout.kubeconfig(name)}",
        f"--node={name}", f"--work-dir={layout.node_dir(name)}", f"--pod-subnet={pod_subnet}",
        f"--healthz-port={port}",
    ], f"http://{LOCALHOST}:{port}/healthz")
