"""What the objects Batchline makes share: owner references, the restricted pod security profile, the
model-cache volume, image pull secrets and the small helper containers that run `batchline cache` in the
checker image."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from batchline import api
from batchline.config import OperatorConfig

Manifest = dict[str, Any]

MODEL_MOUNT = "/models"
TRITON_UID = 1000
BUILDER_UID = 10001

# Kubernetes' "restricted" Pod Security Standard, for every container Batchline runs.
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def restricted_pod_security(uid: int) -> dict[str, Any]:
    """A pod securityContext that runs as `uid` (group and volume group the same) under RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def owner_reference(llmd: Mapping[str, Any], controller: bool = True) -> dict[str, Any]:
    """A reference to the LLMDeployment: its controller's for its own children, a plain one for a shared
    build Job (which several LLMDeployments own, and garbage collection removes with the last)."""
    meta = llmd["metadata"]
    ref = {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"], "uid": meta["uid"]}
    if controller:
        ref.update(controller=True, blockOwnerDeletion=True)
    return ref


def model_cache_volume(config: OperatorConfig, namespace: str, read_only: bool) -> dict[str, Any]:
    """The namespace's cache: its PVC, or in local mode a node folder per namespace (as a PVC would be)."""
    if config.model_cache_host_path:
        path = f"{config.model_cache_host_path.rstrip('/')}/{namespace}"
        return {"name": "model-cache", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}
    return {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": config.model_cache_pvc, "readOnly": read_only},
    }


def image_pull_secrets(config: OperatorConfig, specs: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, str]]:
    """A pod's imagePullSecrets: the chart's (config.image_pull_secrets), then those of each LLMDeployment
    spec in `specs` (spec.imagePullSecrets), each name once, in that order."""
    names = list(config.image_pull_secrets)
    for spec in specs:
        names += [ref["name"] for ref in spec.get("imagePullSecrets") or [] if ref.get("name")]
    return [{"name": name} for name in dict.fromkeys(names)]


def cache_tool_container(name: str, args: list[str], config: OperatorConfig, read_only: bool) -> dict[str, Any]:
    """A small container that runs `batchline cache ...` on the cache volume, mounted at MODEL_MOUNT.

    It runs the checker image, not the builder's, so that a new builder image leaves every Triton pod as it is."""
    mount: dict[str, Any] = {"name": "model-cache", "mountPath": MODEL_MOUNT}
    if read_only:
        mount["readOnly"] = True
    return {
        "name": name,
        "image": config.checker_image,
        "command": ["batchline"],
        "args": ["cache", *args, "--termination-log=/dev/termination-log"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [mount],
        "securityContext": RESTRICTED_CONTAINER,
    }
