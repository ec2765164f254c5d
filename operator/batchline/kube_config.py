"""Where the operator and the gateway find the API server: a kubeconfig named on the command line, else
the pod's service account, else $KUBECONFIG (or ~/.kube/config)."""

from __future__ import annotations

from kubernetes import config


def load(path: str | None = None) -> None:
    if path:
        config.load_kube_config(path)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
