"""Who talks to the local apiserver: one client certificate and kubeconfig per identity.

The control-plane identities are in system:masters; separate user names make each one's API
writes attributable in the audit log (see audit.count_writes). Process node agents are
`system:node:<name>` in `system:nodes` (bound to the built-in system:node ClusterRole, as the
Node authorizer is not enabled), and Prometheus may only read pods (for its pod discovery).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from devcluster import pki
from devcluster.layout import Layout

ADMIN_USER = "batchline-admin"
OPERATOR_USER = "batchline-operator"
PROMETHEUS_USER = "batchline-prometheus"
GATEWAY_USER = "batchline-gateway"
MASTERS = ["system:masters"]
NODES_GROUP = "system:nodes"

# identity -> (user name, groups)
IDENTITIES: dict[str, tuple[str, list[str]]] = {
    "admin": (ADMIN_USER, MASTERS),
    "operator": (OPERATOR_USER, MASTERS),
    "kube-controller-manager": ("system:kube-controller-manager", MASTERS),
    "kube-scheduler": ("system:kube-scheduler", MASTERS),
    "kwok": ("kwok-controller", MASTERS),
    "prometheus": (PROMETHEUS_USER, []),
    "gateway": (GATEWAY_USER, []),
}


def node_identity(node: str) -> tuple[str, list[str]]:
    """A process node agent's user and groups, as a kubelet's."""
    return f"system:node:{node}", [NODES_GROUP]


def rbac_manifests() -> list[dict[str, Any]]:
    """What the non-master identities may do: nodes what kubelets may, Prometheus read pods, the gateway
    read LLMDeployments and EndpointSlices (as the chart's gateway ClusterRole)."""
    group = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "batchline:process-nodes"},
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": "system:node"},
         "subjects": [{"apiGroup": group, "kind": "Group", "name": NODES_GROUP}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRole", "metadata": {"name": "batchline:prometheus-discovery"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "batchline:prometheus-discovery"},
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": "batchline:prometheus-discovery"},
         "subjects": [{"apiGroup": group, "kind": "User", "name": PROMETHEUS_USER}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRole", "metadata": {"name": "batchline:gateway"},
         "rules": [{"apiGroups": ["batchline.dev"], "resources": ["llmdeployments"], "verbs": ["get", "list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{group}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "batchline:gateway"},
         "roleRef": {"apiGroup": group, "kind": "ClusterRole", "name": "batchline:gateway"},
         "subjects": [{"apiGroup": group, "kind": "User", "name": GATEWAY_USER}]},
    ]


def ensure_kubeconfigs(
    layout: Layout, cluster: str, server: str, extra: Mapping[str, tuple[str, list[str]]] | None = None
) -> None:
    """Create the client certificates (once) and write a kubeconfig for each identity (IDENTITIES
    plus `extra`, e.g. the process nodes')."""
    ca = (layout.pki / "ca.crt").read_bytes()
    for identity, (user, groups) in {**IDENTITIES, **(extra or {})}.items():
        pki.ensure_client_cert(layout.pki, identity, user, groups)
        _write(layout.kubeconfig(identity), cluster, server, ca, user,
               (layout.pki / f"{identity}.crt").read_bytes(), (layout.pki / f"{identity}.key").read_bytes())


def _write(path: Path, cluster: str, server: str, ca: bytes, user: str, cert: bytes, key: bytes) -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    context = f"{user}@{cluster}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
