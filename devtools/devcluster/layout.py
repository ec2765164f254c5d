"""Where a local cluster keeps its state: one directory per cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devcluster.audit import AUDIT_LOG


def default_root() -> Path:
    """$BATCHLINE_LOCAL_DIR, else ~/.cache/batchline/local; each cluster is a `<name>/` below it."""
    return Path(os.environ.get("BATCHLINE_LOCAL_DIR", Path.home() / ".cache" / "batchline" / "local"))


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def state_file(self) -> Path:
        """Ports and options of the cluster, written by `up`."""
        return self.root / "cluster.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def audit_log(self) -> Path:
        return self.root / AUDIT_LOG

    def kubeconfig(self, identity: str) -> Path:
        """The admin's is plain `kubeconfig`; every other identity's is `<identity>.kubeconfig`."""
        return self.root / ("kubeconfig" if identity == "admin" else f"{identity}.kubeconfig")

    def node_dir(self, node: str) -> Path:
        """A process node agent's work dir: its pods' folders and logs."""
        return self.root / "nodes" / node

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.root / "run" / f"{component}.pid"
