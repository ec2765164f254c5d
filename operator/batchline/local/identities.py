"""Who talks to the local apiserver: one client certificate and kubeconfig per identity.

Every identity is in system:masters for now; separate user names make each one's API
writes attributable in the audit log (see audit.count_writes).
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from batchline.local import pki
from batchline.local.layout import Layout

ADMIN_USER = "batchline-admin"
OPERATOR_USER = "batchline-operator"
MASTERS = ["system:masters"]

# identity -> (user name, groups)
IDENTITIES: dict[str, tuple[str, list[str]]] = {
    "admin": (ADMIN_USER, MASTERS),
    "operator": (OPERATOR_USER, MASTERS),
    "kube-controller-manager": ("system:kube-controller-manager", MASTERS),
    "kube-scheduler": ("system:kube-scheduler", MASTERS),
    "kwok": ("kwok-controller", MASTERS),
}


def ensure_kubeconfigs(layout: Layout, cluster: str, server: str) -> None:
    """Create the client certificates (once) and write a kubeconfig for each identity."""
    ca = (layout.pki / "ca.crt").read_bytes()
    for identity, (user, groups) in IDENTITIES.items():
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
